"""Tests of the export command lines: flags, the error policy, atomic results on a full disk, quiet output.

Most run ``main(argv)`` in-process; two run a real process where the process is the point: the
installed console script from another folder with TensorFlow's start-up lines hidden, and the
repository script ``python export/export.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import fill_disk

from pf_keras import fileio
from pf_keras.cli import parse_model_kwargs
from pf_keras_export import android, benchmark, benchmark_lib, validate
from pf_keras_export import export as export_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--model", "resnet50_max", "--model_kwargs", "depths=[1,1,1,1],width_mult=0.125,classes=10", "--image_size",
        "32"]
COMMON = {"--help", "--json", "--verbose", "--debug"}
MODEL = {"--model", "--model_kwargs", "--weights", "--image_size", "--input_type", "--seed"}
FLAGS = {
    export_cli: COMMON | MODEL | {"--formats", "--dataset", "--data_dir", "--num_calibration", "--int8_input_type",
                                  "--int8_output_type", "--require_full_delegation", "--batch_size", "--output_dir"},
    validate: COMMON | MODEL | {"--require_full_delegation", "--batch_size", "--output_dir"},
    benchmark: COMMON | {"--model", "--model_kwargs", "--image_size", "--formats", "--export_dir", "--threads",
                         "--warmup", "--runs", "--num_calibration", "--litert_torch_python", "--pflayer_dir",
                         "--output_dir"},
    android: COMMON | {"--files", "--binary", "--threads", "--delegates", "--runs", "--warmup", "--adb", "--serial",
                       "--parse", "--output_dir"},
}
NOISE = re.compile(r"absl::InitializeLog|oneDNN|cuInit|cuda|cpu_feature_guard|rebuild TensorFlow|XNNPACK delegate|"
                   r"^[IWE]0000 ", re.MULTILINE)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("tool", list(FLAGS), ids=lambda m: m.PROG)
def test_help_lists_exactly_the_tools_flags(tool, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {tool.PROG} ")
    assert set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_]*", out)) == FLAGS[tool]


class TestModelKwargsGrammar:
    """The one --model_kwargs grammar (pf_keras.cli.parse_model_kwargs): JSON object, k=v pairs, JSON file."""

    def test_the_three_forms_agree(self, tmp_path):
        expected = {"depths": [1, 1, 1, 1], "width_mult": 0.125, "input_shape": [64, 64, 3], "name": "tiny"}
        (tmp_path / "kwargs.json").write_text(json.dumps(expected))
        assert parse_model_kwargs(json.dumps(expected)) == expected
        assert parse_model_kwargs("depths=[1,1,1,1], width_mult=0.125,input_shape=(64,64,3),name=tiny") == expected
        assert parse_model_kwargs(str(tmp_path / "kwargs.json")) == expected
        assert parse_model_kwargs("") == parse_model_kwargs(None) == {}

    @pytest.mark.parametrize("text, message", [
        ("[1, 2]", r"must be a JSON object, k=v pairs"),
        ("width_mult", r"must be a JSON object, k=v pairs \(k=v,k2=v2\) or a JSON file path"),
        ("{'depths': 1}", r"must be a JSON object, k=v pairs or a JSON file \(Expecting property name"),
        ('{"a": 1', r"must be a JSON object, k=v pairs or a JSON file \("),
        ("runs/x/model.json", r"JSON file does not exist"),
    ])
    def test_errors(self, text, message):
        with pytest.raises(ValueError, match=message):
            parse_model_kwargs(text)

    def test_file_holding_a_list(self, tmp_path):
        (tmp_path / "k.json").write_text("[1]")
        with pytest.raises(ValueError, match=r"file must hold a JSON object"):
            parse_model_kwargs(str(tmp_path / "k.json"))


class TestErrorPolicy:
    @pytest.mark.parametrize("argv, message", [
        (["--model", "resnet50", "--formats", "fp64", "--output_dir", "x"], r"`formats` must be a non-empty subset"),
        (["--model", "resnet50", "--model_kwargs", "depths", "--output_dir", "x"], r"`model_kwargs` must be a JSON"),
        (["--model", "resnet51", "--output_dir", "x"], r"Unknown model name.*Received: name='resnet51'"),
        (["--model", "resnet50", "--weights", "missing.weights.h5", "--output_dir", "x"], r"`weights` file"),
        (["--model", "resnet50", "--image_size", "0", "--output_dir", "x"], r"argument --image_size: must be a pos"),
        (["--output_dir", "x"], r"the following arguments are required: --model"),
        (["--model", "resnet50", "--output_dir", "x", "--no_such_flag"], r"unrecognized arguments: --no_such_flag"),
        (["--model", "resnet50", "--model_kwargs", "name=other", "--output_dir", "x"],
         r"`model_kwargs` cannot set \['name'\]: the tool sets them"),
        (["--model", "resnet50", "--model_kwargs", "weights=x.pth", "--output_dir", "x"],
         r"`model_kwargs` cannot set \['weights'\]"),
        (["--model", "keras_resnet50", "--model_kwargs", "input_tensor=1", "--output_dir", "x"],
         r"`model_kwargs` cannot set \['input_tensor'\]"),
        (["--model", "resnet50", "--model_kwargs", "input_shape=32", "--output_dir", "x"],
         r"`model_kwargs` input_shape must be three positive ints \(H, W, C\). Received: input_shape=32"),
    ])
    def test_user_errors_are_one_line_and_exit_2(self, argv, message, capsys, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        assert export_cli.main(argv) == 2
        line = _one_line(capsys.readouterr().err)
        assert line.startswith("pf-keras-export: error: ") and re.search(message, line), line

    def test_debug_shows_the_traceback(self, capsys, tmp_path):
        assert export_cli.main(["--model", "resnet51", "--output_dir", str(tmp_path), "--debug"]) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and err.rstrip().endswith("Received: name='resnet51'")

    def test_other_tools_follow_it(self, capsys, tmp_path):
        assert benchmark.main(["--export_dir", str(tmp_path), "--output_dir", str(tmp_path / "b")]) == 2
        assert "`export_dir` must hold the export tool's output" in _one_line(capsys.readouterr().err)
        assert benchmark.main(["--threads", "0"]) == 2
        assert "argument --threads: must be comma-separated positive ints" in _one_line(capsys.readouterr().err)
        assert android.main(["--files", str(tmp_path)]) == 2
        assert "--files and --binary are required" in _one_line(capsys.readouterr().err)
        assert android.main(["--parse", str(tmp_path / "missing.txt")]) == 2
        assert _one_line(capsys.readouterr().err).startswith("pf-keras-android: error: FileNotFoundError")
        assert validate.main(TINY + ["--output_dir", str(tmp_path)]) == 2
        assert "No exported files of 'resnet50_max' found" in _one_line(capsys.readouterr().err)

    def test_android_parse(self, capsys):
        fixture = os.path.join(ROOT, "tests", "fixtures", "benchmark_model", "resnet50_hybrid_fp32_xnnpack_4t.txt")
        assert android.main(["--parse", fixture]) == 0
        assert json.loads(capsys.readouterr().out)["inference_avg_us"] == 24247.9


class TestExportAndValidate:
    def test_export_then_validate_and_a_failed_check_exits_1(self, tmp_path, capsys):
        out = str(tmp_path / "out")
        assert export_cli.main(TINY + ["--formats", "saved_model,fp32", "--output_dir", out]) == 0
        printed = capsys.readouterr().out
        assert "| fp32 |" in printed and "| ok |" in printed
        assert sorted(os.listdir(os.path.join(out, "resnet50_max"))) == ["report.json", "resnet50_max_fp32.tflite",
                                                                         "saved_model"]
        with open(os.path.join(out, "resnet50_max", "report.json")) as f:
            exported = json.load(f)
        assert validate.main(TINY + ["--output_dir", out, "--json"]) == 0  # same seed: the same model
        report = json.loads(capsys.readouterr().out)
        assert report["passed"] and [e["format"] for e in report["files"]] == ["saved_model", "fp32"]
        kept = ("build", "params", "macs", "int8")  # the export's fields validation does not recompute
        assert {k: report[k] for k in kept} == {k: exported[k] for k in kept} and report["params"] > 0
        benchmark_dir = str(tmp_path / "bench")
        assert benchmark.main(["--export_dir", out, "--runs", "1", "--warmup", "0", "--output_dir", benchmark_dir]) == 0
        assert f"| resnet50_max | fp32 | 1 | {report['params'] / 1e6:.2f} |" in capsys.readouterr().out
        # Another seed is another model: every file fails, exit 1 with one line naming the report.
        assert validate.main(TINY + ["--output_dir", out, "--seed", "1"]) == 1
        report_path = os.path.join(out, "resnet50_max", "report.json")
        line = _one_line(capsys.readouterr().err)
        assert line == (f"pf-keras-validate: Exported files failed validation: saved_model (outside tolerance), "
                        f"fp32 (outside tolerance). Report: {report_path}")
        with open(report_path) as f:
            assert json.load(f)["passed"] is False


class TestOneAtATime:
    def test_one_export_or_validate_per_model_folder_and_stale_temporaries_go(self, tmp_path, capsys):
        from pf_keras_training.lock import FolderLock

        out = tmp_path / "out"
        folder = out / "resnet50_max"
        folder.mkdir(parents=True)
        stale = folder / f".resnet50_max_fp32.tflite{fileio.TEMP_MARK}k1.tflite"  # a killed export's
        stale.write_bytes(b"half a file")
        scratch = folder / f".scratch{fileio.TEMP_MARK}k2" / "batch1_0"  # and its batch-1 SavedModel
        scratch.mkdir(parents=True)
        with FolderLock(str(folder), busy="unused"):  # another export or validate writing there (its own fd)
            assert export_cli.main(TINY + ["--formats", "fp32", "--output_dir", str(out)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and re.search(r"out/resnet50_max is in use by another pf-keras-export or "
                                               r"pf-keras-validate of this model", err[0]), err
            assert sorted(os.listdir(folder)) == [stale.name, scratch.parent.name]  # nothing written or removed
        assert export_cli.main(TINY + ["--formats", "fp32", "--output_dir", str(out)]) == 0
        assert sorted(os.listdir(folder)) == ["report.json", "resnet50_max_fp32.tflite"]
        with FolderLock(str(folder), busy="unused"):
            assert validate.main(TINY + ["--output_dir", str(out)]) == 2
            assert "is in use by another pf-keras-export or pf-keras-validate" in capsys.readouterr().err
        assert validate.main(TINY + ["--output_dir", str(out)]) == 0


def _temp_files(folder) -> list[str]:
    return [name for _, dirs, names in os.walk(folder) for name in dirs + names if fileio.TEMP_MARK in name]


class TestFullDisk:
    def test_export_keeps_the_previous_files(self, small_disk, capsys):
        folder = small_disk / "out" / "resnet50_max"
        folder.mkdir(parents=True)
        (folder / "resnet50_max_fp32.tflite").write_bytes(b"previous tflite")
        (folder / "saved_model").mkdir()
        (folder / "saved_model" / "previous.txt").write_text("previous SavedModel")
        fill_disk(small_disk, leave=32 * 1024)  # the tiny fp32 file is ~370 KB, its SavedModel ~1.2 MB
        for formats in ("fp32", "saved_model"):
            assert export_cli.main(TINY + ["--formats", formats, "--output_dir", str(small_disk / "out")]) == 2
            line = _one_line(capsys.readouterr().err)
            assert line.startswith("pf-keras-export: error: cannot write ") and "ENOSPC" in line, line
            assert "the previous version, if any, is intact" in line
        assert (folder / "resnet50_max_fp32.tflite").read_bytes() == b"previous tflite"
        assert os.listdir(folder / "saved_model") == ["previous.txt"]
        assert not (folder / "report.json").exists() and _temp_files(small_disk) == []

    def test_benchmark_results_keep_the_previous_files(self, small_disk):
        (small_disk / "benchmark.md").write_text("previous table")
        row = {"model": "m", "format": "fp32", "threads": 1, "image_size": 32, "params": 10, "macs": 10 ** 6,
               "size_bytes": 10, "median_ms": 1.0, "p90_ms": 1.2, "mean_ms": 1.1, "min_ms": 0.9, "runs": 2,
               "warmup": 0, "fully_delegated": True, "cpu_ops": [], "path": "m_fp32.tflite"}
        fill_disk(small_disk, leave=0)
        with pytest.raises(fileio.WriteError, match=r"cannot write .*benchmark.md \(ENOSPC"):
            benchmark_lib.write_results([row], {"cpu": "test"}, str(small_disk))
        assert (small_disk / "benchmark.md").read_text() == "previous table" and _temp_files(small_disk) == []


def _env_without_tf_settings() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "PF_KERAS"))}


class TestProcesses:
    def test_installed_command_from_another_folder_is_quiet(self, tmp_path):
        command = [os.path.join(os.path.dirname(sys.executable), "pf-keras-export"), *TINY, "--formats", "int8",
                   "--num_calibration", "2", "--output_dir", "out"]
        result = subprocess.run(command, cwd=tmp_path, env=_env_without_tf_settings(), capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "| int8 |" in result.stdout and (tmp_path / "out" / "resnet50_max" / "report.json").is_file()
        assert NOISE.search(result.stderr) is None and result.stderr == "", result.stderr

    def test_a_foreign_keras_backend_and_an_ascii_terminal_change_nothing(self, tmp_path):
        # A KERAS_BACKEND set for other work would build the model on JAX (a TFLite file of variable ops, "ok");
        # an ASCII-only terminal failed the command after its files were written, on printing a path with é.
        command = [os.path.join(os.path.dirname(sys.executable), "pf-keras-export"), *TINY, "--formats", "fp32",
                   "--output_dir", "sortie_é"]
        env = dict(_env_without_tf_settings(), KERAS_BACKEND="jax", PYTHONIOENCODING="ascii")
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=300)
        stderr = result.stderr.decode()
        assert result.returncode == 0, stderr[-3000:]
        assert stderr == "pf-keras-export: note: KERAS_BACKEND=jax ignored: this command runs on TensorFlow\n"
        assert b"sortie_\\xe9" in result.stdout  # escaped, not an error
        report = json.loads((tmp_path / "sortie_é" / "resnet50_max" / "report.json").read_text())
        (entry,) = report["files"]
        assert entry["passed"] and entry["xnnpack"]["fully_delegated"]
        assert not {"VAR_HANDLE", "READ_VARIABLE"} & set(entry["ops"])

    def test_repository_script(self):
        result = subprocess.run([sys.executable, "export/export.py", "--model", "resnet50", "--formats", "fp64",
                                 "--output_dir", "unused"], cwd=ROOT, env=_env_without_tf_settings(),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2
        assert result.stderr.startswith("pf-keras-export: error: `formats` must be a non-empty subset")
        assert result.stderr.count("\n") == 1 and result.stdout == ""
