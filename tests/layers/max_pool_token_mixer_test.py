"""Tests of pf_keras/layers/max_pool_token_mixer.py."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from pf_keras.layers.max_pool_token_mixer import MaxPoolTokenMixer

_erf = np.vectorize(math.erf)


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def max_pool_3x3_ignoring_padding(x: np.ndarray) -> np.ndarray:
    """(b, h, w, c) -> same shape; the border is padded with -inf like PyTorch's MaxPool2d."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    h, w = x.shape[1:3]
    return np.max([padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0)


def reference(mixer: MaxPoolTokenMixer, x: np.ndarray) -> np.ndarray:
    w1, b1 = (keras.ops.convert_to_numpy(v) for v in mixer.expand.weights)
    w2, b2 = (keras.ops.convert_to_numpy(v) for v in mixer.proj.weights)
    return gelu(max_pool_3x3_ignoring_padding(gelu(x @ w1 + b1))) @ w2 + b2


def _randomise(layer, seed=0):
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))


class TestMaxPoolTokenMixer:
    def test_map_matches_numpy_reference_with_negative_border(self):
        x = np.random.default_rng(1).normal(size=(2, 3, 5, 4)).astype("float32") - 1.0  # mostly negative
        mixer = MaxPoolTokenMixer()
        mixer.build(x.shape)
        _randomise(mixer)
        np.testing.assert_allclose(mixer(x), reference(mixer, x), atol=1e-5)

    def test_tokens_use_the_row_major_square_grid(self):
        grid = np.random.default_rng(2).normal(size=(2, 4, 4, 6)).astype("float32")
        mixer = MaxPoolTokenMixer()
        mixer.build(grid.shape)
        _randomise(mixer)
        tokens = mixer(grid.reshape(2, 16, 6))
        assert tokens.shape == (2, 16, 6)
        np.testing.assert_allclose(tokens, keras.ops.reshape(mixer(grid), (2, 16, 6)), atol=1e-6)

    def test_non_square_token_grid_from_grid_size(self):
        grid = np.random.default_rng(3).normal(size=(2, 3, 5, 6)).astype("float32")
        mixer = MaxPoolTokenMixer(grid_size=(3, 5))
        mixer.build((2, 15, 6))
        _randomise(mixer)
        tokens = mixer(grid.reshape(2, 15, 6))
        np.testing.assert_allclose(tokens, reference(mixer, grid).reshape(2, 15, 6), atol=1e-5)
        assert mixer.token_grid == (3, 5)

    def test_grid_is_fixed_at_build(self):
        """``call`` takes the grid from ``build``: no shape is read (traced sizes are not ints on torch)."""
        mixer = MaxPoolTokenMixer(grid_size=(2, 8))
        mixer.build((None, None, 4))  # unknown token count: the grid still says 2x8
        assert mixer.token_grid == (2, 8)
        with pytest.raises(ValueError, match="tokens must fill grid_size=\\(2, 8\\). Received: tokens=15"):
            mixer(np.zeros((1, 15, 4), "float32"))

    def test_sublayers_and_macs(self):
        mixer = MaxPoolTokenMixer(expansion=3)
        mixer.build((None, 16, 8))
        assert [v.path for v in mixer.weights] == [
            "max_pool_token_mixer/expand/kernel",
            "max_pool_token_mixer/expand/bias",
            "max_pool_token_mixer/proj/kernel",
            "max_pool_token_mixer/proj/bias",
        ]
        assert mixer.count_macs((None, 16, 8)) == 2 * 16 * 8 * 24

    def test_dropout_only_in_training(self):
        mixer = MaxPoolTokenMixer(dropout_rate=0.5)
        x = np.ones((2, 9, 4), "float32")
        np.testing.assert_allclose(mixer(x, training=False), mixer(x, training=False))
        assert not np.allclose(mixer(x, training=True), mixer(x, training=False))

    def test_config_round_trip(self):
        mixer = MaxPoolTokenMixer(
            expansion=2, pool_size=5, use_bias=False, dropout_rate=0.1, grid_size=(3, 4), name="m"
        )
        clone = MaxPoolTokenMixer.from_config(mixer.get_config())
        assert clone.get_config() == mixer.get_config()
        assert clone.grid_size == (3, 4)
        assert keras.saving.get_registered_name(MaxPoolTokenMixer) == "pf_keras>MaxPoolTokenMixer"

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            (dict(expansion=0), "positive int. Received: expansion=0"),
            (dict(pool_size=2), "positive odd int.*Received: pool_size=2"),
            (dict(dropout_rate=1.0), r"\[0, 1\). Received: dropout_rate=1.0"),
            (dict(grid_size=(3,)), r"2 positive ints. Received: grid_size=\(3,\)"),
            (dict(grid_size=(3, 0)), r"2 positive ints. Received: grid_size=\(3, 0\)"),
        ],
    )
    def test_invalid_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            MaxPoolTokenMixer(**kwargs)

    @pytest.mark.parametrize(
        "shape,match",
        [
            ((2, 15, 8), "known square number of tokens.*Received: tokens=15"),
            ((2, None, 8), "known square number of tokens.*Received: tokens=None"),
            ((2, 8), "Received: input_shape=\\(2, 8\\)"),
        ],
    )
    def test_invalid_inputs(self, shape, match):
        with pytest.raises(ValueError, match=match):
            MaxPoolTokenMixer().build(shape)

    def test_tokens_that_do_not_fill_the_grid(self):
        with pytest.raises(ValueError, match="tokens must fill grid_size=\\(3, 5\\). Received: tokens=16"):
            MaxPoolTokenMixer(grid_size=(3, 5)).build((2, 16, 8))
