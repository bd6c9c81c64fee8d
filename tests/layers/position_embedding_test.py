"""Tests of pf_keras/layers/position_embedding.py: PyTorch-bicubic resizing and the layer."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from conftest import FIXTURES

from pf_keras.layers.position_embedding import (
    PositionEmbedding,
    bicubic_resize_matrix,
    resample_position_embedding,
    resize_grid,
)

A = -0.75  # PyTorch's cubic convolution constant


def _kernel(d: float) -> float:
    d = abs(d)
    if d <= 1:
        return (A + 2) * d**3 - (A + 3) * d**2 + 1
    if d < 2:
        return A * d**3 - 5 * A * d**2 + 8 * A * d - 4 * A
    return 0.0


def torch_bicubic_reference(grid: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """(h, w, c) -> (out_h, out_w, c) by F.interpolate(mode="bicubic", align_corners=False)'s rule.

    Written independently of the layer: a 4x4 gather per output pixel in float64, source
    index ``(o + 0.5) * in / out - 0.5``, border taps clamped, no antialiasing.
    """
    h, w, c = grid.shape
    out = np.zeros((out_h, out_w, c))
    for oy in range(out_h):
        sy = (oy + 0.5) * h / out_h - 0.5
        iy = min(math.floor(sy), h - 1)
        ty = min(max(sy - iy, 0.0), 1.0)
        for ox in range(out_w):
            sx = (ox + 0.5) * w / out_w - 0.5
            ix = min(math.floor(sx), w - 1)
            tx = min(max(sx - ix, 0.0), 1.0)
            for j in range(4):
                for i in range(4):
                    y = min(max(iy + j - 1, 0), h - 1)
                    x = min(max(ix + i - 1, 0), w - 1)
                    out[oy, ox] += _kernel(ty - (j - 1)) * _kernel(tx - (i - 1)) * grid[y, x]
    return out


class TestBicubicResize:
    @pytest.mark.parametrize("out_size", [(9, 9), (4, 4), (10, 6), (7, 7)])
    def test_matches_pytorch_rule(self, out_size):
        grid = np.random.default_rng(0).normal(size=(7, 7, 3))
        ours = keras.ops.convert_to_numpy(resize_grid(keras.ops.convert_to_tensor(grid[None], "float32"), *out_size))
        np.testing.assert_allclose(ours[0], torch_bicubic_reference(grid, *out_size), atol=1e-5)  # float32 rounding

    def test_same_size_is_identity(self):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(bicubic_resize_matrix(27, 27)), np.eye(27))

    def test_tensorflow_bicubic_departs_from_pytorch(self):
        """Why the layer resizes itself: tf.image.resize's bicubic (a=-0.5) is not PyTorch's."""
        import tensorflow as tf

        grid = np.random.default_rng(1).normal(size=(27, 27, 4))
        reference = torch_bicubic_reference(grid, 31, 31)
        ours = keras.ops.convert_to_numpy(resize_grid(keras.ops.convert_to_tensor(grid[None], "float32"), 31, 31))[0]
        tf_bicubic = tf.image.resize(grid[None].astype("float32"), (31, 31), method="bicubic").numpy()[0]
        assert np.abs(ours - reference).max() < 2e-5
        assert np.abs(tf_bicubic - reference).max() > 0.1  # measured 0.29 on unit-variance noise


def _timm_fixture() -> dict[str, np.ndarray]:
    """timm's resample_abs_pos_embed outputs (tests/fixtures/make_pos_embed.py)."""
    import os

    with np.load(os.path.join(FIXTURES, "pos_embed_resample.npz")) as data:
        return {k: data[k] for k in data.files}


class TestResampleOnLoad:
    @pytest.mark.parametrize(
        "key",
        [f"{f}_{s}{aa}" for f, sizes in (("vit", ("24x24", "10x14", "7x9")), ("pit", ("47x47", "19x27")))
         for s in sizes for aa in ("", "_aa")],
    )
    def test_matches_timm(self, key):
        """timm.layers.resample_abs_pos_embed(_nhwc), bicubic, antialias False and True (``_aa``)."""
        arrays = _timm_fixture()
        family, size = key.split("_")[:2]
        grid = tuple(int(n) for n in size.split("x"))
        ours = resample_position_embedding(arrays[f"{family}_in"], grid, antialias=key.endswith("_aa"))
        assert ours.shape == arrays[key].shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, arrays[key], atol=1e-5, rtol=0)  # float32 rounding: measured 6e-6

    def test_default_rule_is_the_on_the_fly_resize(self):
        grid = _timm_fixture()["pit_in"]
        on_the_fly = keras.ops.convert_to_numpy(resize_grid(keras.ops.convert_to_tensor(grid), 19, 27))
        np.testing.assert_allclose(resample_position_embedding(grid, (19, 27)), on_the_fly, atol=1e-5)

    def test_antialias_matters_also_when_enlarging(self):
        arrays = _timm_fixture()
        assert np.abs(arrays["vit_24x24"] - arrays["vit_24x24_aa"]).max() > 0.1  # a = -0.75 vs Pillow's -0.5

    def test_non_square_token_source(self):
        tokens = np.arange(2 * 3 * 2, dtype="float32").reshape(1, 6, 2)
        same = resample_position_embedding(tokens, (2, 3), source_grid=(2, 3))
        np.testing.assert_allclose(same, tokens, atol=1e-6)
        with pytest.raises(ValueError, match="6 tokens do not fill 2x2; pass `source_grid`"):
            resample_position_embedding(tokens, (4, 4))

    @pytest.mark.parametrize(
        "shape,grid,match",
        [
            ((2, 4, 3), (2, 2), "is \\(1, tokens, C\\) or \\(1, h, w, C\\). Received: shape=\\(2, 4, 3\\)"),
            ((1, 4, 3), (2,), "2 positive ints. Received: grid_size=\\(2,\\)"),
            ((1, 4, 3), None, "2 positive ints. Received: grid_size=None"),
        ],
    )
    def test_invalid(self, shape, grid, match):
        with pytest.raises(ValueError, match=match):
            resample_position_embedding(np.zeros(shape, "float32"), grid)

    def test_layer_resamples_tokens_to_its_grid(self):
        layer = PositionEmbedding(grid_size=(10, 14))
        layer.build((None, 140, 2))
        assert layer.embedding.shape == (1, 140, 2)
        arrays = _timm_fixture()
        np.testing.assert_allclose(layer.resample(arrays["vit_in"]), arrays["vit_10x14"], atol=1e-5)
        with pytest.raises(ValueError, match="cannot be resampled to \\(1, 140, 2\\)"):
            layer.resample(np.zeros((1, 196, 3), "float32"))

    def test_keras_weights_of_another_grid_are_resampled(self, tmp_path):
        small_in, large_in = keras.Input((27, 27, 2)), keras.Input((47, 47, 2))
        small = keras.Model(small_in, PositionEmbedding(name="pos_embed")(small_in))
        large = keras.Model(large_in, PositionEmbedding(name="pos_embed")(large_in))
        stored = _timm_fixture()["pit_in"]
        small.get_layer("pos_embed").embedding.assign(stored)
        small.save_weights(tmp_path / "small.weights.h5")
        large.load_weights(tmp_path / "small.weights.h5")
        loaded = keras.ops.convert_to_numpy(large.get_layer("pos_embed").embedding)
        np.testing.assert_allclose(loaded, _timm_fixture()["pit_47x47"], atol=1e-5)


