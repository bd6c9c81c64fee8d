"""Tests of pf_keras/imagenet.py and pf_keras/preprocessing.py: class names, decoding, eval transform."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import pf_keras
from pf_keras.imagenet import CLASSES_FILE, IMAGENET_MEAN, IMAGENET_STD, imagenet_classes
from pf_keras.preprocessing import resize_and_crop


class TestPreprocessInput:
    def test_numpy_and_tensor(self):
        x = np.array([[[[0.0, 127.5, 255.0]]]], "float32")
        expected = (x / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        np.testing.assert_allclose(pf_keras.preprocess_input(x), expected, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(pf_keras.preprocess_input(tf.constant(x))), expected, rtol=1e-6)
        np.testing.assert_array_equal(pf_keras.preprocess_input(x), pf_keras.normalize(x))  # one implementation

    def test_errors(self):
        with pytest.raises(ValueError, match="channels_last only. Received: data_format='channels_first'"):
            pf_keras.preprocess_input(np.zeros((1, 2, 2, 3)), data_format="channels_first")
        with pytest.raises(ValueError, match="3 channels last"):
            pf_keras.preprocess_input(np.zeros((1, 3, 2, 2)))


class TestClassNames:
    def test_thousand_sorted_unique_wnids_with_known_names(self):
        classes = imagenet_classes()
        wnids = [wnid for wnid, _ in classes]
        assert len(classes) == 1000 and len(set(wnids)) == 1000
        assert wnids == sorted(wnids)  # the label order of TFDS, torchvision's ImageFolder and the checkpoints
        assert all(name and name == name.strip() for _, name in classes)
        known = {0: ("n01440764", "tench"), 1: ("n01443537", "goldfish"), 281: ("n02123045", "tabby"),
                 285: ("n02124075", "Egyptian cat"), 999: ("n15075141", "toilet tissue")}
        for index, pair in known.items():
            assert classes[index] == pair

    def test_same_order_as_tfds_labels(self):
        # Cross-check with the TFDS package's label file (a test-only read; the package never imports TFDS).
        import tensorflow_datasets as tfds

        path = os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012", "labels.txt")
        with open(path) as f:
            assert [line.strip() for line in f if line.strip()] == [wnid for wnid, _ in imagenet_classes()]

    def test_decoding_does_not_import_tfds(self, tmp_path):
        import subprocess
        import sys

        code = ("import sys, numpy as np, pf_keras; pf_keras.decode_predictions(np.eye(1, 1000)); "
                "print('tensorflow_datasets' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "False"

    def test_file_records_its_source(self):
        with open(CLASSES_FILE) as f:
            assert "timm" in json.load(f)["source"]


class TestDecodePredictions:
    def test_top_k_on_handmade_logits(self):
        logits = np.full((2, 1000), -5.0, "float32")
        logits[0, [281, 0, 999]] = [3.0, 2.5, -1.0]
        logits[1, [1, 285]] = [0.5, 7.0]
        decoded = pf_keras.decode_predictions(logits, top=3)
        assert decoded[0] == [("n02123045", "tabby", 3.0), ("n01440764", "tench", 2.5),
                              ("n15075141", "toilet tissue", -1.0)]
        assert decoded[1][:2] == [("n02124075", "Egyptian cat", 7.0), ("n01443537", "goldfish", 0.5)]
        assert len(pf_keras.decode_predictions(logits)[0]) == 5

    def test_errors(self):
        with pytest.raises(ValueError, match=r"Received: shape=\(2, 10\)"):
            pf_keras.decode_predictions(np.zeros((2, 10)))
        with pytest.raises(ValueError, match=r"\[1, 1000\]. Received: top=0"):
            pf_keras.decode_predictions(np.zeros((1, 1000)), top=0)


def _pil_reference(image: np.ndarray, size: int, crop_fraction: float, interpolation: str) -> np.ndarray:
    """timm's eval transform written with PIL and NumPy (torchvision's Resize / CenterCrop rules)."""
    height, width = image.shape[:2]
    resize = int(size / crop_fraction)
    new_h, new_w = (resize, int(resize * width / height)) if height <= width else (int(resize * height / width), resize)
    method = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation]
    pixels = np.asarray(Image.fromarray(image).resize((new_w, new_h), method), np.float32)
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
    pixels = pixels[top : top + size, left : left + size]
    return (pixels / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)


class TestEvalTransform:
    @pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
    @pytest.mark.parametrize("shape", [(75, 100, 3), (100, 75, 3), (61, 61, 3)])
    def test_matches_pil_reference(self, interpolation, shape):
        # A smooth image, as photos are (on pure noise PIL's uint8 rounding between its two passes
        # shows: up to 3 grey levels with bicubic).
        coarse = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize(shape[1::-1], Image.BICUBIC))
        # float input takes TensorFlow's antialiased resize (uint8 input is PIL's exactly: pil_parity_test.py)
        out = pf_keras.eval_transform(image.astype(np.float32), size=32, crop_fraction=0.875,
                                      interpolation=interpolation)
        assert isinstance(out, np.ndarray) and out.shape == (32, 32, 3) and out.dtype == np.float32
        diff = np.abs(out - _pil_reference(image, 32, 0.875, interpolation)) * np.array(IMAGENET_STD) * 255.0
        # PIL rounds to uint8 (0.25 grey levels on average); measured max 0.95, mean 0.29.
        assert diff.max() < 1.2 and diff.mean() < 0.35

    def test_crop_window_is_torchvisions(self):
        # A horizontal ramp: the crop's first column tells the left offset exactly (nearest, no blending).
        ramp = np.tile(np.arange(100, dtype=np.float32)[None, :, None], (75, 1, 3))
        pixels = resize_and_crop(ramp, size=32, crop_fraction=0.875, interpolation="nearest").numpy()
        # shorter side 75 -> 36, longer 100 -> int(36 * 100 / 75) = 48; left = round((48 - 32) / 2) = 8.
        scale = 100 / 48
        assert pixels[0, 0, 0] == np.floor((8 + 0.5) * scale)

    @pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
    def test_a_thin_image_is_resampled_in_the_crop_window_only(self, interpolation, monkeypatch):
        # 1 x 50,000: its resized copy would be 256 x 12,800,000 (39 GB in float32); the window is 224 x 224.
        thin = np.tile(np.arange(50_000, dtype=np.float32)[None, :, None] % 256, (1, 1, 3))
        out = resize_and_crop(thin, size=224, interpolation=interpolation).numpy()
        assert out.shape == (224, 224, 3) and np.isfinite(out).all()
        # The window path equals resizing whole then cropping (up to float rounding of the sample positions):
        # forced on ordinary images by lowering the threshold.
        from pf_keras import preprocessing

        rng = np.random.default_rng(1)
        for shape in ((75, 100, 3), (300, 40, 3), (5, 900, 3)):
            image = rng.integers(0, 256, shape).astype(np.float32)  # float: TensorFlow's resize (uint8: PIL's)
            whole = resize_and_crop(image, size=32, interpolation=interpolation).numpy()
            monkeypatch.setattr(preprocessing, "MAX_RESIZED_PIXELS", 0)
            window = resize_and_crop(image, size=32, interpolation=interpolation).numpy()
            monkeypatch.undo()
            np.testing.assert_allclose(window, whole, atol=0.02)
        with pytest.raises(tf.errors.InvalidArgumentError, match="nearest cannot resample a window"):
            resize_and_crop(thin, size=224, interpolation="nearest")

    def test_tf_data_and_spec_defaults(self):
        spec = pf_keras.get_spec("vit_s_max")
        assert (spec.eval.size, spec.eval.crop_fraction, spec.eval.interpolation) == (224, 0.875, "bicubic")
        assert spec.eval.resize_size == 256
        images = tf.data.Dataset.from_tensors(tf.zeros((300, 400, 3), tf.uint8)).map(
            lambda x: pf_keras.eval_transform(x, size=spec.eval.size, interpolation=spec.eval.interpolation))
        out = next(iter(images))
        assert out.shape == (224, 224, 3)
        np.testing.assert_allclose(out[0, 0], -np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD), rtol=1e-5)

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            (dict(size=0), "positive int. Received: size=0"),
            (dict(crop_fraction=1.5), r"\(0, 1\]. Received: crop_fraction=1.5"),
            (dict(crop_fraction="0.9"), r"\(0, 1\]. Received: crop_fraction='0.9'"),
            (dict(crop_fraction=1e-300), r"size / crop_fraction at most 65536 pixels. Received: crop_fraction=1e-300"),
            (dict(interpolation="lanczos9"), "Received: interpolation='lanczos9'"),
        ],
    )
    def test_errors(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            pf_keras.eval_transform(np.zeros((40, 40, 3), np.uint8), **kwargs)
