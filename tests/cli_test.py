"""Tests of the pf_keras command lines (convert, profile); the docstring examples run in docstring_test.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import hostile_checkpoints as hostile
import numpy as np
import pytest
from conftest import FIXTURES, fill_disk, load_fixture, nchw_to_nhwc, state_dict_of
from torch_save_writer import save_state_dict

import pf_keras
from pf_keras import convert, profiling

PTH_MAX = os.path.join(FIXTURES, "pth", "resnet_max_small.pth")
SMALL_MAX = {
    "depths": [1, 2, 1, 1],
    "width_mult": 0.125,
    "classes": 10,
    "input_shape": [64, 64, 3],
    "classifier_activation": None,
}


class TestConvert:
    """``python -m pf_keras.convert``, called in-process through ``main(argv)`` (exit status + stderr)."""

    def _run(self, capsys, *args: str) -> tuple[int, str, str]:
        status = convert.main(list(args))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    def _argv(self, checkpoint: str, output, *extra: str) -> list[str]:
        return ["--model", "resnet50_max", "--checkpoint", checkpoint, "--output", str(output),
                "--model_kwargs", json.dumps(SMALL_MAX), *extra]  # fmt: skip

    def _one_line_error(self, status: int, err: str, *fragments: str) -> None:
        assert status == 2, err
        assert err.count("\n") == 1 and err.startswith("pf_keras.convert: error: "), err
        assert "Traceback" not in err
        for fragment in fragments:
            assert fragment in err, err

    def test_cli_writes_weights_that_reproduce_reference(self, tmp_path, capsys):
        out = tmp_path / "r50max.weights.h5"
        status, stdout, err = self._run(capsys, *self._argv(PTH_MAX, out))
        assert status == 0 and f"Wrote {out}: resnet50_max" in stdout, err
        _, arrays = load_fixture("resnet_max_small")
        model = pf_keras.create_model("resnet50_max", weights=str(out), **SMALL_MAX)
        np.testing.assert_allclose(model.predict(nchw_to_nhwc(arrays["x"]), verbose=0), arrays["logits"], atol=1e-4)
        assert os.listdir(tmp_path) == ["r50max.weights.h5"]  # no temporary file left

    def test_cli_reports_mismatch(self, tmp_path, capsys):
        argv = ["--model", "resnet50", "--checkpoint", PTH_MAX, "--output", str(tmp_path / "x.weights.h5"),
                "--model_kwargs", json.dumps(SMALL_MAX)]  # the checkpoint's size: only the block kind differs
        status, _, err = self._run(capsys, *argv)
        self._one_line_error(status, err, f"{PTH_MAX} does not fit model 'resnet50'", "layer1.0.conv_block.0.weight")
        assert not os.path.exists(tmp_path / "x.weights.h5")

    @pytest.mark.parametrize(
        "case",
        ["negative_stride", "view_longer_than_storage", "stride0_huge", "crc_error", "truncated_pickle",
         "data_zip_bomb", "missing_data_member", "storage_type_as_callable", "legacy_pickle"],
    )  # fmt: skip
    def test_hostile_checkpoint_is_one_line_and_exit_2(self, tmp_path, capsys, case):
        path, marker = str(tmp_path / f"{case}.pth"), str(tmp_path / "PWNED")
        hostile.BY_NAME[case].write(path, marker)
        status, _, err = self._run(capsys, *self._argv(path, tmp_path / "out.weights.h5"))
        self._one_line_error(status, err, path)
        assert re.search(hostile.BY_NAME[case].error, err), err
        assert not os.path.exists(marker) and not os.path.exists(tmp_path / "out.weights.h5")

    def test_debug_shows_the_traceback(self, tmp_path, capsys):
        path = str(tmp_path / "evil.pth")
        hostile.BY_NAME["negative_stride"].write(path, str(tmp_path / "PWNED"))
        status, _, err = self._run(capsys, *self._argv(path, tmp_path / "out.weights.h5"), "--debug")
        assert status == 2 and "Traceback (most recent call last)" in err and "CheckpointError" in err, err
        assert err.splitlines()[-1].startswith("pf_keras.convert: error: ")

    def test_values_are_checked_and_precision_loss_is_a_flag(self, tmp_path, capsys):
        sd = state_dict_of(load_fixture("resnet_max_small")[1])
        path = str(tmp_path / "f64.pth")
        save_state_dict(path, {**sd, "fc.bias": sd["fc.bias"].astype(np.float64) + 0.1}, keep_dtypes=True)
        out = tmp_path / "out.weights.h5"
        status, _, err = self._run(capsys, *self._argv(path, out))
        self._one_line_error(status, err, "fc.bias: float64 values not exactly representable in float32")
        status, _, err = self._run(capsys, *self._argv(path, out, "--allow_precision_loss"))
        assert status == 0 and out.exists(), err
        nan = str(tmp_path / "nan.pth")
        save_state_dict(nan, {**sd, "fc.weight": np.full_like(sd["fc.weight"], np.inf)})
        self._one_line_error(*self._run(capsys, *self._argv(nan, out))[::2], "fc.weight: 2560 NaN/Inf values")

    @pytest.mark.parametrize(
        "argv, fragment",
        [
            (["--model", "resnet50_max", "--checkpoint", "absent.pth", "--output", "x.weights.h5"], "does not exist"),
            (["--model", "nope", "--checkpoint", PTH_MAX, "--output", "x.weights.h5"], "Unknown model name"),
            (["--model", "resnet50_max", "--checkpoint", PTH_MAX, "--output", "x.h5"], "ending in '.weights.h5'"),
            (["--model", "resnet50_max", "--checkpoint", PTH_MAX, "--output", "x.weights.h5", "--model_kwargs", "{bad"],
             "model_kwargs"),
            (["--checkpoint", PTH_MAX, "--output", "x.weights.h5"], "the following arguments are required: --model"),
        ],
        ids=["missing_checkpoint", "unknown_model", "output_name", "bad_model_kwargs", "missing_flag"],
    )  # fmt: skip
    def test_user_errors_are_one_line_and_exit_2(self, tmp_path, capsys, monkeypatch, argv, fragment):
        monkeypatch.chdir(tmp_path)
        status, _, err = self._run(capsys, *argv)
        self._one_line_error(status, err, fragment)
        assert not os.path.exists(tmp_path / "x.weights.h5")

    def test_full_disk_leaves_the_previous_output_intact(self, small_disk, capsys):
        out = small_disk / "r50max.weights.h5"
        out.write_bytes(b"the previous version")
        fill_disk(small_disk, leave=16 << 10)  # the converted file is about 420 KB
        status, _, err = self._run(capsys, *self._argv(PTH_MAX, out))
        self._one_line_error(status, err, f"cannot write {out}", "ENOSPC")
        assert out.read_bytes() == b"the previous version"
        assert sorted(os.listdir(small_disk)) == ["filler.bin", "r50max.weights.h5"]  # no partial temporary file

    def test_hostile_checkpoint_never_kills_the_process(self, tmp_path):
        """The negative-stride file used to end in SIGSEGV: run the real command, check the exit status."""
        path = str(tmp_path / "evil.pth")
        hostile.BY_NAME["negative_stride"].write(path, str(tmp_path / "PWNED"))
        result = subprocess.run(
            [sys.executable, "-m", "pf_keras.convert", *self._argv(path, tmp_path / "out.weights.h5")],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1].startswith("pf_keras.convert: error: ")
        assert "Traceback" not in result.stderr and "has stride -1" in result.stderr

    def test_output_name_checked(self):
        with pytest.raises(ValueError, match="ending in '.weights.h5'. Received: output='x.h5'"):
            convert.convert("resnet50_max", PTH_MAX, "x.h5")


class TestProfile:
    @pytest.mark.large  # full-size resnet50_max
    def test_profile_cli_table(self, capsys):
        profiling.main(["--model", "resnet50_max", "--image_size", "224"])
        out = capsys.readouterr().out
        assert "| resnet50_max | 14.23 | 2.24 |" in out

    @pytest.mark.parametrize("argv, message", [
        (["--model", "nope"], "Unknown model name"),
        (["--pattern", "zzz*"], "No model name matches the pattern"),
        (["--model", "resnet50_max", "--image_size", "0"], r"`image_size` must be in 1..4096"),
        (["--model", "resnet50_max", "--image_size", "99999999999"], r"`image_size` must be in 1..4096"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ])
    def test_profile_cli_errors_are_one_line(self, capsys, argv, message):
        import re

        assert profiling.main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and re.search(message, err), err

    @pytest.mark.parametrize("command, argv, first", [
        ("pf-keras-profile", ["--model", "nope"], "pf-keras-profile: error: Unknown model name."),
        ("pf-keras-convert", ["--model", "resnet50_max", "--checkpoint", "missing.pth", "--output", "o.weights.h5"],
         "pf_keras.convert: error: "),
    ])
    def test_installed_library_commands_print_only_their_error(self, tmp_path, command, argv, first):
        import os
        import subprocess
        import sys

        env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "PF_KERAS"))}
        done = subprocess.run([os.path.join(os.path.dirname(sys.executable), command), *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and done.stderr.startswith(first), done.stderr[-3000:]
        assert len(done.stderr.splitlines()) == 1, done.stderr[-3000:]  # no TensorFlow start-up lines

    def test_profile_needs_known_size(self):
        model = pf_keras.ResNet50(include_top=False, depths=(1, 1, 1, 1), width_mult=0.125)
        with pytest.raises(ValueError, match="pass image_size"):
            pf_keras.profile(model)
        small = pf_keras.profile(model, image_size=64)
        assert small.input_shape == (64, 64, 3) and small.macs > 0
        assert pf_keras.profile(model, image_size=128).macs == pytest.approx(4 * small.macs, rel=1e-6)

