"""PIL parity of the eval pixels: Pillow's resize (pf_keras.pil_resample) and the eval transform, bit for bit.

Pillow itself is the reference (what timm's pipeline runs), on images and sizes drawn at random; a Python
transcription of Pillow's coefficient loop checks the weights alone.
"""

from __future__ import annotations

import re

import numpy as np
import PIL
import pytest
import tensorflow as tf
from PIL import Image

import pf_keras
from pf_keras import pil_resample
from pf_keras.imagenet import IMAGENET_MEAN, IMAGENET_STD
from pf_keras.preprocessing import resize_and_crop

FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13


def _python_coefficients(in_size: int, out_size: int, interpolation: str, first: int = 0,
                         count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc, transcribed loop for loop in Python floats (output
    samples ``first .. first + count - 1``; all by default)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = pil_resample.SUPPORT[interpolation] * filterscale
    taps = int(np.ceil(support)) * 2 + 1

    def kernel(x: float) -> float:
        x = abs(x)
        if interpolation == "bilinear":
            return 1.0 - x if x < 1.0 else 0.0
        if x < 1.0:
            return (1.5 * x - 2.5) * x * x + 1.0
        return (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5 if x < 2.0 else 0.0

    count = out_size - first if count is None else count
    starts = np.zeros(count, np.int64)
    weights = np.zeros((count, taps), np.int64)
    for i, xx in enumerate(range(first, first + count)):
        centre = (xx + 0.5) * scale
        xmin = max(int(centre - support + 0.5), 0)
        xmax = min(int(centre + support + 0.5), in_size) - xmin
        w = [kernel((x + xmin - centre + 0.5) * (1.0 / filterscale)) for x in range(xmax)]
        total = 0.0
        for v in w:
            total += v
        if total != 0.0:
            w = [v / total for v in w]
        starts[i] = xmin
        weights[i, :xmax] = [int((-0.5 if v < 0 else 0.5) + v * (1 << 22)) for v in w]
    return starts, weights


def _pil_resize(image: np.ndarray, out_hw, interpolation: str, horizontal_first: bool | None = None) -> np.ndarray:
    """Pillow's resize; ``horizontal_first=True``: Pillow 12's order, as two single-axis resizes (each is
    one pass of the same arithmetic)."""
    (oh, ow), f = out_hw, FILTERS[interpolation]
    if horizontal_first:
        image = np.asarray(Image.fromarray(image).resize((ow, image.shape[0]), f))
    return np.asarray(Image.fromarray(image).resize((ow, oh), f))


def _smooth(rng, h: int, w: int) -> np.ndarray:
    coarse = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))


class TestCoefficients:
    @pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
    def test_equal_pillows_loop(self, interpolation):
        rng = np.random.default_rng(0)
        sizes = [(1, 1), (1, 7), (7, 1), (500, 341), (375, 256), (256, 224), (3, 1000), (4000, 224)]
        sizes += [tuple(int(v) for v in rng.integers(1, 2500, 2)) for _ in range(40)]
        fn = tf.function(pil_resample.coefficients, reduce_retracing=True)
        for in_size, out_size in sizes:
            starts, weights = _python_coefficients(in_size, out_size, interpolation)
            for get in (pil_resample.coefficients, fn):
                s, w = get(in_size, out_size, 0, out_size, interpolation)
                np.testing.assert_array_equal(s.numpy(), starts)
                np.testing.assert_array_equal(w.numpy(), weights)
            # a window of outputs is the same rows of the whole table
            first = out_size // 3
            s, w = pil_resample.coefficients(in_size, out_size, first, out_size - first, interpolation)
            np.testing.assert_array_equal(w.numpy(), weights[first:])
            np.testing.assert_array_equal(s.numpy(), starts[first:])
        # the weights of every output sample sum to one, up to Pillow's rounding of each
        _, w = pil_resample.coefficients(500, 341, 0, 341, interpolation)
        assert np.abs(w.numpy().sum(1) - (1 << 22)).max() <= w.shape[1]