class TestPositionEmbedding:
    def test_tokens_add_a_sequence_embedding(self):
        layer = PositionEmbedding()
        x = np.zeros((2, 5, 3), "float32")
        out = layer(x)
        assert layer.embedding.shape == (1, 5, 3)
        np.testing.assert_allclose(out, np.broadcast_to(keras.ops.convert_to_numpy(layer.embedding), (2, 5, 3)))

    def test_map_on_stored_grid_adds_it_unchanged(self):
        layer = PositionEmbedding()
        x = np.zeros((1, 4, 4, 2), "float32")
        np.testing.assert_allclose(layer(x), keras.ops.convert_to_numpy(layer.embedding))

    def test_static_and_dynamic_resizing_agree(self):
        static_in, dynamic_in = keras.Input((6, 5, 2)), keras.Input((None, None, 2))
        layer = PositionEmbedding(grid_size=(4, 4))
        static = keras.Model(static_in, layer(static_in))
        dynamic = keras.Model(dynamic_in, layer(dynamic_in))
        x = np.zeros((1, 6, 5, 2), "float32")
        grid = keras.ops.convert_to_numpy(layer.embedding)[0].astype("float64")
        expected = torch_bicubic_reference(grid, 6, 5)[None]
        np.testing.assert_allclose(static.predict(x, verbose=0), expected, atol=1e-6)
        np.testing.assert_allclose(dynamic.predict(x, verbose=0), expected, atol=1e-6)
        np.testing.assert_allclose(dynamic.predict(np.zeros((1, 4, 4, 2), "float32"), verbose=0), grid[None], atol=1e-7)

    def test_tokens_on_a_non_square_grid(self):
        layer = PositionEmbedding(grid_size=(2, 3))
        assert layer(np.zeros((1, 6, 4), "float32")).shape == (1, 6, 4)
        with pytest.raises(ValueError, match="tokens must fill grid_size=\\(2, 3\\)"):
            PositionEmbedding(grid_size=(2, 3)).build((None, 7, 4))

    @pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
    def test_mixed_precision_keeps_and_resizes_the_embedding_in_float32(self, policy):
        layer = PositionEmbedding(grid_size=(4, 4), dtype=policy)
        x = np.zeros((1, 6, 5, 2), "float32")
        out = layer(x)
        compute = policy.split("_")[1]
        assert layer.embedding.dtype == "float32" and keras.backend.standardize_dtype(out.dtype) == compute
        grid = keras.ops.convert_to_numpy(layer.embedding)[0].astype("float64")
        expected = torch_bicubic_reference(grid, 6, 5)[None]
        # Only the final cast rounds: the error is half a unit in the last place of the compute dtype.
        tolerance = {"float16": 2**-11, "bfloat16": 2**-8}[compute] * np.abs(expected).max()
        np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")), expected, atol=tolerance)

    def test_weight_path(self):
        layer = PositionEmbedding(name="pos_embed")
        layer.build((None, 4, 8))
        assert [v.path for v in layer.weights] == ["pos_embed/embedding"]

    def test_config_round_trip(self):
        layer = PositionEmbedding(grid_size=(27, 27), name="p")
        clone = PositionEmbedding.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
        assert clone.grid_size == (27, 27)

    def test_invalid_grid_size(self):
        with pytest.raises(ValueError, match="2 positive ints. Received: grid_size=\\(4,\\)"):
            PositionEmbedding(grid_size=(4,))

    @pytest.mark.parametrize(
        "shape,match",
        [
            ((None, None, None, 8), "needs known tokens.*grid_size"),
            ((None, None, 8), "needs known tokens"),
            ((None, 8), "Received: input_shape=\\(None, 8\\)"),
        ],
    )
    def test_invalid_inputs(self, shape, match):
        with pytest.raises(ValueError, match=match):
            PositionEmbedding().build(shape)
