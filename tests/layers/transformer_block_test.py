"""Tests of pf_keras/layers/transformer_block.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pf_keras.layers.max_pool_token_mixer import MaxPoolTokenMixer
from pf_keras.layers.multi_head_self_attention import MultiHeadSelfAttention
from pf_keras.layers.transformer_block import TransformerBlock


def _layer_norm(x, gamma, beta, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + eps) * gamma + beta


class TestTransformerBlock:
    @pytest.mark.parametrize("mixer", ["attention", "max"])
    def test_pre_norm_residual_structure(self, mixer):
        x = np.random.default_rng(0).normal(size=(2, 9, 8)).astype("float32")
        block = TransformerBlock(num_heads=2, mixer=mixer)
        block.build(x.shape)
        rng = np.random.default_rng(1)
        for w in block.weights:
            w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
        n1 = [keras.ops.convert_to_numpy(v) for v in block.norm1.weights]
        n2 = [keras.ops.convert_to_numpy(v) for v in block.norm2.weights]
        h = x + keras.ops.convert_to_numpy(block.mixer(_layer_norm(x, *n1).astype("float32")))
        hidden = keras.ops.convert_to_numpy(block.mlp_fc1(_layer_norm(h, *n2).astype("float32")))
        hidden = keras.ops.convert_to_numpy(keras.activations.gelu(hidden, approximate=False))
        expected = h + keras.ops.convert_to_numpy(block.mlp_fc2(hidden))
        np.testing.assert_allclose(block(x), expected, atol=1e-5)
        assert isinstance(block.mixer, MultiHeadSelfAttention if mixer == "attention" else MaxPoolTokenMixer)
        assert block.norm1.epsilon == block.norm2.epsilon == 1e-6

    def test_weight_paths(self):
        block = TransformerBlock(num_heads=2, mixer="max", name="block1")
        block.build((None, 4, 8))
        assert sorted({v.path.rsplit("/", 1)[0] for v in block.weights}) == [
            "block1/mixer/expand",
            "block1/mixer/proj",
            "block1/mlp_fc1",
            "block1/mlp_fc2",
            "block1/norm1",
            "block1/norm2",
        ]

    def test_drop_path_is_random_only_in_training(self):
        block = TransformerBlock(num_heads=1, drop_path_rate=0.5)
        x = np.random.default_rng(0).normal(size=(16, 4, 4)).astype("float32")
        np.testing.assert_allclose(block(x, training=False), block(x, training=False))
        assert not np.allclose(block(x, training=True), block(x, training=False))

    def test_count_macs(self):
        block = TransformerBlock(num_heads=2, mixer="max", mlp_ratio=2)
        block.build((None, 4, 8))
        assert block.count_macs((None, 4, 8)) == 2 * 4 * 8 * 24 + 2 * 4 * 8 * 16

    @pytest.mark.parametrize("mixer", ["attention", "max"])
    def test_config_round_trip(self, mixer):
        block = TransformerBlock(
            num_heads=3, mixer=mixer, mlp_ratio=2.0, drop_path_rate=0.1, dropout_rate=0.1, grid_size=(2, 5)
        )
        clone = TransformerBlock.from_config(block.get_config())
        assert clone.get_config() == block.get_config()

    def test_grid_size_reaches_the_max_mixer(self):
        """Tokens of a non-square grid give the same numbers as the map they come from."""
        x = np.random.default_rng(2).normal(size=(2, 2, 5, 8)).astype("float32")
        block = TransformerBlock(num_heads=2, mixer="max", grid_size=(2, 5))
        tokens = block(x.reshape(2, 10, 8))
        assert block.mixer.token_grid == (2, 5)
        np.testing.assert_allclose(tokens, keras.ops.reshape(block(x), (2, 10, 8)), atol=1e-5)

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            (dict(mixer="conv"), "one of \\('attention', 'max'\\). Received: mixer='conv'"),
            (dict(mlp_ratio=0), "positive. Received: mlp_ratio=0"),
            (dict(dropout_rate=2.0), "Received: dropout_rate=2.0"),
            (dict(drop_path_rate=1.0), "Received: rate=1.0"),
        ],
    )
    def test_invalid_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            TransformerBlock(num_heads=2, **kwargs)
