"""The train transform's batched finish (flip, colour jitter, normalisation on whole batches under XLA)
against the per-image ops it replaces: the same bits."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

import pf_keras
from pf_keras_training import augment, data, recipes

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "timm",
                       "augment.npz")
CTX = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1)


@tf.function(reduce_retracing=True)
def _per_image(image, flip, factors, order):
    """The per-image ops of ``data.train_example`` after the resize."""
    image = tf.round(tf.clip_by_value(image, 0.0, 255.0))
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    return augment.normalize_levels(augment.jitter(image, factors, order))


def _resized_like(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """What an antialiased resize yields: smooth images with noise, values a little outside 0..255, some
    exact halves (rounding ties) and saturated regions (clipping)."""
    base = np.linspace(-20, 275, h * w * 3, dtype=np.float32).reshape(h, w, 3)
    images = base[None] + rng.normal(0, 40, (n, h, w, 3)).astype(np.float32)
    images[:, :4] = np.round(images[:, :4] * 2) / 2
    images[:, -3:] = 255.0
    return images


class TestFinishBatch:
    def test_bit_identical_to_per_image_ops(self):
        rng = np.random.default_rng(0)
        orders = np.array(list(itertools.permutations(range(3))), np.int32)  # all six orders
        n = 2 * len(orders)
        images = _resized_like(rng, n, 24, 20)
        orders = np.concatenate([orders, orders])
        factors = rng.uniform(0.6, 1.4, (n, 3)).astype(np.float32)
        factors[0] = (0.6, 1.4, 1.0)  # the ends of ColorJitter(0.4)'s range and the identity
        factors[1] = (0.0, 0.0, 0.0)  # degenerate images only
        flips = np.arange(n) % 2 == 0
        got = augment.finish_batch(images, flips, factors, orders, hflip=True, jitter=True).numpy()
        want = np.stack([_per_image(images[i], flips[i], factors[i], orders[i]).numpy() for i in range(n)])
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.float32 and len({g.tobytes() for g in got}) == n

    def test_images_over_256x256_sum_l_in_float64(self):
        rng = np.random.default_rng(2)
        images = np.round(np.clip(_resized_like(rng, 2, 272, 264), 0, 255))  # 272 * 264 * 255 > 2^24
        factors = np.float32([[1.2, 0.7, 1.3], [0.8, 1.4, 0.6]])
        orders = np.int32([[1, 2, 0], [2, 1, 0]])
        got = augment.jitter_batch(tf.constant(images), factors, orders).numpy()
        for i in range(2):
            np.testing.assert_array_equal(got[i], augment.jitter(tf.constant(images[i]), factors[i], orders[i]))

    def test_flip_and_jitter_off(self):
        rng = np.random.default_rng(1)
        images = _resized_like(rng, 3, 8, 10)
        ones, order = np.ones([3, 3], np.float32), np.tile(np.arange(3, dtype=np.int32), [3, 1])
        got = augment.finish_batch(images, np.ones(3, bool), ones, order, hflip=False, jitter=False).numpy()
        np.testing.assert_array_equal(got, augment.normalize_levels(np.round(np.clip(images, 0, 255))).numpy())

    def test_jitter_batch_matches_torchvision_fixtures(self):
        """The batched jitter on the timm/torchvision fixtures of augment_test (PIL's ColorJitter outputs)."""
        with np.load(FIXTURE) as ref:
            want = {k: ref[k] for k in ref.files}
        images = want["images"].astype(np.float32)
        for k in range(3):
            n = len(images)
            factors = np.tile(np.float32(want["jitter_factors"][k]), [n, 1])
            orders = np.tile(np.int32(want["jitter_orders"][k]), [n, 1])
            got = augment.jitter_batch(tf.constant(images), factors, orders).numpy()
            np.testing.assert_array_equal(got, want[f"jitter/{k}"].astype(np.float32))


class TestTrainResized:
    @pytest.mark.parametrize("method", ["bilinear", "bicubic", "nearest", "area", "random"])
    def test_uint8_resize_equals_the_float_resize(self, images, method):
        rng = np.random.default_rng(3)
        array = np.clip(np.linspace(0, 255, 60 * 50 * 3).reshape(60, 50, 3) + rng.normal(0, 25, (60, 50, 3)), 0, 255)
        jpeg = tf.constant(images.jpeg(array.astype(np.uint8)))
        cfg = recipes.DataConfig(image_size=24, train_interpolation=method)
        for k in range(4):
            seed = tf.constant([k, 7], tf.int64)
            got = data.train_resized(jpeg, seed, cfg, "bilinear")
            crop = tf.cast(data.decode_random_crop(jpeg, data._seed(k, 7, 0), (cfg.crop_scale_min, 1.0),
                                                   (cfg.crop_ratio_min, cfg.crop_ratio_max)), tf.float32)
            if method == "random":
                bicubic = bool(tf.random.stateless_uniform([], data._seed(k, 7, 5)) < 0.5)
                method_k = "bicubic" if bicubic else "bilinear"
            else:
                method_k = method
            want = tf.image.resize(crop, [24, 24], method=method_k, antialias=True)
            assert got.dtype == tf.float32
            np.testing.assert_array_equal(got.numpy(), want.numpy())


class TestNormalizeLevels:
    def test_is_torchs_float32_arithmetic(self):
        levels = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, 1)
        mean = np.float32(pf_keras.imagenet.IMAGENET_MEAN)
        std = np.float32(pf_keras.imagenet.IMAGENET_STD)
        want = (levels / np.float32(255.0) - mean) / std  # ToTensor (x / 255) then Normalize, in float32
        eager = augment.normalize_levels(tf.constant(levels)).numpy()
        graph = tf.function(augment.normalize_levels)(tf.constant(levels)).numpy()
        xla = tf.function(augment.normalize_levels, jit_compile=True)(tf.constant(levels)).numpy()
        for out in (eager, graph, xla):
            np.testing.assert_array_equal(out, want)


class TestPipeline:
    @pytest.mark.parametrize("interpolation", ["bilinear", "random"])
    def test_batched_stream_equals_the_per_image_stream(self, shapes_dir, monkeypatch, interpolation):
        cfg = recipes.DataConfig(dataset=f"folder:{shapes_dir}", global_batch_size=6, image_size=24,
                                 color_jitter=0.4, train_interpolation=interpolation)
        source = data.resolve_source(cfg)
        assert data.batched_finish(cfg)

        def stream():
            fn = data.make_train_dataset_fn(source, cfg, seed=3, epoch=1, steps_per_epoch=3, skip_steps=0,
                                            label_smoothing=0.1, interpolation="bilinear")
            return [{k: v.numpy() for k, v in b.items()} for b in fn(CTX)]

        batched = stream()
        monkeypatch.setattr(data, "batched_finish", lambda cfg: False)  # the per-image train_example path
        per_image = stream()
        assert len(batched) == len(per_image) == 3
        for a, b in zip(batched, per_image, strict=True):
            assert sorted(a) == sorted(b) == ["images", "labels", "skipped", "targets"]
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
        flat = np.concatenate([b["images"] for b in batched])
        assert len({im.tobytes() for im in flat}) == len(flat)

    def test_randaugment_and_erasing_stay_per_image(self):
        base = recipes.DataConfig(color_jitter=0.4)
        assert data.batched_finish(base)
        assert not data.batched_finish(recipes.DataConfig(randaugment_magnitude=9))
        assert not data.batched_finish(recipes.DataConfig(random_erasing=0.25))