class TestResizeWindow:
    @pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
    def test_random_images_sizes_and_windows_equal_pillow(self, interpolation):
        rng = np.random.default_rng(1 if interpolation == "bilinear" else 2)
        fn = tf.function(pil_resample.resize_window, reduce_retracing=True)
        cases = [((375, 500), (256, 341)), ((500, 375), (341, 256)), ((1, 1), (5, 3)), ((2, 300), (256, 38400)),
                 ((900, 20), (60, 3)), ((300, 40), (250, 39)), ((40, 300), (39, 250))]
        cases += [((int(rng.integers(1, 300)), int(rng.integers(1, 300))),
                   (int(rng.integers(1, 400)), int(rng.integers(1, 400)))) for _ in range(30)]
        for i, ((h, w), (oh, ow)) in enumerate(cases):
            image = rng.integers(0, 256, (h, w, 3), np.uint8) if i % 2 else _smooth(rng, h, w)
            expected = _pil_resize(image, (oh, ow), interpolation)  # the installed Pillow: "auto" follows it
            sh, sw = int(rng.integers(1, oh + 1)), int(rng.integers(1, ow + 1))
            y, x = int(rng.integers(0, oh - sh + 1)), int(rng.integers(0, ow - sw + 1))
            get = fn if i % 3 else pil_resample.resize_window
            out = get(tf.constant(image), tf.constant([oh, ow]), tf.constant([y, x]), (sh, sw), interpolation)
            assert out.dtype == tf.uint8
            np.testing.assert_array_equal(out.numpy(), expected[y:y + sh, x:x + sw], err_msg=f"{(h, w)} -> {(oh, ow)}")

    @pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
    def test_both_pass_orders(self, interpolation):
        # Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many pixels as
        # the width; then the order changes the result (uint8 rounding between the passes).
        rng = np.random.default_rng(3)
        image = rng.integers(0, 256, (151, 142, 3), np.uint8)
        assert bool(pil_resample.vertical_first(tf.constant([151, 142]), tf.constant([6, 81])))
        assert not bool(pil_resample.vertical_first(tf.constant([375, 500]), tf.constant([256, 341])))
        assert not bool(pil_resample.vertical_first(tf.constant([10, 10]), tf.constant([20, 20])))

        def resized(order):
            return pil_resample.resize_window(tf.constant(image), [6, 81], [0, 0], (6, 81), interpolation,
                                              pass_order=order).numpy()

        old, new = resized("pillow12"), resized("pillow13")
        assert not np.array_equal(old, new)  # the case tells the orders apart
        np.testing.assert_array_equal(old, _pil_resize(image, (6, 81), interpolation, horizontal_first=True))
        if PILLOW_13:
            np.testing.assert_array_equal(new, _pil_resize(image, (6, 81), interpolation))
        # "auto" follows the installed Pillow (read from its metadata)
        assert pil_resample.installed_pass_order() == ("pillow13" if PILLOW_13 else "pillow12")
        np.testing.assert_array_equal(resized("auto"), _pil_resize(image, (6, 81), interpolation))
        with pytest.raises(ValueError, match="Received: pass_order='pillow11'"):
            resized("pillow11")

    @pytest.mark.parametrize("version,order", [("12.2.0", "pillow12"), ("9.5.0", "pillow12"), ("13.0.0", "pillow13"),
                                               ("14.1", "pillow13"), (None, "pillow13"), ("garbled", "pillow13")])
    def test_auto_order_follows_the_installed_pillow(self, monkeypatch, version, order):
        from importlib import metadata

        def fake_version(name):
            if version is None:
                raise metadata.PackageNotFoundError(name)
            return version

        monkeypatch.setattr(metadata, "version", fake_version)
        pil_resample.installed_pass_order.cache_clear()
        try:
            assert pil_resample.installed_pass_order() == order
            image = np.random.default_rng(3).integers(0, 256, (151, 142, 3), np.uint8)
            auto = pil_resample.resize_window(image, [6, 81], [0, 0], (6, 81), "bilinear").numpy()
            chosen = pil_resample.resize_window(image, [6, 81], [0, 0], (6, 81), "bilinear", pass_order=order).numpy()
            np.testing.assert_array_equal(auto, chosen)
        finally:
            pil_resample.installed_pass_order.cache_clear()

    def test_inside_tf_data(self):
        rng = np.random.default_rng(4)
        images = [_smooth(rng, 75, 100), _smooth(rng, 100, 75), rng.integers(0, 256, (61, 61, 3), np.uint8)]
        ds = tf.data.Dataset.from_generator(lambda: iter(images), output_signature=tf.TensorSpec([None, None, 3],
                                                                                                   tf.uint8))
        ds = ds.map(lambda x: pil_resample.resize_window(x, [50, 40], [5, 6], (32, 30), "bicubic"))
        for image, out in zip(images, ds, strict=True):
            np.testing.assert_array_equal(out.numpy(), _pil_resize(image, (50, 40), "bicubic")[5:37, 6:36])

    def test_bad_interpolation(self):
        with pytest.raises(ValueError, match="Received: interpolation='nearest'"):
            pil_resample.resize_window(tf.zeros([4, 4, 3], tf.uint8), [2, 2], [0, 0], (2, 2), "nearest")


def _timm_eval(image: np.ndarray, size: int, crop_fraction: float, interpolation: str) -> np.ndarray:
    """timm's eval transform on a PIL image: torchvision's Resize(int) and CenterCrop rules, ToTensor's
    float32 / 255, Normalize in float32."""
    height, width = image.shape[:2]
    resize = int(size / crop_fraction)
    new_h, new_w = (resize, int(resize * width / height)) if height <= width else (int(resize * height / width),
                                                                                   resize)
    pixels = np.asarray(Image.fromarray(image).resize((new_w, new_h), FILTERS[interpolation]))
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = pixels[top:top + size, left:left + size].astype(np.float32) / np.float32(255.0)
    return (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)


