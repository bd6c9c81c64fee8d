"""Tests of pf_keras/blocks/conv.py and bottleneck.py: PyTorch padding semantics."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pf_keras.blocks import apply_bottleneck, apply_conv_bn, apply_max_pool_3x3


def _torch_max_pool_3x3(x: np.ndarray, stride: int) -> np.ndarray:
    """PyTorch MaxPool2d(3, stride, padding=1) in NumPy: -inf border, floor output size."""
    n, h, w, c = x.shape
    padded = np.full((n, h + 2, w + 2, c), -np.inf, x.dtype)
    padded[:, 1:-1, 1:-1] = x
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    out = np.empty((n, oh, ow, c), x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = padded[:, i * stride : i * stride + 3, j * stride : j * stride + 3].max(axis=(1, 2))
    return out


def _apply(fn, x, **kwargs):
    inputs = keras.Input(x.shape[1:])
    return keras.Model(inputs, fn(inputs, **kwargs)).predict(x, verbose=0)


class TestMaxPool3x3:
    @pytest.mark.parametrize("side", [7, 8])
    def test_stride_1_is_exact_for_negative_inputs(self, side):
        x = np.random.default_rng(0).normal(size=(2, side, side, 3)).astype("float32") - 5.0
        np.testing.assert_array_equal(_apply(apply_max_pool_3x3, x, strides=1, name="p"), _torch_max_pool_3x3(x, 1))

    @pytest.mark.parametrize("side", [7, 8, 9])
    def test_stride_2_is_exact_for_relu_outputs(self, side):
        x = np.abs(np.random.default_rng(1).normal(size=(2, side, side, 3))).astype("float32")
        np.testing.assert_array_equal(_apply(apply_max_pool_3x3, x, strides=2, name="p"), _torch_max_pool_3x3(x, 2))


class TestConvBn:
    def test_strided_conv_pads_symmetrically_like_pytorch(self):
        inputs = keras.Input((8, 8, 1))
        model = keras.Model(inputs, apply_conv_bn(inputs, 1, 3, strides=2, activation=None, name="c"))
        model.get_layer("c_conv").set_weights([np.ones((3, 3, 1, 1), "float32")])
        x = np.ones((1, 8, 8, 1), "float32")
        out = model.predict(x, verbose=0)[0, :, :, 0] * np.sqrt(1 + 1e-5)  # undo the BN epsilon
        # PyTorch pads one pixel on every side: the top-left window sees 4 ones, inner windows 9.
        assert out.shape == (4, 4)
        np.testing.assert_allclose(out[0, 0], 4.0, rtol=1e-6)
        np.testing.assert_allclose(out[1, 1], 9.0, rtol=1e-6)
        np.testing.assert_allclose(out[3, 3], 9.0, rtol=1e-6)  # Keras "same" would give 4 here
        assert [layer.name for layer in model.layers[1:]] == ["c_pad", "c_conv", "c_bn"]


class TestBottleneck:
    @pytest.mark.parametrize(
        "kind,strides,params",
        [
            ("regular", 1, 64 * 16 + 16 * 16 * 9 + 16 * 64),
            ("max", 2, 64 * 16 + 16 * 64),
            ("efficient", 2, 64 * 16 + 16 * 16 * 9 + 16 * 64),
        ],
    )
    def test_kinds_shapes_and_param_counts(self, kind, strides, params):
        inputs = keras.Input((8, 8, 64))
        model = keras.Model(inputs, apply_bottleneck(inputs, 16, kind=kind, strides=strides, name="b"))
        assert model.output_shape == (None, 8 // strides, 8 // strides, 64)
        conv_params = sum(int(np.prod(w.shape)) for w in model.trainable_weights if w.path.endswith("kernel"))
        shortcut = 64 * 64 if strides == 2 else 0
        assert conv_params == params + shortcut

    def test_invalid_kind_and_stride(self):
        inputs = keras.Input((8, 8, 4))
        with pytest.raises(ValueError, match="Received: kind='avg'"):
            apply_bottleneck(inputs, 4, kind="avg", name="b")
        with pytest.raises(ValueError, match="Received: strides=3"):
            apply_bottleneck(inputs, 4, strides=3, name="b")
