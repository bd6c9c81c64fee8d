"""Tests of pf_keras/layers/max_pool.py: outputs bit-identical, gradients equal to the built-in ones."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from pf_keras.layers import max_pool
from pf_keras.layers.max_pool import MaxPool2D, max_pool_2d

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (pool_size, strides, padding, height, width): the ResNet pools (3x3 stride 1 "same"; stride 2
# "valid" on a zero-padded map, odd and even sides), a larger token-mixer window, and others.
CASES = [
    (3, 1, "same", 7, 9),
    (3, 2, "valid", 9, 9),
    (3, 2, "valid", 8, 10),
    (5, 1, "same", 6, 7),
    (2, 2, "valid", 7, 7),
    (3, 3, "valid", 9, 8),
    (1, 2, "valid", 5, 5),
]


def distinct_input(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(2, h, w, 3) with all values distinct (no ties), some negative (a zero border would win)."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(2 * height * width * 3).reshape(2, height, width, 3) - 40.0).astype("float32")


def upstream_like(y, seed: int = 1) -> np.ndarray:
    """Small-integer upstream gradients: every sum of them is exact in float32, in any order."""
    return np.random.default_rng(seed).integers(-4, 5, size=tuple(y.shape)).astype("float32")


def tf_gradients(x: np.ndarray, g: np.ndarray, pool_size: int, strides: int, padding: str):
    """(built-in output, built-in gradient, shifted output, shifted gradient) on TensorFlow."""
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        builtin = tf.nn.max_pool2d(x, pool_size, strides, padding.upper())
        shifted = max_pool_2d(x, pool_size=pool_size, strides=strides, padding=padding)
        builtin_loss, shifted_loss = tf.reduce_sum(builtin * g), tf.reduce_sum(shifted * g)
    return builtin, tape.gradient(builtin_loss, x), shifted, tape.gradient(shifted_loss, x)


def first_max_rule(x: np.ndarray, g: np.ndarray, pool_size: int, strides: int, padding: str) -> np.ndarray:
    """NumPy reference of the documented rule: each window's gradient to its first maximum, row-major."""
    if padding == "same":
        p = pool_size // 2
        x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-np.inf)
    grad = np.zeros_like(x)
    for n in range(g.shape[0]):
        for i in range(g.shape[1]):
            for j in range(g.shape[2]):
                for c in range(g.shape[3]):
                    window = x[n, i * strides : i * strides + pool_size, j * strides : j * strides + pool_size, c]
                    di, dj = np.unravel_index(np.argmax(window), window.shape)  # argmax: first maximum
                    grad[n, i * strides + di, j * strides + dj, c] += g[n, i, j, c]
    if padding == "same":
        p = pool_size // 2
        grad = grad[:, p:-p, p:-p, :]
    return grad


class TestMaxPool2dTensorFlow:
    @pytest.mark.parametrize("pool_size,strides,padding,height,width", CASES)
    def test_output_bit_identical_and_gradient_equal_without_ties(self, pool_size, strides, padding, height, width):
        x = distinct_input(height, width)
        g = upstream_like(tf.nn.max_pool2d(x, pool_size, strides, padding.upper()))
        builtin, builtin_grad, shifted, shifted_grad = tf_gradients(x, g, pool_size, strides, padding)
        np.testing.assert_array_equal(shifted, builtin)
        np.testing.assert_array_equal(shifted_grad, builtin_grad)
        assert np.count_nonzero(shifted_grad) > 0

    @pytest.mark.parametrize("pool_size,strides,padding", [(3, 1, "same"), (3, 2, "valid")])
    def test_ties_go_to_the_first_maximum_and_keep_the_gradient_mass(self, pool_size, strides, padding):
        x = np.random.default_rng(2).integers(0, 3, size=(2, 9, 9, 4)).astype("float32")  # many ties
        g = upstream_like(tf.nn.max_pool2d(x, pool_size, strides, padding.upper()), seed=3)
        builtin, builtin_grad, shifted, shifted_grad = tf_gradients(x, g, pool_size, strides, padding)
        np.testing.assert_array_equal(shifted, builtin)
        np.testing.assert_array_equal(shifted_grad, first_max_rule(x, g, pool_size, strides, padding))
        np.testing.assert_array_equal(shifted_grad, builtin_grad)  # TensorFlow's CPU kernel has the same rule
        assert float(np.sum(shifted_grad)) == float(np.sum(g))  # each window's gradient lands exactly once

    def test_under_xla(self):
        x = distinct_input(9, 9)
        g = upstream_like(tf.nn.max_pool2d(x, 3, 2, "VALID"))

        @tf.function(jit_compile=True)
        def grads(x):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(x)
                builtin = tf.reduce_sum(tf.nn.max_pool2d(x, 3, 2, "VALID") * g)
                shifted = tf.reduce_sum(max_pool_2d(x, pool_size=3, strides=2, padding="valid") * g)
            return tape.gradient(builtin, x), tape.gradient(shifted, x)

        builtin_grad, shifted_grad = grads(tf.constant(x))
        np.testing.assert_array_equal(shifted_grad, builtin_grad)

    def test_mixed_precision_dtypes(self):
        x = distinct_input(7, 7)
        for dtype in ("float16", "bfloat16"):
            xd = tf.cast(tf.constant(x / 64.0), dtype)  # distinct in both 16-bit formats
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(xd)
                builtin = tf.nn.max_pool2d(xd, 3, 1, "SAME")
                shifted = max_pool_2d(xd, pool_size=3, strides=1, padding="same")
            assert shifted.dtype == xd.dtype
            np.testing.assert_array_equal(tf.cast(shifted, "float32"), tf.cast(builtin, "float32"))
            np.testing.assert_array_equal(tf.cast(tape.gradient(shifted, xd), "float32"),
                                          tf.cast(tape.gradient(builtin, xd), "float32"))


