"""Tests of pf_keras/models/vit.py: parity with the official code, export, API, validation."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from conftest import FIXTURES, load_fixture, load_published_manifest, nchw_to_nhwc, randomised, state_dict_of
from litert_utils import convert_to_tflite, non_builtin_ops, op_names, run_tflite
from torch_save_writer import save_state_dict

import pf_keras
from pf_keras.models import vit
from pf_keras.weights import plan_torch_transfer, read_state_dict

# (params, GMACs) of the published models: the paper's numbers, from their specs.
PUBLISHED = {n: (s.params, s.macs_g) for n, s in pf_keras.SPECS.items() if s.family == "vit"}
SMALL = dict(patch_size=8, hidden_dim=16, depth=2, num_heads=2, input_shape=(32, 32, 3), classes=5)


def _fixture_model(**kwargs) -> tuple[keras.Model, dict]:
    """The ``vit_max_small`` configuration with the fixture's weights, and the fixture arrays."""
    meta, arrays = load_fixture("vit_max_small")
    kw = meta["torch_kwargs"]
    model = pf_keras.create_model(
        "vit_s_max",
        patch_size=kw["patch_size"],
        hidden_dim=kw["embed_dim"],
        depth=kw["depth"],
        num_heads=kw["num_heads"],
        mlp_ratio=kw["mlp_ratio"],
        classes=kw["num_classes"],
        input_shape=(kw["img_size"], kw["img_size"], 3),
        classifier_activation=None,
        **kwargs,
    )
    if kwargs.get("weights") is None:
        for variable, value in plan_torch_transfer(model, state_dict_of(arrays), vit._torch_name):
            variable.assign(value)
    return model, {"meta": meta, **arrays}



class TestViTParity:
    def test_logits_and_every_block_match_reference(self):
        model, arrays = _fixture_model()
        depth = arrays["meta"]["torch_kwargs"]["depth"]
        taps = {"patch_embed": "patch_tokens", **{f"blocks.{i}": f"block{i}" for i in range(depth)}}
        probe = keras.Model(model.input, [model.output] + [model.get_layer(n).output for n in taps.values()])
        outputs = probe.predict(nchw_to_nhwc(arrays["x"]), verbose=0)
        np.testing.assert_allclose(outputs[0], arrays["logits"], atol=1e-4, rtol=0)
        for module, out in zip(taps, outputs[1:], strict=True):
            np.testing.assert_allclose(out, arrays[f"act/{module}"], atol=1e-4, rtol=0, err_msg=module)
        assert [model.get_layer(f"block{i}").mixer_kind for i in range(depth)] == ["attention", "max"] * 2
        assert pf_keras.profile(model).params == arrays["meta"]["params_trainable"]

    def test_torch_free_writer_matches_torch_save(self, tmp_path):
        """The helper writing transformer checkpoints reproduces a file real torch.save wrote."""
        real = read_state_dict(os.path.join(FIXTURES, "pth", "resnet_max_small.pth"))
        save_state_dict(str(tmp_path / "copy.pth"), real, wrap_key="model")
        copy = read_state_dict(str(tmp_path / "copy.pth"))
        assert list(copy) == list(real)
        for key, value in real.items():
            assert copy[key].dtype == value.dtype and copy[key].shape == value.shape, key
            np.testing.assert_array_equal(copy[key], value)

    def test_weights_argument_reads_torch_checkpoint(self, tmp_path):
        _, arrays = _fixture_model()
        path = str(tmp_path / "vit_max_small.pth")
        save_state_dict(path, {f"module.{k}": v for k, v in state_dict_of(arrays).items()}, wrap_key="model")
        keras.utils.clear_session()
        model, _ = _fixture_model(weights=path)
        np.testing.assert_allclose(model.predict(nchw_to_nhwc(arrays["x"]), verbose=0), arrays["logits"], atol=1e-4)

    def test_weights_argument_takes_converted_keras_weights(self, tmp_path):
        model, arrays = _fixture_model()
        model.save_weights(tmp_path / "vit.weights.h5")
        keras.utils.clear_session()
        reloaded, _ = _fixture_model(weights=str(tmp_path / "vit.weights.h5"))
        logits = reloaded.predict(nchw_to_nhwc(arrays["x"]), verbose=0)
        np.testing.assert_allclose(logits, arrays["logits"], atol=1e-4, rtol=0)

    def test_headless_model_returns_normalised_token_map(self):
        model, arrays = _fixture_model()
        headless = keras.Model(model.input, model.get_layer("feature_map").output)
        features = headless.predict(nchw_to_nhwc(arrays["x"]), verbose=0)
        assert features.shape == (2, 4, 4, 48)
        dense = model.get_layer("predictions")
        logits = features.mean(axis=(1, 2)) @ keras.ops.convert_to_numpy(dense.kernel) + keras.ops.convert_to_numpy(
            dense.bias
        )
        np.testing.assert_allclose(logits, arrays["logits"], atol=1e-4, rtol=0)

    def test_wrong_keys_and_shapes_are_named(self):
        model, arrays = _fixture_model()
        state = state_dict_of(arrays)
        del state["blocks.1.attn.qkv.bias"]
        state["blocks.0.attn.proj.weight"] = np.zeros((48, 144), np.float32)
        state["blocks.9.norm1.weight"] = np.zeros(48, np.float32)
        with pytest.raises(ValueError, match="1 missing keys \\['blocks.1.attn.qkv.bias'\\]") as error:
            plan_torch_transfer(model, state, vit._torch_name)
        assert "['blocks.9.norm1.weight']" in str(error.value)
        assert "blocks.0.attn.proj.weight: checkpoint (48, 144) vs model (48, 48)" in str(error.value)


