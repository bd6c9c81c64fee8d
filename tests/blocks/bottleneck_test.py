"""Tests of pf_keras/blocks/bottleneck.py: every spatial op of the study as a block kind."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import pf_keras
from pf_keras.blocks import BLOCK_KINDS, apply_avg_pool_3x3, apply_bottleneck

C_IN, FILTERS = 64, 16  # the block outputs 4 * 16 = 64 channels: no shortcut conv at stride 1
REDUCE = C_IN * FILTERS + 2 * FILTERS  # 1x1 conv + BN gamma/beta
EXPAND = FILTERS * C_IN + 2 * C_IN
SHORTCUT = C_IN * C_IN + 2 * C_IN  # stride-2 blocks only
CONV3 = 9 * FILTERS * FILTERS + 2 * FILTERS
DWCONV3 = 9 * FILTERS + 2 * FILTERS
SPATIAL_PARAMS = {  # (kind, stride) -> trainable params of the spatial op, by hand
    ("regular", 1): CONV3, ("regular", 2): CONV3,
    ("depthwise", 1): DWCONV3, ("depthwise", 2): DWCONV3,
    ("max", 1): 0, ("max", 2): 0,
    ("average", 1): 0, ("average", 2): 0,
    ("identity", 1): 0, ("identity", 2): 0,
    ("efficient", 1): 0, ("efficient", 2): CONV3,
}


def _block(kind: str, strides: int, side: int = 8, channels: int = C_IN) -> keras.Model:
    inputs = keras.Input((side, side, channels))
    return keras.Model(inputs, apply_bottleneck(inputs, FILTERS, kind=kind, strides=strides, name="b"))


def _torch_avg_pool_3x3(x: np.ndarray, stride: int) -> np.ndarray:
    """PyTorch AvgPool2d(3, stride, padding=1) (count_include_pad=True) in NumPy: zero border, / 9."""
    n, h, w, c = x.shape
    padded = np.zeros((n, h + 2, w + 2, c), x.dtype)
    padded[:, 1:-1, 1:-1] = x
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    out = np.empty((n, oh, ow, c), x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = padded[:, i * stride : i * stride + 3, j * stride : j * stride + 3].sum(axis=(1, 2)) / 9
    return out


class TestBlockKinds:
    def test_kinds(self):
        assert BLOCK_KINDS == ("regular", "depthwise", "max", "average", "identity", "efficient")

    @pytest.mark.parametrize("kind,strides", sorted(SPATIAL_PARAMS))
    def test_shapes_and_param_counts(self, kind, strides):
        model = _block(kind, strides)
        assert model.output_shape == (None, 8 // strides, 8 // strides, C_IN)
        expected = REDUCE + EXPAND + SPATIAL_PARAMS[kind, strides] + (SHORTCUT if strides == 2 else 0)
        assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == expected
        assert pf_keras.profile(model).params == expected

    @pytest.mark.parametrize("kind", [k for k in BLOCK_KINDS if k != "efficient"])
    def test_stride_2_on_odd_sides_ceils_like_the_shortcut(self, kind):
        assert _block(kind, 2, side=7).output_shape == (None, 4, 4, C_IN)

    @pytest.mark.parametrize(
        "kind,strides,spatial_macs",
        [
            ("regular", 2, 4 * 4 * 9 * FILTERS * FILTERS),
            ("depthwise", 1, 8 * 8 * 9 * FILTERS),
            ("depthwise", 2, 4 * 4 * 9 * FILTERS),
            ("average", 2, 0),
            ("identity", 2, 0),
        ],
    )
    def test_macs_from_profile(self, kind, strides, spatial_macs):
        out = 8 // strides
        expected = 8 * 8 * C_IN * FILTERS + out * out * FILTERS * C_IN + spatial_macs
        if strides == 2:
            expected += out * out * C_IN * C_IN
        assert pf_keras.profile(_block(kind, strides)).macs == expected

    @pytest.mark.parametrize(
        "kind,strides,spatial_layers",
        [
            ("regular", 1, ["b_spatial_conv", "b_spatial_bn", "b_spatial_relu"]),
            ("regular", 2, ["b_spatial_pad", "b_spatial_conv", "b_spatial_bn", "b_spatial_relu"]),
            ("max", 1, ["b_spatial_pool"]),
            ("max", 2, ["b_spatial_pool_pad", "b_spatial_pool"]),
            ("efficient", 1, ["b_spatial_pool"]),
            ("efficient", 2, ["b_spatial_avgpool", "b_spatial_conv", "b_spatial_bn", "b_spatial_relu"]),
            ("depthwise", 2, ["b_spatial_pad", "b_spatial_dwconv", "b_spatial_bn", "b_spatial_relu"]),
            ("average", 1, ["b_spatial_pool_pad", "b_spatial_pool"]),
            ("identity", 1, ["b_spatial_identity"]),
            ("identity", 2, ["b_spatial_subsample"]),
        ],
    )
    def test_layer_names_are_stable(self, kind, strides, spatial_layers):
        # The regular/max/efficient names are the left column of the PyTorch name table: never rename.
        names = [layer.name for layer in _block(kind, strides).layers if layer.name.startswith("b_spatial")]
        assert names == spatial_layers


class TestAveragePool:
    @pytest.mark.parametrize("side", [7, 8])
    @pytest.mark.parametrize("strides", [1, 2])
    def test_matches_pytorch_count_include_pad(self, side, strides):
        x = np.random.default_rng(0).normal(size=(2, side, side, 3)).astype("float32") - 1.0
        inputs = keras.Input(x.shape[1:])
        out = keras.Model(inputs, apply_avg_pool_3x3(inputs, strides=strides, name="p")).predict(x, verbose=0)
        np.testing.assert_allclose(out, _torch_avg_pool_3x3(x, strides), rtol=1e-5, atol=1e-6)


class TestIdentity:
    def test_stride_2_keeps_the_even_pixels(self):
        x = np.random.default_rng(1).normal(size=(2, 7, 7, 4)).astype("float32")
        model = _block("identity", 2, side=7, channels=4)
        sub = keras.Model(model.input, model.get_layer("b_spatial_subsample").output)
        reduced = keras.Model(model.input, model.get_layer("b_reduce_relu").output).predict(x, verbose=0)
        np.testing.assert_array_equal(sub.predict(x, verbose=0), reduced[:, ::2, ::2])


class TestDepthwise:
    def test_strided_depthwise_pads_symmetrically_like_pytorch(self):
        inputs = keras.Input((8, 8, 2))
        model = keras.Model(inputs, pf_keras.blocks.apply_conv_bn(
            inputs, 2, 3, strides=2, activation=None, depthwise=True, name="d"))
        model.get_layer("d_dwconv").set_weights([np.ones((3, 3, 2, 1), "float32")])
        out = model.predict(np.ones((1, 8, 8, 2), "float32"), verbose=0) * np.sqrt(1 + 1e-5)
        np.testing.assert_allclose(out[0, 0, 0], [4.0, 4.0], rtol=1e-6)  # corner sees 2x2 ones
        np.testing.assert_allclose(out[0, 3, 3], [9.0, 9.0], rtol=1e-6)

    def test_depthwise_keeps_channels(self):
        inputs = keras.Input((8, 8, 4))
        with pytest.raises(ValueError, match="keeps the channel count \\(4\\). Received: filters=8"):
            pf_keras.blocks.apply_conv_bn(inputs, 8, 3, depthwise=True, name="d")


MIXED = [["depthwise"], ["average", "identity"], ["identity"], ["max"]]  # per stage, per block


class TestResNetWithStudyKinds:
    def _model(self, **kwargs):
        return pf_keras.ResNet((1, 2, 1, 1), MIXED, width_mult=0.125, input_shape=(64, 64, 3), classes=5, **kwargs)

    def test_per_block_kinds_build_the_right_ops(self):
        model = self._model()
        assert isinstance(model.get_layer("stage1_block1_spatial_dwconv"), keras.layers.DepthwiseConv2D)
        assert isinstance(model.get_layer("stage2_block1_spatial_pool"), keras.layers.AveragePooling2D)
        assert isinstance(model.get_layer("stage2_block2_spatial_identity"), keras.layers.Identity)
        assert isinstance(model.get_layer("stage3_block1_spatial_subsample"), keras.layers.MaxPooling2D)
        assert model.output_shape == (None, 5)

    def test_registry_models_take_block_kinds(self):
        model = pf_keras.create_model("resnet50", block_kinds="average", depths=(1, 1, 1, 1), width_mult=0.125,
                                      input_shape=(64, 64, 3), classes=5)
        assert model.get_layer("stage4_block1_spatial_pool").__class__ is keras.layers.AveragePooling2D

    def test_config_round_trip_and_keras_file(self, tmp_path):
        model = self._model(classifier_activation=None)
        assert keras.Model.from_config(model.get_config()).get_config() == model.get_config()
        path = str(tmp_path / "study.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
        x = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype("float32")
        np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
        assert [w.path for w in loaded.weights] == [w.path for w in model.weights]

    def test_unknown_kind_lists_the_kinds(self):
        with pytest.raises(ValueError, match="Block kinds must be in .*'identity'.*Received: 'avgpool' in stage 2"):
            pf_keras.ResNet((1, 1, 1, 1), ["max", "avgpool", "max", "max"])
