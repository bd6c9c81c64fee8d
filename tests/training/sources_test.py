"""The data-source registry: the --dataset grammar, registration, and one extra source used by training and export."""

from __future__ import annotations

import dataclasses
import functools
import io
from typing import ClassVar

import numpy as np
import pytest
import tensorflow as tf
import tiny_tfds

import pf_keras
from pf_keras_export.images import load_images, model_inputs
from pf_keras_training import data, recipes, sources

CTX = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1)
SIDE = 20  # the extra source's images: SIDE x SIDE, one flat colour per example


def _colour(split: int, index: int) -> np.ndarray:
    return np.array([(37 * index + 11 * split) % 256, 40 * split + 3, 200 - index], np.uint8)


@functools.cache
def _pngs(train: int, val: int) -> tuple[bytes, ...]:
    """The encoded images, train then val (PIL: built outside any traced function)."""
    from PIL import Image

    def png(colour):
        buffer = io.BytesIO()
        Image.fromarray(np.full((SIDE, SIDE, 3), colour, np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    return tuple(png(_colour(split, i)) for split, n in ((0, train), (1, val)) for i in range(n))


@dataclasses.dataclass(frozen=True)
class ColoursSource(sources.DataSource):
    """``colours:N``: N classes of flat-colour PNGs held in memory (8 train, 5 val); keys are indices that
    :meth:`read` looks up, so the pipeline's per-file handling sees a source-specific read."""

    kind: ClassVar[str] = "colours"
    form: ClassVar[str] = "colours:N"
    argument_usage: ClassVar[str] = "a class count, as in colours:3"
    counts: ClassVar[dict[str, int]] = {"train": 8, "val": 5}

    def resolve(self, cfg):
        if not self.argument.isdigit() or int(self.argument) < 1:
            raise ValueError(f"`colours:N` needs N >= 1. Received: dataset={self.name!r}")
        return dataclasses.replace(self, num_classes=int(self.argument), train_examples=self.counts["train"],
                                   eval_examples=self.counts["val"])

    def encoded(self, split, ctx, *, seed, epoch, cfg, training):
        n = self.counts[split]
        keys = np.arange(n, dtype=np.int64) + (0 if split == "train" else 1000)
        labels = np.arange(n, dtype=np.int64) % self.num_classes
        if training:
            order = np.random.default_rng([seed, epoch]).permutation(n)
            keys, labels = keys[order], labels[order]
        ds = tf.data.Dataset.from_tensor_slices((keys, labels)).shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        return ds.repeat() if training else ds

    def read(self, key):
        index = tf.where(key >= 1000, key - 1000 + self.counts["train"], key)
        return tf.gather(tf.constant(_pngs(self.counts["train"], self.counts["val"])), index)


@pytest.fixture
def colours():
    sources.register(ColoursSource)
    yield ColoursSource
    sources.unregister("colours")


class TestGrammar:
    @pytest.mark.parametrize("dataset, kind, argument", [
        (None, "builtin", ""), ("builtin", "builtin", ""), ("synthetic", "synthetic", ""),
        ("folder:/d/x:y", "folder", "/d/x:y"), ("imagenet2012", "tfds", "imagenet2012"),
        ("imagenet2012:5.1.0", "tfds", "imagenet2012:5.1.0"), ("tfds:cifar10", "tfds", "cifar10"),
    ])
    def test_parse(self, dataset, kind, argument):
        source = sources.parse(dataset, data_dir="/tfds")
        assert (source.kind, source.argument, source.data_dir) == (kind, argument, "/tfds")

    @pytest.mark.parametrize("dataset, message", [
        ("folder:", r"`folder:` needs a path, as in folder:/data/my_images. Received: dataset='folder:'"),
        ("synthetic:3", r"`synthetic` takes no argument. Received: dataset='synthetic:3'"),
        ("tfds:", r"`tfds:` needs a TFDS name"),
    ])
    def test_bad_forms(self, dataset, message):
        with pytest.raises(ValueError, match=message):
            sources.parse(dataset)

    def test_register_refuses_a_taken_or_malformed_kind(self):
        taken = type("Taken", (sources.DataSource,), {"kind": "folder"})
        with pytest.raises(ValueError, match=r"taken by FolderSource. Received: kind='folder'"):
            sources.register(taken)
        with pytest.raises(ValueError, match=r"without ':'"):
            sources.register(type("Colon", (sources.DataSource,), {"kind": "a:b"}))
        assert sources.kinds() == ("builtin", "synthetic", "folder", "tfds")


class TestExtraSource:
    def test_one_registered_class_feeds_training_evaluation_and_export(self, colours):
        assert sources.forms()[-1] == "colours:N"
        cfg = recipes.DataConfig(dataset="colours:3", global_batch_size=4, image_size=16)
        source = data.resolve_source(cfg)
        assert (source.kind, source.num_classes, source.train_examples, source.eval_examples) == ("colours", 3, 8, 5)

        fn = data.make_train_dataset_fn(source, cfg, seed=0, epoch=0, steps_per_epoch=3, skip_steps=0,
                                        label_smoothing=0.0, interpolation="bilinear")
        batches = list(fn(CTX))
        assert len(batches) == 3
        for b in batches:
            assert b["images"].shape == (4, 16, 16, 3) and np.isfinite(b["images"].numpy()).all()
            assert int(tf.reduce_sum(b["skipped"])) == 0
            np.testing.assert_array_equal(tf.argmax(b["targets"], -1).numpy(), b["labels"].numpy())
        order = np.random.default_rng([0, 0]).permutation(8)
        np.testing.assert_array_equal(batches[0]["labels"].numpy(), order[:4] % 3)
        # A flat colour survives crop, resize and flip: the first image is its colour, normalised.
        first = pf_keras.normalize(_colour(0, order[0]).astype(np.float32))
        np.testing.assert_allclose(batches[0]["images"].numpy()[0], np.broadcast_to(first, (16, 16, 3)), atol=1e-5)

        evals = list(data.make_eval_dataset_fn(source, cfg, interpolation="bilinear")(CTX))
        assert len(evals) == data.eval_steps(source, cfg) == 2
        assert sum(float(tf.reduce_sum(b["weights"])) for b in evals) == 5.0
        np.testing.assert_allclose(evals[0]["images"].numpy()[1],
                                   np.broadcast_to(pf_keras.normalize(_colour(1, 1).astype(np.float32)), (16, 16, 3)),
                                   atol=1e-5)

        # Export: the first eval images, eval-transformed, repeated past the split's 5.
        images = load_images("colours:3", 7, 12)
        assert images.shape == (7, 12, 12, 3) and images.dtype == np.uint8
        for k in range(7):
            np.testing.assert_array_equal(images[k], np.broadcast_to(_colour(1, k % 5), (12, 12, 3)))

    def test_its_errors_are_one_line(self, colours):
        with pytest.raises(ValueError, match=r"`colours:` needs a class count"):
            load_images("colours:", 2, 8)
        with pytest.raises(ValueError, match=r"`colours:N` needs N >= 1. Received: dataset='colours:x'"):
            data.resolve_source(recipes.DataConfig(dataset="colours:x"))


PfTinyColours = tiny_tfds.builder(  # 3 flat-colour validation images, 2 classes
    "PfTinyColours", num_classes=2, encoding="png", sizes={"train": 4, "validation": 3},
    image=lambda split, i: np.full((SIDE, SIDE + 6, 3), _colour(split, i), np.uint8))


def _photo(split: int, index: int) -> np.ndarray:
    from PIL import Image

    coarse = np.random.default_rng([split, index]).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((37 + index, 45), Image.BICUBIC))


PfTinyPhotos = tiny_tfds.builder(  # 2 smooth JPEG photos per split
    "PfTinyPhotos", num_classes=2, encoding="jpeg", sizes={"train": 2, "validation": 2}, image=_photo)


class TestBuiltinKinds:
    def test_tfds_export_images_are_pils_eval_pixels(self, tmp_path):
        # the stored JPEG bytes through the pipelines' decoder (PIL's pixels) and PIL's resize, not TFDS's decoder
        import tensorflow_datasets as tfds
        from PIL import Image

        PfTinyPhotos(data_dir=str(tmp_path)).download_and_prepare()
        images = load_images("pf_tiny_photos", 2, 12, data_dir=str(tmp_path))
        stored = tfds.load("pf_tiny_photos", split="validation", shuffle_files=False, data_dir=str(tmp_path),
                           decoders={"image": tfds.decode.SkipDecoding()})
        for image, example in zip(images, stored, strict=True):
            photo = Image.open(io.BytesIO(example["image"].numpy())).convert("RGB")
            w, h = photo.size
            resized = np.asarray(photo.resize((13, int(13 * h / w)), Image.BILINEAR))  # 12 / 0.875 -> 13
            top = int(round((resized.shape[0] - 12) / 2.0))
            np.testing.assert_array_equal(image, resized[top:top + 12, :12])

    def test_tfds_export_images_are_the_validation_split_repeated_in_order(self, tmp_path):
        PfTinyColours(data_dir=str(tmp_path)).download_and_prepare()
        for dataset in ("pf_tiny_colours", "tfds:pf_tiny_colours"):
            images = load_images(dataset, 5, 12, data_dir=str(tmp_path))
            assert images.shape == (5, 12, 12, 3)
            assert (images == images[:, :1, :1]).all()  # flat colours, resized and cropped
            found = sorted(tuple(int(v) for v in image[0, 0]) for image in images[:3])
            assert found == sorted(tuple(int(v) for v in _colour(1, i)) for i in range(3))  # TFDS's order
            np.testing.assert_array_equal(images[3:], images[:2])


    def test_synthetic_stream_is_the_seeded_normal_batch(self):
        cfg = recipes.DataConfig(dataset="synthetic", global_batch_size=2, image_size=8, train_examples=4,
                                 eval_examples=3)
        source = data.resolve_source(cfg)
        assert (source.num_classes, source.train_examples, source.eval_examples) == (1000, 4, 3)
        batches = list(data.make_train_dataset_fn(source, cfg, seed=5, epoch=0, steps_per_epoch=2, skip_steps=0,
                                                  label_smoothing=0.1, interpolation="")(CTX))
        rng = np.random.default_rng([5, 0])
        images = rng.standard_normal((2, 8, 8, 3), np.float32)
        labels = rng.integers(0, 1000, 2)
        assert len(batches) == 2
        for b in batches:
            np.testing.assert_array_equal(b["images"].numpy(), images)
            np.testing.assert_array_equal(b["labels"].numpy(), labels)
            np.testing.assert_allclose(b["targets"].numpy().max(-1), 0.9 + 0.1 / 1000, rtol=1e-6)
        evals = list(data.make_eval_dataset_fn(source, cfg, interpolation="")(CTX))
        assert [float(tf.reduce_sum(b["weights"])) for b in evals] == [2.0, 1.0]
        np.testing.assert_array_equal(evals[0]["images"].numpy(),
                                      np.random.default_rng([1, 0]).standard_normal((3, 8, 8, 3), np.float32)[:2])

    def test_export_inputs_use_the_one_normalisation(self):
        pixels = np.array([[[[0, 124, 255]]]], np.uint8)
        inputs = model_inputs(pixels, takes_pixels=False)
        np.testing.assert_array_equal(inputs, pf_keras.normalize(pixels))
        np.testing.assert_allclose(inputs[0, 0, 0], [-2.1179, 0.1352, 2.64], atol=1e-4)