@pytest.mark.large
class TestPublishedViTs:
    @pytest.mark.parametrize("name", sorted(PUBLISHED))
    def test_manifest_keys_shapes_params_and_macs(self, name):
        manifest = load_published_manifest(name)
        model = pf_keras.create_model(name)
        zeros = {k: np.zeros(shape, np.float32) for k, shape in manifest["state_dict"].items()}
        plan = plan_torch_transfer(model, zeros, vit._torch_name)
        assert len(plan) == len(model.weights) == len(manifest["state_dict"])
        params, gmacs = PUBLISHED[name]
        result = pf_keras.profile(model)
        assert result.params == params == manifest["params_trainable"]
        assert abs(result.macs / 1e9 - gmacs) / gmacs <= 0.01


class TestViTExport:
    def test_keras_round_trip_and_saved_model_reproduce_outputs(self, tmp_path):
        import tensorflow as tf

        model = randomised(pf_keras.PfViT("s", drop_path_rate=0.1, **SMALL))
        x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
        expected = model(x, training=False).numpy()  # eager calls: no predict function traced per model
        model.save(tmp_path / "m.keras")
        restored = keras.saving.load_model(tmp_path / "m.keras")
        np.testing.assert_allclose(restored(x, training=False).numpy(), expected, atol=1e-6)
        assert restored.get_layer("block1").get_config() == model.get_layer("block1").get_config()
        model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
        loaded = tf.saved_model.load(str(tmp_path / "sm"))  # keep a reference: it owns the variables
        np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), expected, atol=1e-5)

    def test_tflite_builtin_ops_only_and_same_outputs(self, tmp_path):
        model, arrays = _fixture_model()
        x = nchw_to_nhwc(arrays["x"])
        blob = convert_to_tflite(model, str(tmp_path))
        assert non_builtin_ops(blob) == []
        assert {"GELU", "MAX_POOL_2D", "BATCH_MATMUL", "SOFTMAX"} <= set(op_names(blob))
        output, _ = run_tflite(blob, x)
        np.testing.assert_allclose(output, model.predict(x, verbose=0), atol=1e-4, rtol=0)
        np.testing.assert_allclose(output, arrays["logits"], atol=1e-4, rtol=0)

    def test_tflite_fixed_batch_runs_in_one_xnnpack_partition(self, tmp_path):
        model, arrays = _fixture_model()
        x = nchw_to_nhwc(arrays["x"])[:1]
        blob = convert_to_tflite(model, str(tmp_path), batch_size=1)
        assert not {"SHAPE", "GATHER", "Erf"} & set(op_names(blob))
        output, delegate_nodes = run_tflite(blob, x)
        assert delegate_nodes == 1
        np.testing.assert_allclose(output, arrays["logits"][:1], atol=1e-4, rtol=0)


