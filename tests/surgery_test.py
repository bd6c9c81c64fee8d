"""Tests of pf_keras/surgery.py: the design rule applied to keras.applications and port ResNets."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import randomised

import pf_keras
from pf_keras.surgery import make_parameter_free

TINY = dict(depths=(1, 1, 1, 1), width_mult=0.125, input_shape=(64, 64, 3), classes=10, classifier_activation=None)


def _layer_signature(model: keras.Model) -> dict:
    keys = ("strides", "padding", "pool_size", "kernel_size")
    return {layer.name: (type(layer).__name__, tuple(str(layer.get_config().get(k)) for k in keys))
            for layer in model.layers}


def _x(side: int = 64) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, side, side, 3)).astype("float32")


class TestPortResNets:
    @pytest.mark.parametrize("rule,reference", [("max", "resnet50_max"), ("hybrid", "resnet50_hybrid")])
    def test_resnet50_becomes_the_published_variant(self, rule, reference):
        model = randomised(pf_keras.create_model("resnet50", **TINY))
        new, report = make_parameter_free(model, rule)
        expected = pf_keras.create_model(reference, **TINY)
        assert new.name == reference
        assert _layer_signature(new) == _layer_signature(expected)
        # Same graph, same names: the surgery result's weights drive the published builder exactly.
        expected.set_weights(new.get_weights())
        np.testing.assert_allclose(new.predict(_x(), verbose=0), expected.predict(_x(), verbose=0), atol=1e-5)
        assert report.params_after == pf_keras.profile(expected).params
        assert report.macs_after == pf_keras.profile(expected).macs
        assert report.macs_before == pf_keras.profile(model).macs

    def test_every_other_weight_is_kept(self):
        model = randomised(pf_keras.create_model("resnet50", **TINY))
        new, report = make_parameter_free(model, "hybrid")
        old = {layer.name: layer for layer in model.layers}
        for layer in new.layers:
            if layer.name not in old:
                assert not layer.weights, layer.name  # only parameter-free layers are new
                continue
            for got, want in zip(layer.get_weights(), old[layer.name].get_weights(), strict=True):
                np.testing.assert_array_equal(got, want)
        assert new.get_layer("stage2_block1_spatial_conv").strides == (1, 1)  # efficient: conv after avg-pool
        assert model.get_layer("stage2_block1_spatial_conv").strides == (2, 2)  # the input model is untouched
        assert [u.action for u in report.units] == ["max_pool", "efficient", "efficient", "efficient"]

    @pytest.mark.large  # full-size ResNet-50
    def test_full_size_param_counts(self):
        model = pf_keras.ResNet50(weights=None)
        assert make_parameter_free(model, "max")[1].params_after == 14_232_232  # resnet50_max
        report = make_parameter_free(model, "hybrid")[1]
        assert report.params_after == 17_330_600 == pf_keras.SPECS["resnet50_hybrid"].params
        assert report.params_before == 25_557_032
        assert str(report).startswith("rule hybrid: 16 spatial units, 13 -> 3x3 max-pool, 3 -> efficient")

    def test_result_saves_and_loads(self, tmp_path):
        new, _ = make_parameter_free(pf_keras.create_model("resnet50", **TINY), "max")
        path = str(tmp_path / "max.keras")
        new.save(path)
        np.testing.assert_allclose(keras.models.load_model(path).predict(_x(), verbose=0),
                                   new.predict(_x(), verbose=0), atol=1e-6)


class TestKerasApplications:
    @pytest.mark.large  # full-size ResNet-50
    def test_resnet50_v1_max_and_hybrid(self):
        model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
        new, report = make_parameter_free(model, "max")
        assert len(report.replaced) == 16 and report.params_after < report.params_before
        assert isinstance(new.get_layer("conv3_block1_2_pool"), keras.layers.MaxPooling2D)
        assert new.get_layer("conv3_block1_1_conv").strides == (2, 2)  # v1 strides its 1x1: kept there
        assert new.output_shape == model.output_shape
        assert np.isfinite(new.predict(_x(), verbose=0)).all()
        new, report = make_parameter_free(model, "hybrid")
        kept = [u.conv for u in report.units if u.action == "kept"]
        assert kept == ["conv3_block1_2_conv", "conv4_block1_2_conv", "conv5_block1_2_conv"]
        assert all("1x1 reduction" in u.reason for u in report.units if u.action == "kept")
        assert len(report.replaced) == 13
        # 13 3x3 convs (kernel + bias, as keras.applications builds them) and their BN gamma/beta gone:
        # every block of conv2 (no downsampling there), all but the first of conv3/conv4/conv5.
        removed = sum(n * (9 * f * f + f + 2 * f) for n, f in ((3, 64), (3, 128), (5, 256), (2, 512)))
        assert report.params_before - report.params_after == removed

    @pytest.mark.large  # full-size ResNet-50
    def test_resnet50_v2_pre_activation(self):
        model = randomised(keras.applications.ResNet50V2(weights=None, input_shape=(64, 64, 3), classes=10))
        new, report = make_parameter_free(model, "max")
        assert len(report.replaced) == 16
        strided = [u.conv for u in report.units if u.strides == 2]
        assert strided == ["conv2_block3_2_conv", "conv3_block4_2_conv", "conv4_block6_2_conv"]  # stride on the 3x3
        pool = new.get_layer("conv2_block3_2_pool")
        assert pool.strides == (2, 2) and pool.padding == "valid"
        assert isinstance(new.get_layer("conv2_block3_2_pool_pad"), keras.layers.ZeroPadding2D)
        assert new.get_layer("conv2_block3_2_pool").output.shape == model.get_layer("conv2_block3_2_relu").output.shape
        new, report = make_parameter_free(model, "hybrid")
        assert [u.conv for u in report.units if u.action == "efficient"] == strided
        assert new.output_shape == model.output_shape
        np.testing.assert_array_equal(new.get_layer("conv2_block3_2_conv").get_weights()[0],
                                      model.get_layer("conv2_block3_2_conv").get_weights()[0])

    @pytest.mark.large  # full-size ResNet-50
    def test_unknown_input_size_counts_macs_at_image_size(self):
        model = keras.applications.ResNet50(weights=None, include_top=False)
        assert make_parameter_free(model, "max")[1].macs_before is None
        report = make_parameter_free(model, "max", image_size=64)[1]
        assert report.macs_after < report.macs_before

    @pytest.mark.large
    @pytest.mark.parametrize("builder,units", [(keras.applications.ResNet101, 33), (keras.applications.ResNet152, 50)])
    def test_deeper_resnets(self, builder, units):
        model = builder(weights=None, include_top=False, input_shape=(64, 64, 3))
        new, report = make_parameter_free(model, "hybrid")
        assert len(report.units) == units and len(report.replaced) == units - 3
        assert new.output_shape == model.output_shape


class TestRefusals:
    @pytest.mark.parametrize(
        "build",
        [
            lambda: keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3), alpha=0.35, classes=10),
            lambda: pf_keras.create_model("vit_ti_max", depth=2, input_shape=(32, 32, 3), classes=10),
            lambda: keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(2)]),
        ],
        ids=["mobilenet_v2", "vit", "sequential_mlp"],
    )
    def test_other_models_are_refused_in_one_line(self, build):
        with pytest.raises(ValueError, match=r"make_parameter_free .*Conv2D 3x3 .*Received: .*model") as info:
            make_parameter_free(build(), "max")
        assert "\n" not in str(info.value)

    def test_unknown_rule(self):
        with pytest.raises(ValueError, match="`rule` must be one of \\('max', 'hybrid'\\). Received: rule='avg'"):
            make_parameter_free(pf_keras.create_model("resnet50", **TINY), "avg")
