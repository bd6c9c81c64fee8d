"""The builders refuse what no published configuration needs before allocating anything: a hostile or
damaged preset config.json (or a typo in model_kwargs) is one ValueError, never an allocation of
terabytes, a build of a million blocks, a TypeError or an OverflowError."""

from __future__ import annotations

import json
import os

import keras
import pytest

import pf_keras
from pf_keras.models import common
from pf_keras.models.specs import SPECS
from pf_keras.weights.preset import write_preset

TINY = {
    "resnet50": {"depths": (1, 1, 1, 1), "width_mult": 0.125, "input_shape": (32, 32, 3), "classes": 10},
    "resnet50_max": {"depths": (1, 2, 1, 1), "width_mult": 0.125, "input_shape": (32, 32, 3), "classes": 10},
    "resnet50_hybrid": {"depths": (2, 1, 1, 2), "width_mult": 0.25, "input_shape": (64, 64, 3), "classes": 7},
    "vit_ti_max": {"patch_size": 8, "hidden_dim": 16, "depth": 2, "num_heads": 2, "input_shape": (32, 32, 3),
                   "classes": 10},
    "pit_ti_max": {"patch_size": 8, "stride": 4, "head_dims": (4, 4), "depths": (1, 1), "num_heads": (1, 2),
                   "image_size": 32, "input_shape": (32, 32, 3), "classes": 10},
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_bound_covers_every_published_model(monkeypatch, name):
    """A limit one below the published count refuses the model (so the bound is at least that count),
    before any layer is built."""
    monkeypatch.setattr(common, "MAX_PARAMS", SPECS[name].params - 1)
    with pytest.raises(ValueError, match=r"would hold up to .* parameters, above the limit"):
        pf_keras.create_model(name)


@pytest.mark.parametrize("name", sorted(TINY))
def test_the_bound_is_an_upper_bound_within_4x(monkeypatch, name):
    count = pf_keras.create_model(name, **TINY[name]).count_params()
    monkeypatch.setattr(common, "MAX_PARAMS", count - 1)
    with pytest.raises(ValueError, match=r"above the limit"):
        pf_keras.create_model(name, **TINY[name])
    monkeypatch.setattr(common, "MAX_PARAMS", 4 * count)
    assert pf_keras.create_model(name, **TINY[name]).count_params() == count
    keras.utils.clear_session()


@pytest.fixture(scope="module")
def presets(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("presets")
    folders = {}
    for name in ("resnet50_hybrid", "vit_ti_max", "pit_ti_max"):
        folders[name] = write_preset(pf_keras.create_model(name, **TINY[name]), root / name)
    keras.utils.clear_session()
    return folders


def _tampered(folder: str, tmp_path, **config) -> str:
    import shutil

    copy = str(tmp_path / os.path.basename(folder))
    shutil.copytree(folder, copy)
    path = os.path.join(copy, "config.json")
    with open(path) as f:
        data = json.load(f)
    data["config"].update(config)
    with open(path, "w") as f:
        json.dump(data, f)
    return copy


HOSTILE = [
    ("resnet50_hybrid", {"classes": 10**9}, r"would hold up to 5.\d+e\+11 parameters"),
    ("resnet50_hybrid", {"width_mult": 1e4}, r"`width_mult` must be a finite number below 10000"),
    ("resnet50_hybrid", {"width_mult": 500.0}, r"would hold up to .* parameters"),
    ("resnet50_hybrid", {"depths": [10**9] * 4}, r"4000000000 blocks exceeds the limit of 1000"),
    ("resnet50_hybrid", {"depths": 7}, r"`depths` must be 4 positive ints"),
    ("resnet50_hybrid", {"block_kinds": 3}, r"`block_kinds` needs one entry per stage"),
    ("resnet50_hybrid", {"input_shape": [10**6, 10**6, 3]}, r"sides of at most 16384 pixels"),
    ("resnet50_hybrid", {"input_shape": 224}, r"`input_shape` must be \(height, width, channels\)"),
    ("resnet50_hybrid", {"drop_path_rate": "0.1"}, r"`drop_path_rate` must be a finite number"),
    ("resnet50_hybrid", {"evil": 1}, r"arguments the resnet builder does not take. Received: \['evil'\]"),
    ("vit_ti_max", {"hidden_dim": 10**6, "num_heads": 1}, r"would hold up to .* parameters"),
    ("vit_ti_max", {"depth": 10**12}, r"blocks exceeds the limit"),
    ("vit_ti_max", {"mlp_ratio": "4"}, r"`mlp_ratio` must be a finite number"),
    ("vit_ti_max", {"mlp_ratio": 1e308}, r"`mlp_ratio` must be a finite number below 10000"),
    ("vit_ti_max", {"mixers": 2}, r"`mixers` as a list needs 2 entries"),
    ("vit_ti_max", {"input_shape": [8192, 8192, 3], "patch_size": 1}, r"would hold up to .* parameters"),
    ("pit_ti_max", {"depths": [10**6, 1]}, r"blocks exceeds the limit"),
    ("pit_ti_max", {"classes": 10**8, "head_dims": [4096, 4096]}, r"would hold up to .* parameters"),
    ("pit_ti_max", {"mixers": None}, r"`mixers` must be a pattern"),
]


@pytest.mark.parametrize(("name", "config", "message"), HOSTILE, ids=[f"{n}-{sorted(c)}" for n, c, _ in HOSTILE])
def test_a_hostile_preset_config_is_one_value_error(presets, tmp_path, name, config, message):
    folder = _tampered(presets[name], tmp_path, **config)
    with pytest.raises(ValueError, match=message):
        pf_keras.create_model(folder)


def test_the_untampered_presets_load(presets):
    for name, folder in presets.items():
        assert pf_keras.create_model(folder).count_params() == pf_keras.create_model(name, **TINY[name]).count_params()
