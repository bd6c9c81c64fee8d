"""Tests of pf_keras/weights/preset.py and ``python -m pf_keras.convert --preset_dir``: preset folders."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import FIXTURES

import pf_keras
from pf_keras.fileio import WriteError
from pf_keras.weights.download import sha256_of
from pf_keras.weights.preset import convert_to_preset, read_preset

PTH = os.path.join(FIXTURES, "pth", "resnet_max_small.pth")  # R50-max, depths (1, 2, 1, 1), width 0.125, 10 classes
KWARGS = {"depths": [1, 2, 1, 1], "width_mult": 0.125, "classes": 10, "input_shape": [64, 64, 3],
          "classifier_activation": None}
BUILD = {k: tuple(v) if isinstance(v, list) else v for k, v in KWARGS.items()}


def _outputs(model) -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    return model.predict(x, verbose=0)


class TestPresetFolders:
    def test_write_then_load_by_folder_and_by_name(self, tmp_path):
        folder = tmp_path / "r50max"
        converted = convert_to_preset("resnet50_max", PTH, folder, model_kwargs=KWARGS,
                                      source_url="https://example.invalid/r50max.pth")
        assert sorted(os.listdir(folder)) == ["config.json", "metadata.json", "model.weights.h5"]
        config = json.loads((folder / "config.json").read_text())
        assert config["model"] == "resnet50_max" and config["family"] == "resnet"
        assert config["config"]["block_kinds"] == "max" and config["config"]["depths"] == [1, 2, 1, 1]
        metadata = json.loads((folder / "metadata.json").read_text())
        assert metadata["source_sha256"] == sha256_of(PTH) and metadata["source_file"] == "resnet_max_small.pth"
        assert metadata["source_url"] == "https://example.invalid/r50max.pth" and metadata["spec"] == "resnet50_max"
        assert metadata["eval_transform"]["interpolation"] == "bilinear" and metadata["license"] == "Apache-2.0"
        assert metadata["parameter_count"] == converted.count_params()

        reference = pf_keras.create_model("resnet50_max", weights=PTH, **BUILD)
        by_folder = pf_keras.create_model(str(folder))
        by_name = pf_keras.create_model("resnet50_max", weights=str(folder))
        assert by_folder.name == by_name.name == "resnet50_max"
        np.testing.assert_array_equal(_outputs(by_folder), _outputs(reference))
        np.testing.assert_array_equal(_outputs(by_name), _outputs(reference))
        # Arguments without weights of their own may still be chosen at load time.
        with_pixels = pf_keras.create_model(str(folder), include_preprocessing=True)
        pixels = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
        np.testing.assert_allclose(with_pixels.predict(pixels, verbose=0),
                                   reference.predict(pf_keras.preprocess_input(pixels), verbose=0), atol=1e-4)

    def test_published_architecture_records_the_official_url(self, tmp_path, monkeypatch):
        # An architecture override is not the official file: no URL is claimed for it.
        convert_to_preset("resnet50_max", PTH, tmp_path / "a", model_kwargs=KWARGS)
        assert read_preset(tmp_path / "a").metadata["source_url"] is None

    def test_preset_of_another_model_is_refused(self, tmp_path):
        convert_to_preset("resnet50_max", PTH, tmp_path / "p", model_kwargs=KWARGS)
        with pytest.raises(ValueError, match="holds 'resnet50_max', not 'resnet50_hybrid'"):
            pf_keras.create_model("resnet50_hybrid", weights=str(tmp_path / "p"))
        with pytest.raises(ValueError, match="brings its own weights"):
            pf_keras.create_model(str(tmp_path / "p"), weights=PTH)

    def test_failed_conversion_keeps_the_previous_preset(self, tmp_path):
        folder = tmp_path / "p"
        convert_to_preset("resnet50_max", PTH, folder, model_kwargs=KWARGS)
        before = (folder / "model.weights.h5").read_bytes()
        with pytest.raises(ValueError, match="missing keys"):  # the hybrid has convs the max checkpoint lacks
            convert_to_preset("resnet50_hybrid", PTH, folder, model_kwargs=KWARGS)
        assert (folder / "model.weights.h5").read_bytes() == before
        assert sorted(os.listdir(tmp_path)) == ["p"]  # no temporary folder left

    def test_full_disk_leaves_nothing(self, small_disk):
        # 256 KiB cannot hold the weights (~0.5 MB): ENOSPC, one line, no folder under the final name.
        with pytest.raises(WriteError, match="ENOSPC"):
            convert_to_preset("resnet50_max", PTH, small_disk / "p", model_kwargs=KWARGS)
        assert os.listdir(small_disk) == []

    @pytest.mark.parametrize(
        "files,match",
        [
            ({"config.json": "{not json"}, "Cannot read preset file .*config.json"),
            ({"config.json": '{"model": "x", "family": "cnn", "config": {}}'}, "family': one of"),
            ({"config.json": '["resnet50"]'}, "must hold a JSON object"),
            ({"config.json": '{"model": "resnet50", "family": "resnet", "config": {"weights": "/etc/x.pth"}}'},
             "must not set `weights`"),
            ({"config.json": '{"model": "resnet50", "family": "resnet", "config": {"x": '
              + "[" * 100_000 + "]" * 100_000 + "}}"}, "config.json: JSON nested too deeply"),
            ({"config.json": '{"model": "resnet50", "family": "resnet", "config": {}}',
              "metadata.json": "[" * 100_000 + "]" * 100_000}, "metadata.json: JSON nested too deeply"),
            ({"config.json": '{"model": "resnet50", "family": "resnet", "config": {"include_top": "no"}}'},
             "`include_top` must be True or False"),
            ({"config.json": '{"model": "resnet50", "family": "resnet", "config": {"include_preprocessing": "false"}}'},
             "`include_preprocessing` must be True or False"),
        ],
    )
    def test_malformed_presets_are_one_line_errors(self, tmp_path, files, match):
        folder = tmp_path / "bad"
        folder.mkdir()
        for name in ("config.json", "metadata.json", "model.weights.h5"):
            (folder / name).write_text(files.get(name, "{}"))
        with pytest.raises(ValueError, match=match):
            pf_keras.create_model(str(folder))

    def test_a_preset_naming_itself_or_another_folder_is_refused(self, tmp_path):
        for folder, target in (("a", "a"), ("b", "c"), ("c", "b")):  # itself, and two naming each other
            (tmp_path / folder).mkdir()
            (tmp_path / folder / "config.json").write_text(json.dumps(
                {"model": str(tmp_path / target), "family": None, "config": {}}))
            for name in ("metadata.json", "model.weights.h5"):
                (tmp_path / folder / name).write_text("{}")
        for folder in ("a", "b"):
            with pytest.raises(ValueError, match="`model` must name a registered model, not a path"):
                pf_keras.create_model(str(tmp_path / folder))

    def test_a_fifo_config_is_refused_without_blocking(self, tmp_path):
        folder = tmp_path / "p"
        folder.mkdir()
        for name in ("metadata.json", "model.weights.h5"):
            (folder / name).write_text("{}")
        os.mkfifo(folder / "config.json")  # not a preset folder (its config is no file), and nothing blocks
        with pytest.raises(ValueError, match="Unknown model name"):
            pf_keras.create_model(str(folder))
        with pytest.raises(ValueError, match="config.json is missing"):
            read_preset(folder)

    def test_incomplete_folder(self, tmp_path):
        (tmp_path / "config.json").write_text("{}")
        with pytest.raises(ValueError, match="metadata.json.*model.weights.h5.*is missing|model.weights.h5 is missing"):
            pf_keras.create_model(str(tmp_path))
