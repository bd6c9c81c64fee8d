"""Repeated augmentation: DeiT's RASampler assignment, through the real input pipeline, deterministic and resumable."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pf_keras_training import data, recipes, repeated_aug


def _rasampler(order: np.ndarray, repeats: int, replicas: int, rank: int) -> np.ndarray:
    """DeiT's RASampler.__iter__ on a given permutation (without its epoch truncation)."""
    indices = np.repeat(order, repeats)
    return indices[rank::replicas]


@pytest.mark.parametrize("replicas, batch", [(1, 4), (2, 4), (4, 3)])
def test_assignment_is_rasamplers(replicas, batch):
    order = np.random.default_rng(0).permutation(50)
    stream = repeated_aug.repeat_for_replicas(tf.data.Dataset.from_tensor_slices(order), 3, replicas, batch)
    steps = 6
    out = np.array(list(stream.take(steps * replicas * batch).as_numpy_iterator())).reshape(steps, replicas, batch)
    for rank in range(replicas):
        np.testing.assert_array_equal(out[:, rank].reshape(-1), _rasampler(order, 3, replicas, rank)[:steps * batch])
    if replicas >= 3:  # the 3 copies of an image land on 3 different replicas
        first = out[0].reshape(replicas, batch)
        holders = [{r for r in range(replicas) if v in first[r]} for v in np.unique(first)[:2]]
        assert all(len(h) == 3 for h in holders)


def test_one_is_identity_and_bad_arguments():
    ds = tf.data.Dataset.range(5)
    assert list(repeated_aug.repeat_for_replicas(ds, 1, 2, 2).as_numpy_iterator()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"Received: repeats=0"):
        repeated_aug.repeat_for_replicas(ds, 0, 1, 1)


def _replica_batches(shapes_dir, skip_steps: int, clean_prefix: bool = False, repeats: int = 3):
    cfg = recipes.DataConfig(dataset=f"folder:{shapes_dir}", global_batch_size=8, image_size=24, crop_scale_min=1.0,
                             crop_ratio_min=1.0, crop_ratio_max=1.0, hflip=False, repeated_augment=repeats)
    source = data.resolve_source(cfg)
    fn = data.make_train_dataset_fn(source, cfg, seed=3, epoch=1, steps_per_epoch=4, skip_steps=skip_steps,
                                    label_smoothing=0.0, interpolation="bilinear", clean_prefix=clean_prefix)
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    return [(b["images"].numpy(), b["labels"].numpy()) for b in fn(ctx)]


def test_pipeline_repeats_each_file_three_times_across_replicas(shapes_dir):
    batches = _replica_batches(shapes_dir, 0)
    assert len(batches) == 8  # 4 steps x 2 local replicas, replica 0's batch first
    images = np.concatenate([b[0] for b in batches])  # the crop is the whole image: copies are identical
    keys = [im.tobytes() for im in images]
    # stream position p of step s: replica p % 2, slot p // 2 (RASampler's round-robin deal)
    stream = [keys[s * 8 + (p % 2) * 4 + p // 2] for s in range(4) for p in range(8)]
    for k in range(len(stream) // 3):
        assert stream[3 * k] == stream[3 * k + 1] == stream[3 * k + 2]  # the 3 copies of one file
        if 3 * k + 3 < len(stream):
            assert stream[3 * k] != stream[3 * k + 3]
    assert len(set(keys)) == 11  # 32 examples per epoch: a third are distinct


def test_resume_sees_the_same_stream(shapes_dir):
    full = _replica_batches(shapes_dir, 0)
    for clean in (False, True):
        tail = _replica_batches(shapes_dir, 2, clean_prefix=clean)
        assert len(tail) == 4
        for (a, la), (b, lb) in zip(full[4:], tail, strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(la, lb)
