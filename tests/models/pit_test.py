"""Tests of pf_keras/models/pit.py: parity with the official code, resizing, export, API, validation."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import load_fixture, load_published_manifest, nchw_to_nhwc, randomised, state_dict_of
from litert_utils import convert_to_tflite, non_builtin_ops, op_names, run_tflite
from torch_save_writer import save_state_dict

import pf_keras
from pf_keras import convert
from pf_keras.models import pit
from pf_keras.weights import plan_torch_transfer

# (params, GMACs) of the published models: the paper's numbers, from their specs.
PUBLISHED = {n: (s.params, s.macs_g) for n, s in pf_keras.SPECS.items() if s.family == "pit"}
SMALL = dict(head_dims=(4, 4), depths=(2, 1), num_heads=(1, 2), image_size=64, classes=5)


def _fixture_model(**kwargs) -> tuple[keras.Model, dict]:
    """The ``pit_max_small`` configuration with the fixture's weights, and the fixture arrays."""
    meta, arrays = load_fixture("pit_max_small")
    kw = meta["torch_kwargs"]
    kwargs.setdefault("input_shape", (kw["image_size"], kw["image_size"], 3))
    model = pf_keras.create_model(
        "pit_s_max",
        patch_size=kw["patch_size"],
        stride=kw["stride"],
        head_dims=tuple(kw["base_dims"]),
        depths=tuple(kw["depth"]),
        num_heads=tuple(kw["heads"]),
        mlp_ratio=kw["mlp_ratio"],
        image_size=kw["image_size"],
        classes=kw["num_classes"],
        classifier_activation=None,
        **kwargs,
    )
    if kwargs.get("weights") is None:
        for variable, value in plan_torch_transfer(model, state_dict_of(arrays), pit._torch_name):
            variable.assign(value)
    return model, {"meta": meta, **arrays}



class TestPiTParity:
    def test_logits_and_every_stage_and_pool_match_reference(self):
        model, arrays = _fixture_model()
        depths = arrays["meta"]["torch_kwargs"]["depth"]
        stages = pit.stage_output_names(model)
        assert stages == [f"stage{s}_block{d - 1}" for s, d in enumerate(depths)]
        taps = {"patch_embed": "patch_embed", "pools.0": "pool0", "pools.1": "pool1"}
        taps.update({f"transformers.{s}": name for s, name in enumerate(stages)})
        probe = keras.Model(model.input, [model.output] + [model.get_layer(n).output for n in taps.values()])
        outputs = probe.predict(nchw_to_nhwc(arrays["x"]), verbose=0)
        np.testing.assert_allclose(outputs[0], arrays["logits"], atol=1e-4, rtol=0)
        for module, out in zip(taps, outputs[1:], strict=True):
            np.testing.assert_allclose(out, nchw_to_nhwc(arrays[f"act/{module}"]), atol=1e-4, rtol=0, err_msg=module)
        assert pf_keras.profile(model).params == arrays["meta"]["params_trainable"]

    def test_unknown_input_size_reproduces_reference(self):
        model, arrays = _fixture_model(input_shape=(None, None, 3))
        logits = model.predict(nchw_to_nhwc(arrays["x"]), verbose=0)
        np.testing.assert_allclose(logits, arrays["logits"], atol=1e-4, rtol=0)

    def test_other_sizes_resize_the_position_embedding(self):
        static, _ = _fixture_model(input_shape=(80, 72, 3))
        dynamic, _ = _fixture_model(input_shape=(None, None, 3))
        x = np.random.default_rng(0).normal(size=(2, 80, 72, 3)).astype("float32")
        np.testing.assert_allclose(dynamic.predict(x, verbose=0), static.predict(x, verbose=0), atol=1e-5)
        assert static.get_layer("pos_embed").embedding.shape == (1, 7, 7, 8)
        assert static.get_layer("patch_embed").output.shape == (None, 9, 8, 8)

    def test_convert_then_load_keras_weights(self, tmp_path):
        _, arrays = _fixture_model()
        checkpoint = str(tmp_path / "pit_max_small.pth")
        save_state_dict(checkpoint, state_dict_of(arrays))
        output = str(tmp_path / "pit_max_small.weights.h5")
        model_kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in _small_fixture_kwargs().items()}
        convert.convert("pit_s_max", checkpoint, output, model_kwargs=model_kwargs)
        keras.utils.clear_session()
        model = pf_keras.create_model("pit_s_max", weights=output, **model_kwargs)
        np.testing.assert_allclose(model.predict(nchw_to_nhwc(arrays["x"]), verbose=0), arrays["logits"], atol=1e-4)

    def test_headless_model_accepts_checkpoint_with_head(self, tmp_path):
        _, arrays = _fixture_model()
        checkpoint = str(tmp_path / "pit_max_small.pth")
        save_state_dict(checkpoint, state_dict_of(arrays), wrap_key="state_dict")
        kwargs = {**_small_fixture_kwargs(), "include_top": False, "pooling": "avg", "input_shape": (None, None, 3)}
        features = pit.PiT(**kwargs, weights=checkpoint).predict(nchw_to_nhwc(arrays["x"]), verbose=0)
        state = state_dict_of(arrays)
        np.testing.assert_allclose(features @ state["head.weight"].T + state["head.bias"], arrays["logits"], atol=1e-4)

    def test_weights_argument_takes_converted_keras_weights(self, tmp_path):
        model, arrays = _fixture_model()
        model.save_weights(tmp_path / "pit.weights.h5")
        keras.utils.clear_session()
        reloaded = pit.PiT(**_small_fixture_kwargs(), weights=str(tmp_path / "pit.weights.h5"))
        logits = reloaded.predict(nchw_to_nhwc(arrays["x"]), verbose=0)
        np.testing.assert_allclose(logits, arrays["logits"], atol=1e-4, rtol=0)

    def test_wrong_keys_and_shapes_are_named(self):
        model, arrays = _fixture_model()
        state = state_dict_of(arrays)
        del state["pools.1.conv.bias"]
        state["pos_embed"] = np.zeros((1, 6, 9, 9), np.float32)  # another width (another grid is resampled)
        with pytest.raises(ValueError, match="1 missing keys \\['pools.1.conv.bias'\\]") as error:
            plan_torch_transfer(model, state, pit._torch_name)
        assert "pos_embed: checkpoint (1, 6, 9, 9) vs model (1, 8, 7, 7)" in str(error.value)