class TestViTBuilder:
    def test_pf_vit_variants_and_registry(self):
        assert pf_keras.PfViT(**SMALL).name == "vit_s_max"
        for name in PUBLISHED:
            assert name in pf_keras.list_models()
        model = pf_keras.create_model("vit_b_max", **SMALL)
        assert model.name == "vit_b_max" and model.output_shape == (None, 5)

    @pytest.mark.parametrize(
        "mixers,kinds",
        [
            ("attention", ["attention", "attention", "attention"]),
            ("max", ["max", "max", "max"]),
            ("alternating", ["attention", "max", "attention"]),
            (["max", "attention", "max"], ["max", "attention", "max"]),
        ],
    )
    def test_mixer_patterns(self, mixers, kinds):
        model = vit.ViT(**{**SMALL, "depth": 3}, mixers=mixers)
        assert [model.get_layer(f"block{i}").mixer_kind for i in range(3)] == kinds

    def test_max_only_model_ignores_head_divisibility(self):
        assert vit.ViT(**{**SMALL, "num_heads": 3}, mixers="max").output_shape == (None, 5)

    def test_feature_extraction_and_pooling(self):
        features = vit.ViT(**SMALL, include_top=False)
        assert features.output_shape == (None, 4, 4, 16)
        assert vit.ViT(**SMALL, include_top=False, pooling="avg").output_shape == (None, 16)
        assert vit.ViT(**SMALL, include_top=False, pooling="max").output_shape == (None, 16)

    def test_drop_path_rates_and_gradients(self):
        import tensorflow as tf

        model = vit.ViT(**{**SMALL, "depth": 3}, drop_path_rate=0.2, classifier_activation=None)
        assert [model.get_layer(f"block{i}").drop_path_rate for i in range(3)] == pytest.approx([0.0, 0.1, 0.2])
        x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x, training=True) ** 2)
        grads = tape.gradient(loss, model.trainable_weights)
        assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
        np.testing.assert_allclose(model(x, training=False), model(x, training=False))

    def test_include_preprocessing(self):
        model = randomised(vit.ViT(**SMALL, include_preprocessing=True))
        plain = vit.ViT(**SMALL)
        plain.set_weights(model.get_weights())
        x = np.random.default_rng(0).uniform(0, 255, size=(1, 32, 32, 3)).astype("float32")
        expected = plain.predict(pf_keras.preprocess_input(x), verbose=0)
        np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)

    def test_config_round_trip(self):
        model = vit.ViT(**SMALL, drop_path_rate=0.1)
        clone = keras.Model.from_config(model.get_config())
        assert clone.get_config() == model.get_config()


class TestViTValidation:
    @pytest.mark.parametrize(
        "kwargs,match",
        [
            (dict(input_shape=(None, 32, 3)), "known input size.*Received: input_shape=\\(None, 32, 3\\)"),
            (dict(input_shape=(None, None, 3)), "known input size.*Received: input_shape=\\(None, None, 3\\)"),
            (dict(input_shape=(32, 36, 3)), "multiples of patch_size=8.*e.g. 32. Received: "
             "input_shape=\\(32, 36, 3\\)"),
            (dict(input_shape=(36, 36, 3)), "multiples of patch_size=8.*e.g. 32. Received: "
             "input_shape=\\(36, 36, 3\\)"),
            (dict(input_shape=(4, 4, 3)), "at least 8 pixels.*Received: input_shape=\\(4, 4, 3\\)"),
            (dict(input_shape=(32, 32)), "\\(height, width, channels\\). Received: input_shape=\\(32, 32\\)"),
            (dict(num_heads=3), "divisible by `num_heads`.*Received: hidden_dim=16, num_heads=3"),
            (dict(hidden_dim=0), "positive int. Received: hidden_dim=0"),
            (dict(depth=2.5), "positive int. Received: depth=2.5"),
            (dict(mlp_ratio=0), "at least 1 MLP unit. Received: mlp_ratio=0"),
            (dict(drop_path_rate=1.0), "\\[0, 1\\). Received: drop_path_rate=1.0"),
            (dict(mixers="conv"), "`mixers` must be a pattern.*Received: mixers='conv'"),
            (dict(mixers=["max"]), "needs 2 entries.*Received: mixers=\\['max'\\]"),
            (dict(weights="imagenet"), "published configurations.*Received: weights='imagenet'"),
            (dict(pooling="avg"), "pass include_top=False.*Received: pooling='avg', include_top=True"),
        ],
    )
    def test_invalid_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            vit.ViT(**{**SMALL, **kwargs})

    def test_imagenet_needs_a_published_checkpoint(self):
        with pytest.raises(ValueError, match="published no ImageNet checkpoint for 'vit_ti_max'.*weights='imagenet'"):
            pf_keras.PfViT("ti", weights="imagenet")

    def test_unknown_names(self):
        with pytest.raises(ValueError, match="`variant` must be one of \\['b', 's', 'ti'\\]. Received: variant='l'"):
            pf_keras.PfViT("l")
        with pytest.raises(ValueError, match="Unknown model name.*'vit_s_max'.*Received: name='vit_l_max'"):
            pf_keras.create_model("vit_l_max")

    def test_wrongly_sized_input_at_call_time(self):
        model = vit.ViT(**SMALL)
        with pytest.raises(ValueError, match="(?i)incompatible|expected shape"):
            model(np.zeros((1, 48, 48, 3), "float32"))
