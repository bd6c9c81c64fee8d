"""Tests of the features API (pf_keras/models/features.py and ``features_only`` in the three builders)."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from conftest import FIXTURES, load_fixture, nchw_to_nhwc, randomised, state_dict_of
from torch_save_writer import save_state_dict

import pf_keras
from pf_keras.models.features import FeatureInfo, resolve_out_indices

# Small configurations of each family at a non-square size, and their candidate maps (stride, channels).
SMALL = {
    "resnet50_hybrid": dict(depths=(1, 2, 1, 1), width_mult=0.125, input_shape=(64, 96, 3), classes=5),
    "vit_s_max": dict(patch_size=8, hidden_dim=16, depth=4, num_heads=2, input_shape=(32, 48, 3), classes=5),
    "pit_s_max": dict(head_dims=(4, 4, 4), depths=(1, 2, 1), num_heads=(1, 2, 4), input_shape=(64, 96, 3), classes=5),
}
# Full-size models at 160x224: (index, layer, channels, stride, map height, map width) of every default output.
R50 = [(1, "stage1_block3_out", 256, 4, 40, 56), (2, "stage2_block4_out", 512, 8, 20, 28),
       (3, "stage3_block6_out", 1024, 16, 10, 14), (4, "stage4_block3_out", 2048, 32, 5, 7)]
PUBLISHED = {
    "resnet50": R50,
    "resnet50_max": R50,
    "resnet50_hybrid": R50,
    "vit_ti_max": [(i, f"block{i}_map", 192, 16, 10, 14) for i in (9, 10, 11)],
    "vit_s_max": [(i, f"block{i}_map", 384, 16, 10, 14) for i in (9, 10, 11)],
    "vit_b_max": [(i, f"block{i}_map", 768, 16, 10, 14) for i in (9, 10, 11)],
    # Embedding k16/s8: (160 - 16) // 8 + 1 = 19, 27; then the pools halve, rounding up.
    "pit_ti_max": [(0, "stage0_block1", 64, 8, 19, 27), (1, "stage1_block5", 128, 16, 10, 14),
                   (2, "stage2_block3", 256, 32, 5, 7)],
    "pit_s_max": [(0, "stage0_block1", 144, 8, 19, 27), (1, "stage1_block5", 288, 16, 10, 14),
                  (2, "stage2_block3", 576, 32, 5, 7)],
    # Embedding k14/s7: 21 x 31, 11 x 16, 6 x 8.
    "pit_b_max": [(0, "stage0_block2", 256, 7, 21, 31), (1, "stage1_block5", 512, 14, 11, 16),
                  (2, "stage2_block3", 1024, 28, 6, 8)],
}


def _check_outputs(model: keras.Model, expected: list[tuple]) -> None:
    assert model.feature_info == tuple(FeatureInfo(*row[:4]) for row in expected)
    assert [tuple(shape) for shape in model.output_shape] == [(None, h, w, c) for _, _, c, _, h, w in expected]
    assert [model.get_layer(info.layer).output.shape[-1] for info in model.feature_info] == [r[2] for r in expected]


@pytest.mark.large
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_published_model_at_a_non_square_size(name):
    """Shapes, strides, channels and layer names of the default outputs of all nine models at 160x224."""
    model = pf_keras.create_model(name, features_only=True, input_shape=(160, 224, 3))
    _check_outputs(model, PUBLISHED[name])
    assert model.name == name


@pytest.mark.parametrize("name", sorted(SMALL))
def test_feature_maps_are_the_classifier_activations(name, tmp_path):
    """Numbers, not only shapes: each map equals the full classifier's activation of that layer (non-square input)."""
    classifier = randomised(pf_keras.create_model(name, **SMALL[name]))
    classifier.save_weights(tmp_path / "classifier.weights.h5")
    extractor = pf_keras.create_model(
        name, **SMALL[name], weights=str(tmp_path / "classifier.weights.h5"), features_only=True, out_indices=(0, -1)
    )
    assert [info.index for info in extractor.feature_info] == [0, _count(name) - 1]
    sources = [info.layer.removesuffix("_map") for info in extractor.feature_info]  # ViT: block{i} tokens
    probe = keras.Model(classifier.input, [classifier.get_layer(s).output for s in sources])
    x = np.random.default_rng(0).normal(size=(2, *SMALL[name]["input_shape"])).astype("float32")
    for got, want, info in zip(extractor.predict(x, verbose=0), probe.predict(x, verbose=0), extractor.feature_info,
                               strict=True):
        np.testing.assert_allclose(got, want.reshape(got.shape), atol=1e-5, rtol=0, err_msg=info.layer)
        assert got.shape[1] * info.stride in range(x.shape[1] - info.stride, x.shape[1] + info.stride + 1)


def _count(name: str) -> int:
    return {"resnet50_hybrid": 5, "vit_s_max": 4, "pit_s_max": 3}[name]


