"""Tests of pf_keras/models/resnet.py: parity with the official code, API, validation."""

from __future__ import annotations

import math
import os

import keras
import numpy as np
import pytest
from conftest import FIXTURES, load_fixture, load_published_manifest, nchw_to_nhwc, randomised, state_dict_of

import pf_keras
from pf_keras.layers.max_pool import MaxPool2D
from pf_keras.models import resnet
from pf_keras.weights import plan_torch_transfer

RESNET_FIXTURES = ["resnet_conv_small", "resnet_max_small", "resnet_hybrid_small", "resnet_hybrid_odd"]
# (params, GMACs) of the published models: the paper's numbers, from their specs.
PUBLISHED = {n: (s.params, s.macs_g) for n, s in pf_keras.SPECS.items() if s.family == "resnet"}
SMALL = dict(depths=(1, 1, 1, 1), width_mult=0.125, input_shape=(64, 64, 3), classes=5)


def _build_for_fixture(meta: dict, **kwargs) -> keras.Model:
    kw = meta["torch_kwargs"]
    name = meta["torch_builder"].split(".")[-1]
    return pf_keras.create_model(
        name,
        depths=tuple(kw["layer_setting"]),
        width_mult=kw["width_mult"],
        classes=kw["num_classes"],
        input_shape=tuple(meta["input_shape_nchw"][2:]) + (3,),
        classifier_activation=None,
        **kwargs,
    )


def _name_map(model: keras.Model):
    efficient = frozenset(
        layer.name[: -len("_spatial_avgpool")] for layer in model.layers if layer.name.endswith("_spatial_avgpool")
    )
    return lambda name: resnet._torch_name(name, efficient_blocks=efficient)


class TestResNetParity:
    @pytest.mark.parametrize("fixture", RESNET_FIXTURES)
    def test_logits_and_activations_match_reference(self, fixture):
        meta, arrays = load_fixture(fixture)
        model = _build_for_fixture(meta)
        for variable, value in plan_torch_transfer(model, state_dict_of(arrays), _name_map(model)):
            variable.assign(value)
        depths = meta["torch_kwargs"]["layer_setting"]
        taps = {"conv1": "stem_relu", "maxpool": "stem_pool"}
        taps.update({f"layer{s}": f"stage{s}_block{d}_out" for s, d in enumerate(depths, start=1)})
        assert resnet.stage_output_names(model) == [taps[f"layer{s}"] for s in range(1, 5)]
        probe = keras.Model(model.input, [model.output] + [model.get_layer(n).output for n in taps.values()])
        outputs = probe.predict(nchw_to_nhwc(arrays["x"]), verbose=0)
        np.testing.assert_allclose(outputs[0], arrays["logits"], atol=1e-4, rtol=0)
        for (module, _), out in zip(taps.items(), outputs[1:], strict=True):
            np.testing.assert_allclose(out, nchw_to_nhwc(arrays[f"act/{module}"]), atol=1e-4, rtol=0, err_msg=module)
        assert (
            model.count_params() - sum(math.prod(w.shape) for w in model.non_trainable_weights)
            == meta["params_trainable"]
        )

    @pytest.mark.parametrize(
        "fixture,checkpoint",
        [("resnet_max_small", "resnet_max_small.pth"), ("resnet_hybrid_small", "resnet_hybrid_small_wrapped.pth")],
    )
    def test_weights_argument_reads_torch_checkpoint(self, fixture, checkpoint):
        meta, arrays = load_fixture(fixture)
        model = _build_for_fixture(meta, weights=os.path.join(FIXTURES, "pth", checkpoint))
        logits = model.predict(nchw_to_nhwc(arrays["x"]), verbose=0)
        np.testing.assert_allclose(logits, arrays["logits"], atol=1e-4, rtol=0)

    def test_headless_model_accepts_checkpoint_with_head(self):
        meta, arrays = load_fixture("resnet_max_small")
        model = _build_for_fixture(
            meta, include_top=False, weights=os.path.join(FIXTURES, "pth", "resnet_max_small.pth")
        )
        features = model.predict(nchw_to_nhwc(arrays["x"]), verbose=0)
        np.testing.assert_allclose(features, nchw_to_nhwc(arrays["act/layer4"]), atol=1e-4, rtol=0)


