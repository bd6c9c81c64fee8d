"""Tests of the pf_keras command lines (convert, profile) and of the docstring examples."""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import FIXTURES, load_fixture, nchw_to_nhwc

import pf_keras
from pf_keras import convert, profiling

SMALL_MAX = {
    "depths": [1, 2, 1, 1],
    "width_mult": 0.125,
    "classes": 10,
    "input_shape": [64, 64, 3],
    "classifier_activation": None,
}


class TestConvert:
    def test_cli_writes_weights_that_reproduce_reference(self, tmp_path):
        out = tmp_path / "r50max.weights.h5"
        import json

        subprocess.run(
            [
                sys.executable,
                "-m",
                "pf_keras.convert",
                "--model",
                "resnet50_max",
                "--checkpoint",
                os.path.join(FIXTURES, "pth", "resnet_max_small.pth"),
                "--output",
                str(out),
                "--model_kwargs",
                json.dumps(SMALL_MAX),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        _, arrays = load_fixture("resnet_max_small")
        model = pf_keras.create_model("resnet50_max", weights=str(out), **SMALL_MAX)
        np.testing.assert_allclose(model.predict(nchw_to_nhwc(arrays["x"]), verbose=0), arrays["logits"], atol=1e-4)

    def test_cli_reports_mismatch(self, tmp_path):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pf_keras.convert",
                "--model",
                "resnet50",
                "--checkpoint",
                os.path.join(FIXTURES, "pth", "resnet_max_small.pth"),
                "--output",
                str(tmp_path / "x.weights.h5"),
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode != 0
        assert "Checkpoint does not fit model 'resnet50'" in result.stderr
        assert "layer1.0.conv_block.0.weight" in result.stderr

    def test_output_name_checked(self):
        with pytest.raises(ValueError, match="ending in '.weights.h5'. Received: output='x.h5'"):
            convert.convert("resnet50_max", os.path.join(FIXTURES, "pth", "resnet_max_small.pth"), "x.h5")


class TestProfile:
    def test_profile_cli_table(self, capsys):
        profiling.main(["--model", "resnet50_max", "--image_size", "224"])
        out = capsys.readouterr().out
        assert "| resnet50_max | 14.23 | 2.24 |" in out

    def test_profile_needs_known_size(self):
        model = pf_keras.ResNet50(include_top=False, depths=(1, 1, 1, 1), width_mult=0.125)
        with pytest.raises(ValueError, match="pass image_size"):
            pf_keras.profile(model)
        small = pf_keras.profile(model, image_size=64)
        assert small.input_shape == (64, 64, 3) and small.macs > 0
        assert pf_keras.profile(model, image_size=128).macs == pytest.approx(4 * small.macs, rel=1e-6)


def _pf_keras_modules():
    for info in pkgutil.walk_packages(pf_keras.__path__, "pf_keras."):
        yield importlib.import_module(info.name)


@pytest.mark.parametrize("module", list(_pf_keras_modules()), ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, extraglobs={"np": np}, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
