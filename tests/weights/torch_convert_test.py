"""Tests of pf_keras/weights/torch_convert.py's value checks, and that every loader inherits them."""

from __future__ import annotations

import os

import hostile_checkpoints as hostile
import keras
import numpy as np
import pytest
from conftest import FIXTURES, load_fixture, state_dict_of
from torch_save_writer import save_state_dict

import pf_keras
from pf_keras.weights import CheckpointError, plan_torch_transfer, precision_loss_allowed

SMALL_MAX = {"depths": [1, 2, 1, 1], "width_mult": 0.125, "classes": 10, "input_shape": [64, 64, 3]}


def _tiny_model() -> keras.Model:
    inputs = keras.Input((3,))
    x = keras.layers.Dense(2, name="fc")(inputs)
    outputs = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, outputs, name="tiny")


def _name_map(layer: str) -> str | None:
    return layer if layer in ("fc", "bn") else None


def _state_dict(**overrides) -> dict[str, np.ndarray]:
    sd = {
        "fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3) / 4,
        "fc.bias": np.array([0.5, -0.5], np.float32),
        "bn.weight": np.ones(2, np.float32),
        "bn.bias": np.zeros(2, np.float32),
        "bn.running_mean": np.zeros(2, np.float32),
        "bn.running_var": np.ones(2, np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),  # legitimately int64: dropped
    }
    sd.update(overrides)
    return sd


class TestValues:
    def test_clean_state_dict_loads_and_drops_num_batches_tracked(self):
        pairs = plan_torch_transfer(_tiny_model(), _state_dict(), _name_map)
        assert len(pairs) == 6 and all(array.dtype == np.float32 for _, array in pairs)

    @pytest.mark.parametrize(
        "value, problem",
        [
            (np.array([1, 2], np.int64), r"fc.bias: int64 \(non-float\) values for a float32 weight"),
            (np.array([True, False]), r"fc.bias: bool \(non-float\) values for a float32 weight"),
            (np.array([np.nan, 1.0], np.float32), r"fc.bias: 1 NaN/Inf values"),
            (np.array([np.inf, -np.inf], np.float32), r"fc.bias: 2 NaN/Inf values"),
            (np.array([0.1, 0.2], np.float64), r"fc.bias: float64 values not exactly representable in float32"),
            (np.array([1e300, 0.0], np.float64), r"fc.bias: float64 values beyond the float32 range"),
        ],
        ids=["int64", "bool", "nan", "inf", "float64_lossy", "float64_overflow"],
    )
    def test_unusable_values_are_refused_naming_the_key(self, value, problem):
        with pytest.raises(CheckpointError, match=rf"^ckpt.pth has unusable values in 1 keys: {problem}"):
            plan_torch_transfer(_tiny_model(), _state_dict(**{"fc.bias": value}), _name_map, source="ckpt.pth")

    def test_every_bad_key_is_named(self):
        sd = _state_dict(**{"fc.bias": np.array([1, 2], np.int64), "bn.weight": np.array([np.nan, 1], np.float32)})
        with pytest.raises(CheckpointError, match=r"in 2 keys: fc.bias: .*; bn.weight: 1 NaN/Inf"):
            plan_torch_transfer(_tiny_model(), sd, _name_map)

    def test_float64_exact_loads_and_lossy_needs_the_option(self):
        exact = np.array([0.5, -1.25], np.float64)
        pairs = dict(
            (v.path, a) for v, a in plan_torch_transfer(_tiny_model(), _state_dict(**{"fc.bias": exact}), _name_map)
        )
        np.testing.assert_array_equal(pairs["fc/bias"], exact.astype(np.float32))
        lossy = _state_dict(**{"fc.bias": np.array([0.1, 0.2], np.float64)})
        for pairs in (
            plan_torch_transfer(_tiny_model(), lossy, _name_map, allow_precision_loss=True),
            _with_context(lambda: plan_torch_transfer(_tiny_model(), lossy, _name_map)),
        ):
            bias = dict((v.path, a) for v, a in pairs)["fc/bias"]
            np.testing.assert_array_equal(bias, np.array([0.1, 0.2], np.float32))
        with pytest.raises(CheckpointError, match="not exactly representable"):
            plan_torch_transfer(_tiny_model(), lossy, _name_map)  # the context is gone

    def test_float16_widens(self):
        half = np.array([1.5, -2.0], np.float16)
        pairs = plan_torch_transfer(_tiny_model(), _state_dict(**{"fc.bias": half}), _name_map)
        np.testing.assert_array_equal(dict((v.path, a) for v, a in pairs)["fc/bias"], [1.5, -2.0])


def _with_context(plan):
    with precision_loss_allowed():
        return plan()


class TestLoadersInherit:
    """``create_model(weights=...)`` (and so the trainer's init weights) goes through the same reader and checks."""

    def test_hostile_file_through_create_model(self, tmp_path):
        path = str(tmp_path / "evil.pth")
        hostile.BY_NAME["view_longer_than_storage"].write(path, str(tmp_path / "PWNED"))
        with pytest.raises(CheckpointError, match=r"evil.pth: tensor 'w' .*reaches element 63"):
            pf_keras.create_model("resnet50_max", weights=path, **SMALL_MAX)
        assert not os.path.exists(tmp_path / "PWNED")

    def test_lossy_and_nan_values_through_create_model(self, tmp_path):
        _, arrays = load_fixture("resnet_max_small")
        sd = state_dict_of(arrays)
        path = str(tmp_path / "f64.pth")
        save_state_dict(path, {**sd, "fc.bias": sd["fc.bias"].astype(np.float64) + 0.1}, keep_dtypes=True)
        with pytest.raises(CheckpointError, match=r"f64.pth has unusable values in 1 keys: fc.bias: float64 values"):
            pf_keras.create_model("resnet50_max", weights=path, **SMALL_MAX)
        with precision_loss_allowed():
            model = pf_keras.create_model("resnet50_max", weights=path, **SMALL_MAX)
        np.testing.assert_allclose(model.get_layer("predictions").bias.numpy(), sd["fc.bias"] + 0.1, rtol=1e-6)
        nan = str(tmp_path / "nan.pth")
        save_state_dict(nan, {**sd, "conv1.0.weight": np.full_like(sd["conv1.0.weight"], np.nan)})
        with pytest.raises(
            CheckpointError, match=r"nan.pth has unusable values in 1 keys: conv1.0.weight: \d+ NaN/Inf"
        ):
            pf_keras.create_model("resnet50_max", weights=nan, **SMALL_MAX)

    def test_real_checkpoint_still_loads(self):
        model = pf_keras.create_model(
            "resnet50_max", weights=os.path.join(FIXTURES, "pth", "resnet_max_small.pth"), **SMALL_MAX
        )
        expected = state_dict_of(load_fixture("resnet_max_small")[1])["fc.weight"].T
        np.testing.assert_array_equal(model.get_layer("predictions").kernel.numpy(), expected)