def _small_fixture_kwargs() -> dict:
    return dict(patch_size=16, stride=8, head_dims=(8, 8, 8), depths=(2, 2, 2), num_heads=(1, 2, 4), image_size=64,
                classes=10, classifier_activation=None)


@pytest.mark.large
class TestPublishedPiTs:
    @pytest.mark.parametrize("name", sorted(PUBLISHED))
    def test_manifest_keys_shapes_params_and_macs(self, name):
        manifest = load_published_manifest(name)
        model = pf_keras.create_model(name)
        zeros = {k: np.zeros(shape, np.float32) for k, shape in manifest["state_dict"].items()}
        plan = plan_torch_transfer(model, zeros, pit._torch_name)
        assert len(plan) == len(model.weights) == len(manifest["state_dict"])
        for module, shape in manifest["activations"].items():
            if module.startswith("pools"):
                assert model.get_layer(module.replace("pools.", "pool")).output.shape[1:] == (*shape[2:], shape[1])
        params, gmacs = PUBLISHED[name]
        result = pf_keras.profile(model)
        assert result.params == params == manifest["params_trainable"]
        assert abs(result.macs / 1e9 - gmacs) / gmacs <= 0.01


class TestPiTExport:
    def test_keras_round_trip_and_saved_model_reproduce_outputs(self, tmp_path):
        import tensorflow as tf

        model = randomised(pf_keras.PfPiT("ti", drop_path_rate=0.1, input_shape=(None, None, 3), **SMALL))
        x = np.random.default_rng(1).normal(size=(2, 72, 56, 3)).astype("float32")
        expected = model(x, training=False).numpy()  # eager calls: no predict function traced per model
        model.save(tmp_path / "m.keras")
        restored = keras.saving.load_model(tmp_path / "m.keras")
        np.testing.assert_allclose(restored(x, training=False).numpy(), expected, atol=1e-6)
        model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
        loaded = tf.saved_model.load(str(tmp_path / "sm"))  # keep a reference: it owns the variables
        np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), expected, atol=1e-5)

    def test_tflite_builtin_ops_only_and_same_outputs(self, tmp_path):
        model, arrays = _fixture_model()
        x = nchw_to_nhwc(arrays["x"])
        blob = convert_to_tflite(model, str(tmp_path))
        assert non_builtin_ops(blob) == []
        assert {"GELU", "MAX_POOL_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL"} <= set(op_names(blob))
        output, _ = run_tflite(blob, x)
        np.testing.assert_allclose(output, arrays["logits"], atol=1e-4, rtol=0)

    def test_tflite_any_input_size(self, tmp_path):
        """Unknown sizes: the PyTorch-bicubic resize runs inside the TFLite graph (builtin ops)."""
        model, arrays = _fixture_model(input_shape=(None, None, 3))
        blob = convert_to_tflite(model, str(tmp_path))
        assert non_builtin_ops(blob) == []
        assert {"ONE_HOT", "RANGE"} <= set(op_names(blob))
        output, _ = run_tflite(blob, nchw_to_nhwc(arrays["x"]))
        np.testing.assert_allclose(output, arrays["logits"], atol=1e-4, rtol=0)
        x = np.random.default_rng(0).normal(size=(1, 80, 72, 3)).astype("float32")
        np.testing.assert_allclose(run_tflite(blob, x)[0], model.predict(x, verbose=0), atol=1e-4, rtol=0)

    def test_tflite_resized_embedding_one_xnnpack_partition(self, tmp_path):
        model, _ = _fixture_model(input_shape=(80, 72, 3))
        x = np.random.default_rng(0).normal(size=(1, 80, 72, 3)).astype("float32")
        blob = convert_to_tflite(model, str(tmp_path), batch_size=1)
        assert non_builtin_ops(blob) == []
        assert not {"ONE_HOT", "RANGE", "SHAPE"} & set(op_names(blob))  # the resize is constant-folded
        output, delegate_nodes = run_tflite(blob, x)
        assert delegate_nodes == 1
        np.testing.assert_allclose(output, model.predict(x, verbose=0), atol=1e-4, rtol=0)


