"""Every family under mixed precision saves as ``.keras`` and loads back in a fresh process (issue 10, item 7).

The fresh process matters: it has the default float32 global policy, so any sublayer that
did not take its layer's dtype policy would be rebuilt as float32 and meet float16 tensors
(the bug this guards against: ``TransformerBlock``'s DropPath and Dropout).
"""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import randomised

import pf_keras

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POLICIES = ("mixed_float16", "mixed_bfloat16")
# Tiny configurations with stochastic depth, so every weightless sublayer (DropPath, Dropout) is in the graph.
MODELS = {
    "resnet50_hybrid": dict(depths=(1, 1, 1, 1), width_mult=0.125, input_shape=(64, 64, 3), classes=5),
    "vit_s_max": dict(patch_size=8, hidden_dim=16, depth=2, num_heads=2, input_shape=(32, 48, 3), classes=5),
    "pit_s_max": dict(head_dims=(4, 4), depths=(2, 1), num_heads=(1, 2), input_shape=(64, 64, 3), classes=5),
}

# Runs in a new interpreter: load each file under the default (float32) global policy, predict, save.
LOADER = """
import sys
import keras
import numpy as np
import pf_keras  # registers the custom layers

assert keras.config.dtype_policy().name == "float32"
inputs = np.load(sys.argv[1])
outputs = {}
for key in inputs.files:
    model = keras.saving.load_model(f"{sys.argv[2]}/{key}.keras")
    outputs[key] = keras.ops.convert_to_numpy(keras.ops.cast(model(inputs[key], training=False), "float32"))
    outputs[key + "/policies"] = np.array(sorted({layer.dtype_policy.name for layer in model._flatten_layers()}))
np.savez(sys.argv[3], **outputs)
"""


def test_each_family_round_trips_under_both_policies(tmp_path):
    inputs, expected = {}, {}
    for policy in POLICIES:
        keras.config.set_dtype_policy(policy)
        try:
            for name, kwargs in MODELS.items():
                key = f"{name}-{policy}"
                model = pf_keras.create_model(name, drop_path_rate=0.1, **kwargs, classifier_activation=None)
                randomised(model)
                inputs[key] = np.random.default_rng(0).normal(size=(2, *kwargs["input_shape"])).astype("float32")
                output = model(inputs[key], training=False)
                assert keras.backend.standardize_dtype(output.dtype) == policy.split("_")[1]
                expected[key] = keras.ops.convert_to_numpy(keras.ops.cast(output, "float32"))
                model.save(tmp_path / f"{key}.keras")
        finally:
            keras.config.set_dtype_policy("float32")
    np.savez(tmp_path / "inputs.npz", **inputs)
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path / "inputs.npz"), str(tmp_path), str(tmp_path / "outputs.npz")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(tmp_path / "outputs.npz") as outputs:
        for key, want in expected.items():
            policy = key.split("-")[1]
            # Mixed layers (policy) plus the float32 input and the float32 layers Keras keeps (InputLayer).
            assert set(outputs[key + "/policies"]) <= {policy, "float32"} and policy in outputs[key + "/policies"]
            np.testing.assert_allclose(outputs[key], want, rtol=0, atol=1e-6 * max(1.0, np.abs(want).max()),
                                       err_msg=key)


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_outputs_track_float32(policy):
    """The mixed models compute the float32 model's function, to the rounding of their compute dtype."""
    name, kwargs = "vit_s_max", MODELS["vit_s_max"]
    reference = randomised(pf_keras.create_model(name, **kwargs, classifier_activation=None))
    keras.config.set_dtype_policy(policy)
    try:
        mixed = pf_keras.create_model(name, **kwargs, classifier_activation=None)
    finally:
        keras.config.set_dtype_policy("float32")
    mixed.set_weights(reference.get_weights())
    x = np.random.default_rng(0).normal(size=(2, *kwargs["input_shape"])).astype("float32")
    want = keras.ops.convert_to_numpy(reference(x))
    got = keras.ops.convert_to_numpy(keras.ops.cast(mixed(x), "float32"))
    tolerance = {"mixed_float16": 0.02, "mixed_bfloat16": 0.1}[policy] * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance)
