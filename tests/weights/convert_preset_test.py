"""Tests of ``python -m pf_keras.convert --preset_dir``: the command line writes preset folders."""

from __future__ import annotations

import json
import os

from conftest import FIXTURES

import pf_keras
from pf_keras import convert
from pf_keras.weights.download import sha256_of
from pf_keras.weights.preset import read_preset

PTH = os.path.join(FIXTURES, "pth", "resnet_max_small.pth")  # R50-max, depths (1, 2, 1, 1), width 0.125, 10 classes
KWARGS = {"depths": [1, 2, 1, 1], "width_mult": 0.125, "classes": 10, "input_shape": [64, 64, 3]}


class TestConvertCli:
    def test_preset_dir(self, tmp_path, capsys):
        folder = tmp_path / "preset"
        status = convert.main(["--model", "resnet50_max", "--checkpoint", PTH, "--preset_dir", str(folder),
                               "--model_kwargs", json.dumps(KWARGS)])
        assert status == 0 and f"Wrote {folder}: resnet50_max" in capsys.readouterr().out
        assert read_preset(folder).metadata["source_sha256"] == sha256_of(PTH)
        assert pf_keras.create_model(str(folder)).output_shape == (None, 10)

    def test_output_or_preset_dir(self, tmp_path, capsys):
        assert convert.main(["--model", "resnet50_max", "--checkpoint", PTH]) == 2
        assert "exactly one of --output" in capsys.readouterr().err
