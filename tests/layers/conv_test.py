"""Tests of pf_keras/layers/conv.py: a 1x1 output map trains as a matmul equal to Keras' Conv2D."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from pf_keras.layers.conv import Conv2D, single_window_taps

# (input side, kernel, strides, padding): every way a conv's output map can be 1x1, and more.
SINGLE_WINDOW = [
    ((1, 1), 1, 1, "valid"),  # a ResNet's last stage at 32x32: 1x1 conv on a 1x1 map
    ((2, 2), 1, 2, "valid"),  # its downsampling shortcut
    ((1, 1), 3, 1, "same"),  # 3x3 with padding 1 on a 1x1 map: the centre tap
    ((4, 4), 3, 2, "valid"),  # the strided 3x3 after an explicit 1-pixel pad of a 2x2 map
    ((2, 2), 3, 2, "same"),  # TensorFlow's "same" at stride 2 pads (0, 1)
    ((3, 3), 3, 1, "valid"),  # one full window
    ((1, 5), (1, 5), 1, "valid"),  # non-square
    ((2, 3), (3, 5), (2, 3), "same"),
]


def pair(kernel_size, strides, padding, channels=6, filters=5, **kwargs):
    """(Keras Conv2D, pf_keras Conv2D) with the same random weights."""
    rng = np.random.default_rng(0)
    layers = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, **kwargs), Conv2D(
        filters, kernel_size, strides=strides, padding=padding, **kwargs)
    for layer in layers:
        layer.build((None, 8, 8, channels))
    for a, b in zip(*(layer.weights for layer in layers), strict=True):
        value = rng.normal(size=a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return layers


def forward_backward(layer, x, g, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(y * g)
    return [y, *tape.gradient(loss, [x, *layer.trainable_weights])]


def graph_ops(layer, x, training) -> set[str]:
    fn = tf.function(lambda v: forward_backward(layer, v, tf.ones_like(layer(v, training=training)), training))
    return {op.type for op in fn.get_concrete_function(tf.TensorSpec(x.shape, x.dtype)).graph.get_operations()}


class TestSingleWindowConv:
    @pytest.mark.parametrize(("side", "kernel", "strides", "padding"), SINGLE_WINDOW)
    @pytest.mark.parametrize("use_bias", [False, True])
    def test_training_step_equals_keras_and_uses_a_matmul(self, side, kernel, strides, padding, use_bias):
        x = tf.constant(np.random.default_rng(1).normal(size=(3, *side, 6)).astype("float32"))
        keras_conv, conv = pair(kernel, strides, padding, use_bias=use_bias, activation="relu")
        expected = keras_conv(x)
        assert tuple(expected.shape[1:3]) == (1, 1)
        g = tf.constant(np.random.default_rng(2).normal(size=expected.shape).astype("float32"))
        want = forward_backward(keras_conv, x, g, True)
        got = forward_backward(conv, x, g, True)
        assert len(got) == len(want) == (4 if use_bias else 3)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        ops = graph_ops(conv, x, True)
        assert "MatMul" in ops and not any(op.startswith("Conv2D") for op in ops), sorted(ops)

    def test_taps_outside_the_input_get_a_zero_gradient(self):
        x = tf.constant(np.random.default_rng(3).normal(size=(2, 1, 1, 6)).astype("float32"))
        _, conv = pair(3, 1, "same")
        kernel_grad = forward_backward(conv, x, tf.ones((2, 1, 1, 5)), True)[2].numpy()
        centre = np.zeros((3, 3), bool)
        centre[1, 1] = True
        assert np.all(kernel_grad[~centre] == 0) and np.all(kernel_grad[1, 1] != 0)

    @pytest.mark.parametrize(("side", "kernel", "strides", "padding"), [
        ((2, 2), 1, 1, "valid"), ((4, 4), 3, 1, "same"), ((5, 5), 3, 2, "valid"), ((1, 1), 3, 1, "same")])
    def test_other_maps_and_inference_are_the_keras_code(self, side, kernel, strides, padding):
        x = tf.constant(np.random.default_rng(4).normal(size=(2, *side, 6)).astype("float32"))
        keras_conv, conv = pair(kernel, strides, padding)
        for training in (False, True):
            single = tuple(keras_conv(x).shape[1:3]) == (1, 1)
            if training and single:
                continue  # the matmul path, tested above
            np.testing.assert_array_equal(conv(x, training=training), keras_conv(x))
            assert not {"MatMul"} & graph_ops(conv, x, training)

    def test_dilation_and_groups_fall_back(self):
        x = tf.constant(np.random.default_rng(5).normal(size=(2, 1, 1, 6)).astype("float32"))
        for kwargs in ({"dilation_rate": 2}, {"groups": 2}):
            keras_conv, conv = pair(3, 1, "same", filters=4, **kwargs)
            np.testing.assert_array_equal(conv(x, training=True), keras_conv(x))

    def test_mixed_precision_and_xla(self):
        x = tf.constant(np.random.default_rng(6).normal(size=(2, 2, 2, 6)).astype("float32"))
        keras_conv, conv = pair(3, 2, "same")
        expected = keras_conv(x)
        xla = tf.function(lambda v: conv(v, training=True), jit_compile=True)
        np.testing.assert_allclose(xla(x), expected, rtol=1e-5, atol=1e-5)
        half = Conv2D(4, 1, dtype="mixed_bfloat16")
        out = half(x, training=True)
        assert out.dtype == tf.bfloat16 and half.kernel.dtype == "float32"

    def test_single_window_taps(self):
        assert single_window_taps(1, 3, 1, "same") == (1, 2)
        assert single_window_taps(2, 3, 2, "same") == (0, 2)
        assert single_window_taps(4, 3, 2, "valid") == (0, 3)
        assert single_window_taps(2, 1, 2, "valid") == (0, 1)
        assert single_window_taps(5, 3, 2, "valid") is None  # two output positions
        assert single_window_taps(2, 3, 1, "valid") is None  # input smaller than a "valid" window
        assert single_window_taps(3, 3, 2, "same") is None

    def test_config_round_trip_and_save_load(self, tmp_path):
        layer = Conv2D(4, 3, padding="same", use_bias=False, name="conv")
        assert Conv2D.from_config(layer.get_config()).get_config() == layer.get_config()
        assert keras.saving.get_registered_name(Conv2D) == "pf_keras>Conv2D"
        inputs = keras.Input((1, 1, 6))
        model = keras.Model(inputs, layer(inputs))
        model.save(tmp_path / "m.keras")
        restored = keras.saving.load_model(tmp_path / "m.keras")
        assert isinstance(restored.get_layer("conv"), Conv2D)
        x = np.ones((2, 1, 1, 6), "float32")
        np.testing.assert_array_equal(restored(x), model(x))


def test_resnet_last_stage_at_32x32_trains_by_matmul_with_keras_gradients():
    """A small ResNet at 32x32 (1x1 maps in its last stage): same loss and gradients as with Keras' Conv2D."""
    import pf_keras

    model = pf_keras.create_model("resnet50_hybrid", depths=(1, 1, 1, 1), width_mult=0.125, classes=10,
                                  input_shape=(32, 32, 3), weights=None, classifier_activation=None)

    def plain(layer):
        if type(layer) is Conv2D:
            return keras.layers.Conv2D.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    reference = keras.models.clone_model(model, clone_function=plain)
    reference.set_weights(model.get_weights())
    single = [layer.name for layer in model.layers if type(layer) is Conv2D and layer.output.shape[1:3] == (1, 1)]
    assert sorted(single) == ["stage4_block1_expand_conv", "stage4_block1_shortcut_conv", "stage4_block1_spatial_conv"]
    x = tf.constant(np.random.default_rng(7).normal(size=(4, 32, 32, 3)).astype("float32"))
    graph = tf.function(lambda v: model(v, training=True)).get_concrete_function(x).graph
    # Name scopes of the MatMul ops, without TensorFlow's "_1" uniquifying suffixes.
    matmuls = {re.sub(r"_\d+$", "", part) for op in graph.get_operations() if op.type == "MatMul"
               for part in op.name.split("/")}
    assert set(single) <= matmuls, sorted(matmuls)
    labels = tf.constant([1, 3, 5, 7])
    results = []
    for m in (model, reference):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, m(x, training=True)))
        results.append((loss, tape.gradient(loss, m.trainable_weights)))
    (loss, grads), (want_loss, want_grads) = results
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    for a, b, w in zip(grads, want_grads, model.trainable_weights, strict=True):
        scale = float(tf.reduce_max(tf.abs(b)))
        assert scale > 0 and float(tf.reduce_max(tf.abs(a - b))) <= 1e-5 * scale, w.path  # float rounding only