class TestMatchesTheReference:
    """Feature maps of models loaded from the parity fixtures' PyTorch state dicts equal the reference's activations."""

    def test_resnet_stem_and_stages(self):
        meta, arrays = load_fixture("resnet_max_small")
        kw = meta["torch_kwargs"]
        model = pf_keras.create_model(
            "resnet50_max", depths=tuple(kw["layer_setting"]), width_mult=kw["width_mult"], classes=kw["num_classes"],
            input_shape=(64, 64, 3), weights=os.path.join(FIXTURES, "pth", "resnet_max_small.pth"),
            features_only=True, out_indices=(0, 1, 2, 3, 4),
        )
        assert [info.stride for info in model.feature_info] == [2, 4, 8, 16, 32]
        outputs = model.predict(nchw_to_nhwc(arrays["x"]), verbose=0)
        for module, out in zip(["conv1", "layer1", "layer2", "layer3", "layer4"], outputs, strict=True):
            np.testing.assert_allclose(out, nchw_to_nhwc(arrays[f"act/{module}"]), atol=1e-4, rtol=0, err_msg=module)

    def test_vit_blocks_as_maps(self, tmp_path):
        meta, arrays = load_fixture("vit_max_small")
        kw = meta["torch_kwargs"]
        save_state_dict(str(tmp_path / "vit.pth"), state_dict_of(arrays))
        model = pf_keras.create_model(
            "vit_s_max", patch_size=kw["patch_size"], hidden_dim=kw["embed_dim"], depth=kw["depth"],
            num_heads=kw["num_heads"], classes=kw["num_classes"], input_shape=(32, 32, 3),
            weights=str(tmp_path / "vit.pth"), features_only=True,
        )
        assert [info.index for info in model.feature_info] == [1, 2, 3]  # timm's default: the last 3 blocks
        for info, out in zip(model.feature_info, model.predict(nchw_to_nhwc(arrays["x"]), verbose=0), strict=True):
            tokens = arrays[f"act/blocks.{info.index}"]  # (batch, tokens, C), row-major over the 4x4 grid
            np.testing.assert_allclose(out, tokens.reshape(2, 4, 4, kw["embed_dim"]), atol=1e-4, rtol=0)

    def test_pit_stages(self, tmp_path):
        meta, arrays = load_fixture("pit_max_small")
        kw = meta["torch_kwargs"]
        save_state_dict(str(tmp_path / "pit.pth"), state_dict_of(arrays))
        model = pf_keras.create_model(
            "pit_s_max", patch_size=kw["patch_size"], stride=kw["stride"], head_dims=tuple(kw["base_dims"]),
            depths=tuple(kw["depth"]), num_heads=tuple(kw["heads"]), image_size=kw["image_size"],
            classes=kw["num_classes"], weights=str(tmp_path / "pit.pth"), features_only=True,
        )
        assert [(info.stride, info.channels) for info in model.feature_info] == [(8, 8), (16, 16), (32, 32)]
        outputs = model.predict(nchw_to_nhwc(arrays["x"]), verbose=0)
        for stage, out in enumerate(outputs):
            expected = nchw_to_nhwc(arrays[f"act/transformers.{stage}"])
            np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0, err_msg=f"stage {stage}")


class TestOutIndices:
    @pytest.mark.parametrize(
        "out_indices,expected",
        [(None, (1, 2, 3, 4)), (2, (3, 4)), ((0, -1), (0, 4)), ([3, 1], (1, 3)), (5, (0, 1, 2, 3, 4))],
    )
    def test_timm_rules(self, out_indices, expected):
        assert resolve_out_indices(out_indices, 5, default=(1, 2, 3, 4)) == expected

    @pytest.mark.parametrize(
        "out_indices,match",
        [
            (6, "1 <= n <= 5. Received: out_indices=6"),
            (0, "1 <= n <= 5. Received: out_indices=0"),
            ((5,), "int in \\[-5, 4\\].*Received: out_indices=\\(5,\\)"),
            ((1, -4), "each once. Received: out_indices=\\(1, -4\\)"),
            ((), "at least one map"),
            ("1", "an int \\(the last n maps\\) or a sequence of ints. Received: out_indices='1'"),
            ((1.0,), "must be an int"),
            (True, "Received: out_indices=True"),
        ],
    )
    def test_invalid(self, out_indices, match):
        with pytest.raises(ValueError, match=match):
            resolve_out_indices(out_indices, 5, default=(1,))

    def test_builders_check_before_building(self):
        with pytest.raises(ValueError, match="int in \\[-4, 3\\]"):
            pf_keras.create_model("vit_s_max", **SMALL["vit_s_max"], features_only=True, out_indices=(4,))
        with pytest.raises(ValueError, match="int in \\[-3, 2\\]"):
            pf_keras.create_model("pit_s_max", **SMALL["pit_s_max"], features_only=True, out_indices=(3,))
        with pytest.raises(ValueError, match="int in \\[-5, 4\\]"):
            pf_keras.create_model("resnet50", **SMALL["resnet50_hybrid"], features_only=True, out_indices=(5,))


def test_saved_feature_model_reloads_with_the_same_outputs(tmp_path):
    model = randomised(pf_keras.create_model("pit_s_max", **SMALL["pit_s_max"], features_only=True))
    model.save(tmp_path / "features.keras")
    restored = keras.saving.load_model(tmp_path / "features.keras")
    x = np.random.default_rng(1).normal(size=(1, 64, 96, 3)).astype("float32")
    for a, b in zip(model.predict(x, verbose=0), restored.predict(x, verbose=0), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)

