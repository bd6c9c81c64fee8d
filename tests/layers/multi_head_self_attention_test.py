"""Tests of pf_keras/layers/multi_head_self_attention.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pf_keras.layers.multi_head_self_attention import MultiHeadSelfAttention


def reference(layer: MultiHeadSelfAttention, x: np.ndarray) -> np.ndarray:
    """timm's Attention: qkv outputs laid out as (3, heads, head_dim)."""
    wqkv, bqkv, wp, bp = (keras.ops.convert_to_numpy(v) for v in layer.weights)
    b, n, c = x.shape
    heads = layer.num_heads
    qkv = (x @ wqkv + bqkv).reshape(b, n, 3, heads, c // heads).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = q @ k.transpose(0, 1, 3, 2) * (c // heads) ** -0.5
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return (weights @ v).transpose(0, 2, 1, 3).reshape(b, n, c) @ wp + bp


class TestMultiHeadSelfAttention:
    def test_matches_fused_qkv_reference(self):
        x = np.random.default_rng(0).normal(size=(2, 7, 12)).astype("float32")
        layer = MultiHeadSelfAttention(num_heads=3)
        layer.build(x.shape)
        rng = np.random.default_rng(1)
        for w in layer.weights:
            w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
        np.testing.assert_allclose(layer(x), reference(layer, x), atol=1e-5)

    def test_map_input_attends_over_all_positions(self):
        grid = np.random.default_rng(2).normal(size=(2, 3, 5, 8)).astype("float32")
        layer = MultiHeadSelfAttention(num_heads=2)
        out = layer(grid)
        assert out.shape == grid.shape
        np.testing.assert_allclose(
            keras.ops.reshape(out, (2, 15, 8)), layer(grid.reshape(2, 15, 8)), atol=1e-6
        )

    def test_dynamic_sizes(self):
        inputs = keras.Input((None, None, 8))
        model = keras.Model(inputs, MultiHeadSelfAttention(num_heads=4)(inputs))
        assert model.predict(np.ones((1, 2, 3, 8), "float32"), verbose=0).shape == (1, 2, 3, 8)

    def test_weight_paths_and_macs(self):
        layer = MultiHeadSelfAttention(num_heads=2, name="attn")
        layer.build((None, 16, 8))
        paths = [v.path for v in layer.weights]
        assert paths == ["attn/qkv/kernel", "attn/qkv/bias", "attn/proj/kernel", "attn/proj/bias"]
        assert layer.count_macs((None, 16, 8)) == 16 * 8 * 24 + 16 * 8 * 8
        assert MultiHeadSelfAttention.attention_macs((None, 16, 8)) == 2 * 16 * 16 * 8

    def test_config_round_trip(self):
        layer = MultiHeadSelfAttention(num_heads=4, use_bias=False, dropout_rate=0.2, name="a")
        clone = MultiHeadSelfAttention.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()

    def test_channels_not_divisible_by_heads(self):
        with pytest.raises(ValueError, match="multiple of num_heads=3. Received: channels=8"):
            MultiHeadSelfAttention(num_heads=3).build((None, 4, 8))

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            (dict(num_heads=0), "positive int. Received: num_heads=0"),
            (dict(num_heads=2, dropout_rate=-0.1), r"\[0, 1\). Received: dropout_rate=-0.1"),
        ],
    )
    def test_invalid_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            MultiHeadSelfAttention(**kwargs)

    def test_invalid_rank(self):
        with pytest.raises(ValueError, match="Received: input_shape=\\(4, 8\\)"):
            MultiHeadSelfAttention(num_heads=2).build((4, 8))
