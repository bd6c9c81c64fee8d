"""Tests of pf_keras/layers/batch_norm.py: the fused training step equals Keras's BatchNormalization."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pf_keras.layers.batch_norm import BatchNormalization as FusedBatchNormalization


def pair(**kwargs):
    """(Keras BN, fused BN) built alike with the same random weights and statistics."""
    rng = np.random.default_rng(0)
    keras_bn, fused_bn = keras.layers.BatchNormalization(**kwargs), FusedBatchNormalization(**kwargs)
    for layer in (keras_bn, fused_bn):
        layer.build((None, 5, 6, 8))
    for a, b in zip(keras_bn.weights, fused_bn.weights, strict=True):
        value = rng.uniform(0.5, 1.5, a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return keras_bn, fused_bn


class TestFusedBatchNormalization:
    def test_training_step_matches_keras(self):
        x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, (4, 5, 6, 8)).astype("float32"))
        g = tf.constant(np.random.default_rng(2).normal(size=(4, 5, 6, 8)).astype("float32"))
        keras_bn, fused_bn = pair(momentum=0.9, epsilon=1e-5)
        initial_variance = fused_bn.moving_variance.numpy()
        results = []
        for layer in (keras_bn, fused_bn):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(y * g)
            grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
            results.append((y, grads, layer.moving_mean.numpy(), layer.moving_variance.numpy()))
        (y0, g0, m0, v0), (y1, g1, m1, v1) = results
        np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=2e-5)
        for a, b in zip(g1, g0, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(m1, m0, rtol=1e-6)
        # The moving variance averages the unbiased batch variance, as PyTorch does (Keras: the biased one).
        unbiased = x.numpy().reshape(-1, 8).astype("float64").var(axis=0, ddof=1)
        np.testing.assert_allclose(v1, 0.9 * initial_variance + 0.1 * unbiased, rtol=1e-5)
        assert not np.allclose(v1, v0, rtol=1e-4)  # differs from Keras' biased update by n / (n - 1)
        assert not np.allclose(m1, 1.0)  # the statistics moved

    def test_inference_is_the_keras_code(self):
        x = np.random.default_rng(3).normal(size=(2, 5, 6, 8)).astype("float32")
        keras_bn, fused_bn = pair()
        np.testing.assert_array_equal(fused_bn(x, training=False), keras_bn(x, training=False))

    def test_under_xla_and_mixed_precision(self):
        x = tf.constant(np.random.default_rng(4).normal(size=(2, 5, 6, 8)).astype("float32"))
        keras_bn, fused_bn = pair()
        expected = keras_bn(x, training=True)
        np.testing.assert_allclose(tf.function(lambda v: fused_bn(v, training=True), jit_compile=True)(x), expected,
                                   rtol=1e-5, atol=2e-5)
        half = FusedBatchNormalization(dtype="mixed_float16")
        out = half(tf.cast(x, "float16"), training=True)
        assert out.dtype == tf.float16 and half.moving_mean.dtype == "float32"

    @pytest.mark.parametrize("kwargs", [{"synchronized": True}, {"axis": 1}, {"renorm": True}])
    def test_other_settings_fall_back_to_keras(self, kwargs):
        x = np.random.default_rng(5).normal(size=(2, 5, 6, 8)).astype("float32")
        keras_bn, fused_bn = pair(**kwargs)
        np.testing.assert_array_equal(fused_bn(x, training=True), keras_bn(x, training=True))

    def test_config_round_trip_and_save_load(self, tmp_path):
        layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-5, name="bn")
        assert FusedBatchNormalization.from_config(layer.get_config()).get_config() == layer.get_config()
        inputs = keras.Input((5, 6, 8))
        model = keras.Model(inputs, layer(inputs))
        model.save(tmp_path / "m.keras")
        restored = keras.saving.load_model(tmp_path / "m.keras")
        assert isinstance(restored.get_layer("bn"), FusedBatchNormalization)


def test_resnet_configs_keep_the_keras_class_name():
    """Config edits by class name (train.py's SyncBN) still find the layers, and synchronized ones fall back."""
    from pf_keras.models import create_model

    model = create_model("resnet50", depths=[1, 1, 1, 1], width_mult=0.25, classes=4, input_shape=(32, 32, 3))
    config = model.get_config()
    bns = [layer for layer in config["layers"] if layer["class_name"] == "BatchNormalization"]
    assert len(bns) == sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) > 0
    for layer in bns:
        layer["config"]["synchronized"] = True
    synced = model.__class__.from_config(config)
    assert all(isinstance(layer, FusedBatchNormalization) and layer.synchronized
               for layer in synced.layers if isinstance(layer, keras.layers.BatchNormalization))