class TestPiTBuilder:
    def test_pf_pit_variants_and_registry(self):
        assert pf_keras.PfPiT(**SMALL).name == "pit_s_max"
        for name in PUBLISHED:
            assert name in pf_keras.list_models()
        model = pf_keras.create_model("pit_b_max", **SMALL)
        assert model.name == "pit_b_max" and model.get_layer("patch_embed").kernel.shape == (14, 14, 3, 4)

    def test_mixers_restart_in_every_stage(self):
        model = pit.PiT(**{**SMALL, "depths": (3, 2)})
        kinds = [model.get_layer(f"stage{s}_block{b}").mixer_kind for s, d in enumerate((3, 2)) for b in range(d)]
        assert kinds == ["attention", "max", "attention", "attention", "max"]
        model = pit.PiT(**SMALL, mixers=["max", ["attention"]])
        assert [model.get_layer(n).mixer_kind for n in ("stage0_block0", "stage0_block1", "stage1_block0")] == [
            "max",
            "max",
            "attention",
        ]

    def test_pooling_multiplies_channels_with_pytorch_padding(self):
        model = pit.PiT(**{**SMALL, "head_dims": (4, 6)}, input_shape=(64, 64, 3))  # 4 -> 12 channels: x3
        assert model.get_layer("pool0").depth_multiplier == 3
        assert model.get_layer("pool0").output.shape == (None, 4, 4, 12)  # 7 -> 4 with pad 1 on both sides

    def test_feature_extraction_and_pooling(self):
        assert pit.PiT(**SMALL, include_top=False).output_shape == (None, None, None, 8)
        assert pit.PiT(**SMALL, include_top=False, pooling="avg").output_shape == (None, 8)

    def test_drop_path_rates_follow_reference_rule(self):
        import tensorflow as tf

        model = pit.PiT(**SMALL, drop_path_rate=0.3, input_shape=(64, 64, 3), classifier_activation=None)
        rates = [model.get_layer(n).drop_path_rate for n in ("stage0_block0", "stage0_block1", "stage1_block0")]
        assert rates == pytest.approx([0.0, 0.1, 0.2])  # rate * i / total_blocks
        x = np.random.default_rng(0).normal(size=(4, 64, 64, 3)).astype("float32")
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x, training=True) ** 2)
        grads = tape.gradient(loss, model.trainable_weights)
        assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)

    def test_config_round_trip(self):
        model = pit.PiT(**SMALL)
        clone = keras.Model.from_config(model.get_config())
        assert clone.get_config() == model.get_config()


class TestPiTValidation:
    @pytest.mark.parametrize(
        "kwargs,match",
        [
            (dict(depths=(2, 1, 1)), "one entry per stage each.*Received: head_dims=\\(4, 4\\), depths=\\(2, 1, 1\\)"),
            (dict(head_dims=(4, 0)), "positive ints, one per stage. Received: head_dims=\\(4, 0\\)"),
            (dict(num_heads=(2, 3)), "multiple of the previous stage's.*Received: channels=\\[8, 12\\]"),
            (dict(stride=0), "positive int. Received: stride=0"),
            (dict(image_size=8), "at least patch_size=16. Received: image_size=8"),
            (dict(input_shape=(8, 64, 3)), "at least 16 pixels.*Received: input_shape=\\(8, 64, 3\\)"),
            (dict(mixers=["max"]), "one entry per stage \\(2\\). Received: mixers=\\['max'\\]"),
            (dict(mixers="conv"), "`mixers` must be a pattern.*Received: mixers='conv'"),
            (dict(drop_path_rate=-0.1), "\\[0, 1\\). Received: drop_path_rate=-0.1"),
            (dict(weights="imagenet"), "published configurations.*Received: weights='imagenet'"),
        ],
    )
    def test_invalid_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            pit.PiT(**{**SMALL, **kwargs})

    def test_unknown_names(self):
        with pytest.raises(ValueError, match="`variant` must be one of \\['b', 's', 'ti'\\]. Received: variant='xs'"):
            pf_keras.PfPiT("xs")
        with pytest.raises(ValueError, match="Unknown model name.*'pit_s_max'.*Received: name='pit_xs_max'"):
            pf_keras.create_model("pit_xs_max")