class TestEvalTransform:
    @pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
    def test_uint8_images_give_timms_exact_floats(self, interpolation):
        rng = np.random.default_rng(5)
        shapes = [(375, 500), (500, 375), (224, 224), (256, 300), (61, 61), (150, 40), (33, 1000), (1000, 33)]
        for i, (h, w) in enumerate(shapes):
            image = _smooth(rng, h, w) if i % 2 else rng.integers(0, 256, (h, w, 3), np.uint8)
            out = pf_keras.eval_transform(image, size=224, interpolation=interpolation)
            np.testing.assert_array_equal(out, _timm_eval(image, 224, 0.875, interpolation), err_msg=f"{(h, w)}")
        # resize_and_crop gives the integer levels; graph mode and XLA give the same floats (normalised by table)
        levels = resize_and_crop(tf.constant(image), size=32, interpolation=interpolation).numpy()
        assert levels.dtype == np.float32 and np.array_equal(levels, np.round(levels))
        expected = _timm_eval(image, 224, 0.875, interpolation)
        for jit in (False, True):
            fn = tf.function(lambda x: pf_keras.eval_transform(x, interpolation=interpolation), jit_compile=jit)
            np.testing.assert_array_equal(fn(tf.constant(image)).numpy(), expected)
        ds = tf.data.Dataset.from_tensors(image).map(lambda x: pf_keras.eval_transform(x, interpolation=interpolation))
        np.testing.assert_array_equal(next(iter(ds)).numpy(), expected)

    def test_a_thin_image_costs_its_window(self):
        # 2 x 40,000: resized whole it would be 256 x 5,120,000 (3.9 GB as uint8 RGB in Pillow)
        thin = np.tile((np.arange(40_000) % 251).astype(np.uint8)[None, :, None], (2, 1, 3))
        out = resize_and_crop(tf.constant(thin), size=224, interpolation="bicubic").numpy()
        assert out.shape == (224, 224, 3) and np.isfinite(out).all()
        # 1 x 9,000,000 resized to a 256 shorter side is 256 x 2,304,000,000: its width passes int32, and the
        # centre crop still takes the right window (the step in the middle of the image)
        step = np.zeros((1, 9_000_000, 3), np.uint8)
        step[0, 4_500_000:] = 200
        out = resize_and_crop(tf.constant(step), size=224, interpolation="bilinear").numpy()
        offset = round((256 * 9_000_000 - 224) / 2)
        starts, weights = _python_coefficients(9_000_000, 256 * 9_000_000, "bilinear", offset, 224)
        taps = np.minimum(starts[:, None] + np.arange(weights.shape[1]), 9_000_000 - 1)
        expected = np.clip((step[0, taps, 0].astype(np.int64) * weights).sum(1) + (1 << 21) >> 22, 0, 255)
        assert expected[0] == 13 and expected[-1] == 187  # the window lies inside the step's one-pixel ramp
        np.testing.assert_array_equal(out, np.broadcast_to(expected[None, :, None], (224, 224, 3)))
        # a float image takes TensorFlow's resize of the window, positioned in float64 (in int32 / float32 the
        # resized width overflowed: "Dimension -1990967296 must be >= 0")
        floats = resize_and_crop(tf.constant(step.astype(np.float32)), size=224, interpolation="bilinear").numpy()
        np.testing.assert_allclose(floats, out, atol=0.5)


class TestImageShapes:
    def test_grey_rgba_and_bad_shapes(self):
        rng = np.random.default_rng(6)
        rgb = rng.integers(0, 256, (40, 30, 3), np.uint8)
        expected = _timm_eval(rgb, 16, 0.875, "bilinear")
        rgba = np.concatenate([rgb, rng.integers(0, 256, (40, 30, 1), np.uint8)], -1)
        np.testing.assert_array_equal(pf_keras.eval_transform(rgba, size=16), expected)  # alpha dropped, as PIL
        grey = rgb[..., :1]
        as_rgb = _timm_eval(np.repeat(grey, 3, -1), 16, 0.875, "bilinear")
        np.testing.assert_array_equal(pf_keras.eval_transform(grey, size=16), as_rgb)
        np.testing.assert_allclose(pf_keras.eval_transform(grey.astype(np.float32), size=16), as_rgb, atol=0.03)
        for shape in [(0, 5, 3), (5, 0, 3), (3, 4), (3, 4, 2), (2, 3, 4, 3)]:
            for dtype in (np.uint8, np.float32):
                with pytest.raises(ValueError, match=re.escape(f"1, 3 or 4 channels and height and width >= 1. "
                                                               f"Received: shape={shape}")):
                    pf_keras.eval_transform(np.zeros(shape, dtype), size=16)