class TestResNetCheckpointErrors:
    def test_wrong_keys_and_shapes_are_named(self):
        meta, arrays = load_fixture("resnet_conv_small")
        model = _build_for_fixture(meta)
        sd = state_dict_of(arrays)
        del sd["layer1.0.conv_block.0.weight"]
        sd["layer9.0.extra.weight"] = np.zeros(3, np.float32)
        sd["fc.weight"] = np.zeros((11, 256), np.float32)
        with pytest.raises(ValueError) as info:
            plan_torch_transfer(model, sd, _name_map(model))
        message = str(info.value)
        assert "1 missing keys ['layer1.0.conv_block.0.weight']" in message
        assert "1 unexpected keys ['layer9.0.extra.weight']" in message
        assert "fc.weight: checkpoint (11, 256) vs model (10, 256)" in message

    def test_keras_weights_file_of_other_variant_is_refused(self, tmp_path):
        path = str(tmp_path / "max.weights.h5")
        source = pf_keras.PfResNet50("max", **SMALL)
        source.save_weights(path)
        loaded = pf_keras.PfResNet50("max", weights=path, **SMALL)
        for a, b in zip(source.get_weights(), loaded.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
        # Keras alone would only warn and leave the hybrid's extra convs at their initial values.
        with pytest.raises(ValueError, match="does not fit model 'resnet50_hybrid'.*Received: weights="):
            pf_keras.PfResNet50("hybrid", weights=path, **SMALL)

    def test_checkpoint_of_other_variant_fails_at_build(self):
        meta, _ = load_fixture("resnet_max_small")
        with pytest.raises(ValueError, match=r"missing keys \['layer1.0.conv_block.0.weight'"):
            pf_keras.create_model(
                "resnet50",
                depths=(1, 2, 1, 1),
                width_mult=0.125,
                classes=10,
                input_shape=(64, 64, 3),
                weights=os.path.join(FIXTURES, "pth", "resnet_max_small.pth"),
            )


@pytest.mark.large
class TestPublishedResNets:
    @pytest.mark.parametrize("name", sorted(PUBLISHED))
    def test_manifest_keys_shapes_params_and_macs(self, name):
        manifest = load_published_manifest(name)
        model = pf_keras.create_model(name)
        zeros = {k: np.zeros(shape, np.float32) for k, shape in manifest["state_dict"].items()}
        plan = plan_torch_transfer(model, zeros, _name_map(model))
        assert len(plan) == len(model.weights)
        params, gmacs = PUBLISHED[name]
        result = pf_keras.profile(model)
        assert result.params == params == manifest["params_trainable"]
        assert abs(result.macs / 1e9 - gmacs) / gmacs <= 0.01

    @pytest.mark.parametrize("name", sorted(PUBLISHED))
    def test_keras_round_trip_and_saved_model_reproduce_outputs(self, name, tmp_path):
        import tensorflow as tf

        model = randomised(pf_keras.create_model(name, input_shape=(64, 64, 3)), std=0.05)  # non-trivial BN stats
        x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype("float32")
        expected = model(x, training=False).numpy()  # eager calls: no predict function traced per model
        model.save(tmp_path / "m.keras")
        restored = keras.saving.load_model(tmp_path / "m.keras")
        np.testing.assert_allclose(restored(x, training=False).numpy(), expected, atol=1e-6)
        model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
        loaded = tf.saved_model.load(str(tmp_path / "sm"))  # keep a reference: it owns the variables
        served = loaded.serve(tf.constant(x))
        np.testing.assert_allclose(served.numpy(), expected, atol=1e-5)


class TestResNetBuilder:
    def test_pf_resnet50_default_is_hybrid(self):
        # Default input size and classes; a shallow, narrow body (the full-size build is in TestPublishedResNets).
        model = pf_keras.PfResNet50(weights=None, depths=(1, 2, 1, 1), width_mult=0.125)
        assert model.name == "resnet50_hybrid"
        assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 1000)
        assert isinstance(model.get_layer("stage2_block1_spatial_avgpool"), keras.layers.AveragePooling2D)
        assert isinstance(model.get_layer("stage2_block2_spatial_pool"), MaxPool2D)

    def test_stride_sits_on_spatial_op(self):
        model = pf_keras.ResNet50(**SMALL)
        assert model.get_layer("stage2_block1_reduce_conv").strides == (1, 1)
        assert model.get_layer("stage2_block1_spatial_conv").strides == (2, 2)
        assert model.get_layer("stage2_block1_shortcut_conv").strides == (2, 2)
        assert model.get_layer("stage2_block1_out").output.shape == (None, 8, 8, 64)

    @pytest.mark.parametrize("name", ["resnet50", "resnet50_max", "resnet50_hybrid"])
    def test_feature_extraction_at_any_size(self, name):
        model = pf_keras.create_model(
            name, include_top=False, input_shape=(None, None, 3), depths=(1, 1, 1, 1), width_mult=0.125
        )
        for side in (64, 96):
            out = model.predict(np.zeros((1, side, side, 3), "float32"), verbose=0)
            assert out.shape == (1, side // 32, side // 32, 256)
        features = keras.Model(model.input, [model.get_layer(n).output for n in resnet.stage_output_names(model)])
        shapes = [f.shape for f in features.predict(np.zeros((1, 64, 64, 3), "float32"), verbose=0)]
        assert shapes == [(1, 16, 16, 32), (1, 8, 8, 64), (1, 4, 4, 128), (1, 2, 2, 256)]

    def test_max_variant_accepts_sides_not_multiple_of_32(self):
        model = pf_keras.PfResNet50(
            "max", include_top=False, pooling="avg", depths=(1, 1, 1, 1), width_mult=0.125, input_shape=(72, 50, 3)
        )
        assert model.output_shape == (None, 256)

    def test_pooling_options(self):
        avg = pf_keras.ResNet50(include_top=False, pooling="avg", depths=(1, 1, 1, 1), width_mult=0.125)
        mx = pf_keras.ResNet50(include_top=False, pooling="max", depths=(1, 1, 1, 1), width_mult=0.125)
        assert isinstance(avg.get_layer("avg_pool"), keras.layers.GlobalAveragePooling2D)
        assert isinstance(mx.get_layer("max_pool"), keras.layers.GlobalMaxPooling2D)
        assert avg.output_shape == mx.output_shape == (None, 256)

    def test_include_preprocessing_matches_preprocess_input(self):
        raw = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
        plain = pf_keras.PfResNet50(classifier_activation=None, **SMALL)
        with_pre = pf_keras.PfResNet50(classifier_activation=None, include_preprocessing=True, **SMALL)
        with_pre.set_weights(plain.get_weights())
        np.testing.assert_allclose(
            with_pre.predict(raw, verbose=0), plain.predict(pf_keras.preprocess_input(raw), verbose=0), atol=1e-4
        )

    def test_input_tensor(self):
        tensor = keras.Input((64, 64, 3), name="pixels")
        model = pf_keras.ResNet50(input_tensor=tensor, depths=(1, 1, 1, 1), width_mult=0.125, classes=3)
        assert model.inputs[0] is tensor

    def test_block_kinds_per_block(self):
        kinds = ["max", ["regular", "max"], "efficient", "max"]
        model = pf_keras.ResNet((1, 2, 1, 1), kinds, width_mult=0.125, input_shape=(64, 64, 3))
        ops = {layer.name: type(layer).__name__ for layer in model.layers
               if "_spatial_" in layer.name and not layer.name.endswith(("_pad", "_bn", "_relu"))}
        assert ops == {
            "stage1_block1_spatial_pool": "MaxPool2D",  # max
            "stage2_block1_spatial_conv": "Conv2D",  # regular
            "stage2_block2_spatial_pool": "MaxPool2D",  # max
            "stage3_block1_spatial_avgpool": "AveragePooling2D", "stage3_block1_spatial_conv": "Conv2D",  # efficient
            "stage4_block1_spatial_pool": "MaxPool2D",  # max
        }

    def test_drop_path_and_gradients(self):
        import tensorflow as tf

        model = pf_keras.PfResNet50(drop_path_rate=0.2, classifier_activation=None, **SMALL)
        assert model.get_layer("stage4_block1_drop_path").rate == pytest.approx(0.2)
        assert not any(layer.name == "stage1_block1_drop_path" for layer in model.layers)  # rate 0 there
        x = np.random.default_rng(0).normal(size=(4, 64, 64, 3)).astype("float32")
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x, training=True) ** 2)
        grads = tape.gradient(loss, model.trainable_weights)
        assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
        np.testing.assert_allclose(model(x, training=False), model(x, training=False))

    def test_config_round_trip(self):
        model = pf_keras.PfResNet50(drop_path_rate=0.1, **SMALL)
        clone = keras.Model.from_config(model.get_config())
        assert clone.get_config() == model.get_config()

    def test_bn_matches_pytorch_defaults(self):
        bn = pf_keras.ResNet50(**SMALL).get_layer("stem_bn")
        assert bn.momentum == 0.9 and bn.epsilon == 1e-5


