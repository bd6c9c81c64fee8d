"""Every pf_keras layer hands its dtype policy to all its sublayers, weightless ones included.

A sublayer created without the policy takes the *global* one when a saved model is loaded
in another process (float32 there), so a model saved under mixed precision would mix float16
and float32 tensors (``AddV2``) on load: the bug this file guards against.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pf_keras.layers import DropPath, MaxPoolTokenMixer, MultiHeadSelfAttention, PositionEmbedding, TransformerBlock

POLICIES = ["mixed_float16", "mixed_bfloat16"]
LAYERS = {
    "drop_path": lambda dtype: DropPath(0.1, dtype=dtype),
    "max_mixer": lambda dtype: MaxPoolTokenMixer(dropout_rate=0.1, dtype=dtype),
    "attention": lambda dtype: MultiHeadSelfAttention(2, dropout_rate=0.1, dtype=dtype),
    "position_embedding": lambda dtype: PositionEmbedding(dtype=dtype),
    "attention_block": lambda dtype: TransformerBlock(2, mixer="attention", drop_path_rate=0.1, dtype=dtype),
    "max_block": lambda dtype: TransformerBlock(2, mixer="max", drop_path_rate=0.1, dtype=dtype),
}


def _policies(layer: keras.layers.Layer) -> dict[str, str]:
    """Path -> dtype policy name of ``layer`` and every nested sublayer."""
    return {sub.path if hasattr(sub, "path") else sub.name: sub.dtype_policy.name for sub in layer._flatten_layers()}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_sublayers_share_the_policy_and_keep_it_through_config(kind, policy):
    layer = LAYERS[kind](policy)
    x = np.random.default_rng(0).normal(size=(2, 16, 8)).astype("float32")
    out = layer(x, training=True) if kind != "position_embedding" else layer(x)
    compute = keras.mixed_precision.DTypePolicy(policy).compute_dtype
    assert keras.backend.standardize_dtype(out.dtype) == compute
    policies = _policies(layer)
    assert len(policies) > 1 or kind in ("drop_path", "position_embedding")
    assert set(policies.values()) == {policy}, policies
    # What loading does in a fresh process: rebuild from the config under the global float32 policy.
    assert keras.config.dtype_policy().name == "float32"
    clone = layer.__class__.from_config(layer.get_config())
    clone.build(x.shape)
    assert set(_policies(clone).values()) == {policy}
    assert all(w.dtype == "float32" for w in clone.weights)  # variables stay float32 under mixed policies
