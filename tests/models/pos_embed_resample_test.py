"""Weights trained at one resolution load into ViT and PiT models of another (issue 10, item 5).

The rule itself (bicubic, ``align_corners=False``, no antialiasing) is checked against
timm's ``resample_abs_pos_embed`` in ``tests/layers/position_embedding_test.py``; here the
loading paths (PyTorch checkpoint and Keras weights file) are checked to apply it, and only
to the position embedding.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import load_fixture, load_published_manifest, randomised, state_dict_of
from torch_save_writer import save_state_dict

import pf_keras
from pf_keras.layers.position_embedding import resample_position_embedding
from pf_keras.models import pit, vit
from pf_keras.weights import plan_torch_transfer


def _vit_kwargs(side: int) -> dict:
    kw = load_fixture("vit_max_small")[0]["torch_kwargs"]
    return dict(patch_size=kw["patch_size"], hidden_dim=kw["embed_dim"], depth=kw["depth"], num_heads=kw["num_heads"],
                classes=kw["num_classes"], classifier_activation=None, input_shape=(side, side, 3))


def _pit_kwargs(image_size: int, side: int) -> dict:
    kw = load_fixture("pit_max_small")[0]["torch_kwargs"]
    return dict(patch_size=kw["patch_size"], stride=kw["stride"], head_dims=tuple(kw["base_dims"]),
                depths=tuple(kw["depth"]), num_heads=tuple(kw["heads"]), image_size=image_size,
                classes=kw["num_classes"], classifier_activation=None, input_shape=(side, side, 3))


def _weights_except_pos_embed(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(w) for w in model.weights if not w.path.startswith("pos_embed/")]


def _pos_embed(model: keras.Model) -> np.ndarray:
    return keras.ops.convert_to_numpy(model.get_layer("pos_embed").embedding)


class TestViT:
    def test_torch_checkpoint_at_32_loads_into_a_48_model(self, tmp_path):
        state = state_dict_of(load_fixture("vit_max_small")[1])  # a 4x4 patch grid
        path = str(tmp_path / "vit32.pth")
        save_state_dict(path, state)
        small = vit.ViT(**_vit_kwargs(32), weights=path)
        large = vit.ViT(**_vit_kwargs(48), weights=path)
        assert _pos_embed(large).shape == (1, 36, 48)
        expected = resample_position_embedding(state["pos_embed"], (6, 6))
        np.testing.assert_allclose(_pos_embed(large), expected, atol=1e-6)
        for a, b in zip(_weights_except_pos_embed(small), _weights_except_pos_embed(large), strict=True):
            np.testing.assert_array_equal(a, b)
        assert np.isfinite(large.predict(np.zeros((1, 48, 48, 3), "float32"), verbose=0)).all()

    def test_keras_weights_file_at_32_loads_into_a_non_square_model(self, tmp_path):
        small = randomised(vit.ViT(**_vit_kwargs(32)))
        small.save_weights(tmp_path / "vit32.weights.h5")
        wide = vit.ViT(**{**_vit_kwargs(32), "input_shape": (32, 48, 3)}, weights=str(tmp_path / "vit32.weights.h5"))
        np.testing.assert_allclose(_pos_embed(wide), resample_position_embedding(_pos_embed(small), (4, 6)), atol=1e-6)
        for a, b in zip(_weights_except_pos_embed(small), _weights_except_pos_embed(wide), strict=True):
            np.testing.assert_array_equal(a, b)

    def test_another_width_is_still_refused(self, tmp_path):
        state = state_dict_of(load_fixture("vit_max_small")[1])
        state["pos_embed"] = np.zeros((1, 16, 40), "float32")
        model = vit.ViT(**_vit_kwargs(48))
        with pytest.raises(ValueError, match="pos_embed: checkpoint \\(1, 16, 40\\) vs model \\(1, 36, 48\\)"):
            plan_torch_transfer(model, state, vit._torch_name)

    @pytest.mark.large
    def test_published_224_checkpoint_into_a_384_vit_ti_max(self):
        """The issue's case at full size: 224 weights (14x14) into a 384 model (24x24)."""
        manifest = load_published_manifest("vit_ti_max")["state_dict"]
        rng = np.random.default_rng(0)
        state = {k: rng.normal(0, 0.02, shape).astype("float32") for k, shape in manifest.items()}
        model = pf_keras.create_model("vit_ti_max", input_shape=(384, 384, 3))
        for variable, value in plan_torch_transfer(model, state, vit._torch_name):
            variable.assign(value)
        expected = resample_position_embedding(state["pos_embed"], (24, 24))
        np.testing.assert_allclose(_pos_embed(model), expected, atol=1e-6)


class TestPiT:
    def test_torch_checkpoint_resampled_on_load_equals_resizing_on_the_fly(self, tmp_path):
        """A 96 model made for 96 (11x11 grid) with 64 weights (7x7) computes what the 64 model does at 96.

        The PiT reference resizes its embedding on every call; resampling once on load by the same
        rule gives the same numbers.
        """
        _, arrays = load_fixture("pit_max_small")
        state = state_dict_of(arrays)
        path = str(tmp_path / "pit64.pth")
        save_state_dict(path, state)
        made_for_96 = pit.PiT(**_pit_kwargs(96, 96), weights=path)
        resized_per_call = pit.PiT(**_pit_kwargs(64, 96), weights=path)
        assert _pos_embed(made_for_96).shape == (1, 11, 11, 8)
        x = np.random.default_rng(0).normal(size=(2, 96, 96, 3)).astype("float32")
        np.testing.assert_allclose(
            made_for_96.predict(x, verbose=0), resized_per_call.predict(x, verbose=0), atol=1e-5, rtol=0
        )

    def test_keras_weights_file_resampled_on_load(self, tmp_path):
        small = randomised(pit.PiT(**_pit_kwargs(64, 64)))
        small.save_weights(tmp_path / "pit64.weights.h5")
        large = pit.PiT(**_pit_kwargs(96, 96), weights=str(tmp_path / "pit64.weights.h5"))
        expected = resample_position_embedding(_pos_embed(small), (11, 11))
        np.testing.assert_allclose(_pos_embed(large), expected, atol=1e-6)
        for a, b in zip(_weights_except_pos_embed(small), _weights_except_pos_embed(large), strict=True):
            np.testing.assert_array_equal(a, b)

    def test_keras_weights_file_of_another_width_is_refused(self, tmp_path):
        other = pit.PiT(**{**_pit_kwargs(64, 64), "head_dims": (4, 4, 4)})
        other.save_weights(tmp_path / "other.weights.h5")
        with pytest.raises(ValueError, match="does not fit model"):
            pit.PiT(**_pit_kwargs(96, 96), weights=str(tmp_path / "other.weights.h5"))
