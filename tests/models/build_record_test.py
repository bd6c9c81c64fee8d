"""Tests of the build record (pf_keras/models/registry.py) and the model folders that carry it (preset.py)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import randomised

import pf_keras
from pf_keras.cli import parse_model_kwargs
from pf_keras.models import registry
from pf_keras.weights.preset import model_folder, write_preset

TINY = {"depths": (1, 1, 1, 1), "width_mult": 0.125, "input_shape": (32, 32, 3), "classes": 10}


def _outputs(model) -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    return np.asarray(model(x, training=False))


class TestBuildRecord:
    def test_a_spec_model_records_its_name_family_and_full_architecture(self):
        model = pf_keras.create_model("resnet50_max", **TINY, classifier_activation=None)
        record = pf_keras.build_record(model)
        assert (record.model, record.family) == ("resnet50_max", "resnet")
        assert record.config == {"depths": (1, 1, 1, 1), "width_mult": 0.125, "block_kinds": "max",
                                 "input_shape": (32, 32, 3), "classes": 10, "classifier_activation": None}
        rebuilt = record.build()
        assert pf_keras.build_record(rebuilt) == record and rebuilt.name == "resnet50_max"
        assert rebuilt.count_params() == model.count_params()
        assert record.build(classes=3).output_shape == (None, 3)
        assert pf_keras.build_record(record.build(classes=3)).config["classes"] == 3

    def test_weights_file_plus_record_rebuilds_identical_outputs(self, tmp_path):
        model = randomised(pf_keras.create_model("vit_s_max", patch_size=8, depth=2, hidden_dim=48, num_heads=2,
                                                 input_shape=(32, 32, 3), classes=4))
        path = str(tmp_path / "w.weights.h5")
        model.save_weights(path)
        record = pf_keras.build_record(model)
        np.testing.assert_array_equal(_outputs(record.build(weights=path)), _outputs(model))

    def test_the_preset_folder_is_the_record_on_disk(self, tmp_path):
        model = randomised(pf_keras.create_model("resnet50_hybrid", **TINY))
        folder = write_preset(model, tmp_path / "final", metadata={"class_names": list("abcdefghij")})
        config = json.loads((tmp_path / "final" / "config.json").read_text())
        assert config == pf_keras.build_record(model).to_json() and config["config"]["depths"] == [1, 1, 1, 1]
        rebuilt = pf_keras.create_model(folder)
        assert pf_keras.build_record(rebuilt) == pf_keras.build_record(model)  # JSON lists read back as tuples
        np.testing.assert_array_equal(_outputs(rebuilt), _outputs(model))
        # Overrides on a folder are recorded too, so a preset of the variant rebuilds the variant.
        uint8 = pf_keras.create_model(folder, include_preprocessing=True)
        assert pf_keras.build_record(uint8).config["include_preprocessing"] is True

    def test_a_registered_builder_round_trips_through_a_preset_folder(self, tmp_path, monkeypatch):
        monkeypatch.setattr(registry, "_REGISTRY", {})
        registry.register_model("my_net")(lambda **kwargs: pf_keras.ResNet((1, 1, 1, 1), "max", width_mult=0.125,
                                                                           name="my_net", **kwargs))
        model = randomised(pf_keras.create_model("my_net", input_shape=(32, 32, 3), classes=5))
        record = pf_keras.build_record(model)
        assert (record.model, record.family, record.config) == ("my_net", None, {"input_shape": (32, 32, 3),
                                                                                  "classes": 5})
        folder = write_preset(model, tmp_path / "final")
        rebuilt = pf_keras.create_model(folder)
        assert pf_keras.build_record(rebuilt) == record
        np.testing.assert_array_equal(_outputs(rebuilt), _outputs(model))

    def test_models_without_a_record(self, tmp_path):
        direct = pf_keras.ResNet((1, 1, 1, 1), "max", width_mult=0.125, input_shape=(32, 32, 3), classes=3)
        assert pf_keras.build_record(direct) is None
        tensor = keras.Input((32, 32, 3))
        assert pf_keras.build_record(pf_keras.create_model("resnet50_max", **{**TINY, "input_shape": None},
                                                           input_tensor=tensor)) is None
        with pytest.raises(ValueError, match=r"carries no build record .*pass name, family and config"):
            write_preset(direct, tmp_path / "p")
        assert not (tmp_path / "p").exists()


class TestRunFolders:
    def test_a_run_folder_stands_for_its_final_preset(self, tmp_path):
        write_preset(pf_keras.create_model("resnet50_max", **TINY), tmp_path / "run" / "final")
        assert model_folder(tmp_path / "run") == str(tmp_path / "run" / "final")
        assert model_folder(tmp_path / "run" / "final") == str(tmp_path / "run" / "final")

    def test_a_run_from_before_final_is_one_line_saying_what_to_do(self, tmp_path):
        (tmp_path / "old").mkdir()
        (tmp_path / "old" / "model.json").write_text('{"name": "resnet50_max", "kwargs": {}}')
        (tmp_path / "old" / "final.weights.h5").write_bytes(b"")
        with pytest.raises(ValueError) as info:
            model_folder(tmp_path / "old")
        assert str(info.value) == (
            f"{tmp_path / 'old'} is a training run of an older pf-keras (model.json, no final/): rerun its "
            f"pf-keras-train command with --model_dir {tmp_path / 'old'}; it resumes at the last checkpoint and "
            f"writes the model folder final/ without training again. Received: {str(tmp_path / 'old')!r}")

    def test_unfinished_and_missing_folders(self, tmp_path):
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        with pytest.raises(ValueError, match=r"neither a preset folder nor a finished training run: pf-keras-train "
                                             r"writes the model folder final/ when it ends"):
            model_folder(tmp_path / "run")
        with pytest.raises(ValueError, match=r"^The model folder does not exist. Received: '.*nope'$"):
            model_folder(tmp_path / "nope")

    def test_model_kwargs_no_longer_carry_a_runs_record(self, tmp_path):
        path = tmp_path / "model.json"
        path.write_text(json.dumps({"name": "resnet50_max", "kwargs": {"classes": 10}}))
        with pytest.raises(ValueError, match=r"holds a training run's model.json, which is no longer read: pass the "
                                             r"run's model folder instead \(--model RUN/final"):
            parse_model_kwargs(str(path))