class TestResNetValidation:
    @pytest.mark.parametrize(
        "kwargs,match",
        [
            (dict(weights="imagenet", classes=10), "ImageNet weights have a 1000-class head.*Received: classes=10"),
            (dict(input_shape=(16, 16, 3)), "at least 32 pixels.*Received: input_shape=\\(16, 16, 3\\)"),
            (dict(input_shape=(100, 96, 3)), "multiples of 32.*Received: input_shape=\\(100, 96, 3\\)"),
            (dict(pooling="avg"), "pass include_top=False.*Received: pooling='avg', include_top=True"),
            (dict(include_top=False, pooling="mean"), "`pooling` must be one of.*Received: pooling='mean'"),
            (dict(depths=(1, 1, 1)), "4 positive ints.*Received: depths=\\(1, 1, 1\\)"),
            (dict(width_mult=0.001), "Received: width_mult=0.001"),
            (dict(weights="missing.pth"), "does not exist. Received: weights='missing.pth'"),
            (dict(weights="model.onnx"), "PyTorch checkpoint.*Received: weights='model.onnx'"),
            (dict(weights="imagenet", depths=(1, 1, 1, 1)), "published configurations"),
            (dict(classes=0), "positive int. Received: classes=0"),
            (dict(input_shape=(64, 64)), "\\(height, width, channels\\)"),
            (dict(classifier_activation="nope"), "classifier_activation"),
        ],
    )
    def test_invalid_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            pf_keras.create_model("resnet50_hybrid", **kwargs)

    def test_unknown_names(self):
        with pytest.raises(
            ValueError, match="Unknown model name. Valid names: .*resnet50_hybrid.*Received: name='r50'"
        ):
            pf_keras.create_model("r50")
        with pytest.raises(
            ValueError, match="`variant` must be one of \\['hybrid', 'max'\\]. Received: variant='conv'"
        ):
            pf_keras.PfResNet50("conv")
        with pytest.raises(ValueError, match="Block kinds must be in"):
            pf_keras.ResNet((1, 1, 1, 1), "avg")

    def test_imagenet_weights_explain_where_to_put_the_file(self, tmp_path, monkeypatch):
        monkeypatch.setenv("PF_KERAS_WEIGHTS_DIR", str(tmp_path))
        monkeypatch.setenv("PF_KERAS_OFFLINE", "1")
        with pytest.raises(ValueError, match="drive.google.com.*resnet50_hybrid.pth.*PF_KERAS_WEIGHTS_DIR"):
            pf_keras.PfResNet50(weights="imagenet")

    def test_imagenet_weights_are_read_from_weights_dir(self, tmp_path, monkeypatch):
        # weights="imagenet" reads <PF_KERAS_WEIGHTS_DIR>/<name>.pth; a wrong file there fails the manifest check.
        import shutil

        shutil.copy(os.path.join(FIXTURES, "pth", "resnet_max_small.pth"), tmp_path / "resnet50_max.pth")
        monkeypatch.setenv("PF_KERAS_WEIGHTS_DIR", str(tmp_path))
        with pytest.raises(ValueError, match=r"not the official resnet50_max checkpoint.*mis-shaped keys \['fc.bias'"):
            pf_keras.PfResNet50("max", weights="imagenet")