class TestMaxPool2D:
    def test_layer_outputs_bit_identical_to_max_pooling_2d(self):
        x = distinct_input(8, 10)
        for gradient in max_pool.GRADIENTS:
            for args in ((3, 1, "same"), (3, 2, "valid")):
                ours = MaxPool2D(*args, gradient=gradient)(x)
                np.testing.assert_array_equal(ours, keras.layers.MaxPooling2D(*args)(x))

    def test_auto_picks_shifted_under_xla_only(self):
        seen = {}

        def probe(x, key):
            seen[key] = max_pool.shifted_gradient_is_faster()
            return x

        tf.function(lambda x: probe(x, "xla"), jit_compile=True)(tf.ones(1))
        tf.function(lambda x: probe(x, "graph"))(tf.ones(1))
        probe(tf.ones(1), "eager")
        assert seen == {"xla": True, "graph": False, "eager": False}

    def test_config_round_trip_and_save_load(self, tmp_path):
        layer = MaxPool2D(3, strides=2, padding="valid", gradient="shifted", name="pool")
        config = layer.get_config()
        assert config["gradient"] == "shifted" and config["pool_size"] == 3 and config["strides"] == 2
        assert MaxPool2D.from_config(config).get_config() == config
        inputs = keras.Input((9, 9, 3))
        model = keras.Model(inputs, MaxPool2D(3, strides=2, padding="valid", name="pool")(inputs))
        model.save(tmp_path / "m.keras")
        restored = keras.saving.load_model(tmp_path / "m.keras")
        assert isinstance(restored.get_layer("pool"), keras.layers.MaxPooling2D)
        x = distinct_input(9, 9)
        np.testing.assert_array_equal(restored(x), model(x))

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            ({"gradient": "fast"}, "`gradient` must be one of"),
            ({"strides": 2, "padding": "same"}, "'same' padding is supported with strides=1"),
            ({"pool_size": 4, "padding": "same"}, "'same' padding is supported with strides=1"),
            ({"padding": "causal"}, "`padding` must be 'valid' or 'same'"),
            ({"pool_size": (3, 2)}, "`pool_size` must be an int or a square pair"),
            ({"data_format": "channels_first"}, "channels_last only"),
        ],
    )
    def test_validation_errors(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            MaxPool2D(**kwargs)

    def test_models_use_it(self):
        from pf_keras.models import create_model

        model = create_model("resnet50_max", depths=[1, 1, 1, 1], width_mult=0.25, classes=4,
                             input_shape=(32, 32, 3))
        pools = [layer for layer in model.layers if isinstance(layer, MaxPool2D)]
        assert {p.strides[0] for p in pools} == {1, 2} and "stem_pool" in {p.name for p in pools}


_OTHER_BACKEND_CHECK = r"""
import json, sys
import numpy as np
import keras
from keras import ops
from pf_keras.layers.max_pool import max_pool_2d, MaxPool2D
backend = keras.backend.backend()
rng = np.random.default_rng(0)
results = []
for k, s, pad, ties in [(3, 1, "same", False), (3, 2, "valid", False), (3, 1, "same", True), (3, 2, "valid", True)]:
    x = (rng.integers(0, 3, size=(2, 9, 9, 4)) if ties else rng.permutation(648).reshape(2, 9, 9, 4) - 300.0)
    x = x.astype("float32")
    g = rng.integers(-4, 5, size=tuple(ops.max_pool(x, k, s, pad).shape)).astype("float32")
    if backend == "jax":
        import jax, jax.numpy as jnp
        grad = lambda f: np.asarray(jax.jit(jax.grad(lambda v: jnp.sum(f(v) * g)))(x))
    else:
        import torch
        def grad(f):
            v = torch.tensor(x, requires_grad=True)
            (f(v) * torch.tensor(g)).sum().backward()
            return v.grad.numpy()
    builtin = grad(lambda v: ops.max_pool(v, k, s, pad))
    shifted = grad(lambda v: max_pool_2d(v, pool_size=k, strides=s, padding=pad))
    same_out = np.array_equal(ops.convert_to_numpy(max_pool_2d(x, pool_size=k, strides=s, padding=pad)),
                              ops.convert_to_numpy(ops.max_pool(x, k, s, pad)))
    results.append({"case": [k, s, pad, ties], "output": same_out, "grad": bool(np.array_equal(builtin, shifted)),
                    "mass": float(shifted.sum()) == float(g.sum())})
layer = MaxPool2D(3, strides=2, padding="valid")
barrier = None
if backend == "jax":  # the window index is kept as a buffer, not fused and recomputed per read (GPU speed)
    import jax, jax.numpy as jnp
    x = np.ones((1, 9, 9, 2), "float32")
    barrier = "optimization_barrier" in str(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(layer(v))))(x))
print(json.dumps({"backend": backend, "results": results, "shape": list(layer(np.ones((1, 9, 9, 2))).shape),
                  "barrier": barrier}))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_cpu(backend):
    """Outputs bit-identical and gradients equal to the backend's own (ties included) on JAX and PyTorch."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed in this environment")
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _OTHER_BACKEND_CHECK], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == backend and report["shape"] == [1, 4, 4, 2]
    assert all(r["output"] and r["grad"] and r["mass"] for r in report["results"]), report
    assert report["barrier"] is (True if backend == "jax" else None)
