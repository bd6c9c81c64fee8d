"""Tests of pf_keras_export.benchmark_lib on tiny models: table, CSV, PNG and JSON (times are not asserted)."""

from __future__ import annotations

import csv
import json
import os
import re

import pytest

import pf_keras
from pf_keras_export import benchmark as benchmark_cli
from pf_keras_export import litert
from pf_keras_export.benchmark_lib import benchmark, benchmark_export_dir, cpu_model, resolve_models, time_tflite
from pf_keras_export.build import build_model


class TestBenchmark:
    def test_tiny_models_write_every_output(self, tmp_path, small_resnet_kwargs):
        # Two small registry models (the keras.applications baselines are checked in test_baselines:
        # exporting a full-width MobileNetV2 here would double this test's time for the same code path).
        result = benchmark("resnet50,resnet50_max", output_dir=str(tmp_path), formats="fp32,int8",
                           image_size=32, threads="1,2", warmup=1, runs=3, model_kwargs=small_resnet_kwargs,
                           num_calibration=2, verbose=False)
        rows = result["rows"]
        assert [(r["model"], r["format"], r["threads"]) for r in rows] == [
            (m, f, t) for m in ("resnet50", "resnet50_max") for f in ("fp32", "int8") for t in (1, 2)
        ]
        profiles = {name: pf_keras.profile(build_model(name, model_kwargs=small_resnet_kwargs, image_size=32))
                    for name in ("resnet50", "resnet50_max")}
        reference = {(r["format"], r["threads"]): r["median_ms"] for r in rows if r["model"] == "resnet50"}
        for row in rows:
            assert row["min_ms"] <= row["median_ms"] <= row["p90_ms"]
            assert (row["params"], row["macs"]) == (profiles[row["model"]].params, profiles[row["model"]].macs)
            expected = reference[row["format"], row["threads"]] / row["median_ms"]
            assert row["speedup_vs_resnet50"] == pytest.approx(expected)
            assert row["size_bytes"] == os.path.getsize(row["path"])
        with open(result["paths"]["markdown"]) as f:
            table = f.read()
        assert "| model | format | threads |" in table and cpu_model() in table and "TensorFlow" in table
        with open(result["paths"]["csv"]) as f:
            assert len(list(csv.DictReader(f))) == len(rows)
        with open(result["paths"]["png"], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        with open(result["paths"]["json"]) as f:
            meta = json.load(f)["meta"]
        assert meta["cpu"] and meta["versions"]["ai_edge_litert"] and meta["date"]

    def test_export_dir_mode(self, hybrid_export, tmp_path):
        export_dir = os.path.dirname(os.path.dirname(hybrid_export["files"][1]["path"]))
        result = benchmark_export_dir(export_dir, output_dir=str(tmp_path), formats="fp32,int8", warmup=0, runs=2,
                                      verbose=False)
        assert [(r["model"], r["format"]) for r in result["rows"]] == [("resnet50_hybrid", "fp32"),
                                                                      ("resnet50_hybrid", "int8")]
        assert result["rows"][0]["macs"] == hybrid_export["macs"]

    def test_cli_on_an_export_dir(self, hybrid_export, tmp_path, capsys):
        export_dir = os.path.dirname(os.path.dirname(hybrid_export["files"][1]["path"]))
        status = benchmark_cli.main(["--export_dir", export_dir, "--formats", "fp32", "--runs", "2",
                                     "--output_dir", str(tmp_path)])
        assert status == 0
        assert "| resnet50_hybrid | fp32 | 1 |" in capsys.readouterr().out
        status = benchmark_cli.main(["--export_dir", export_dir, "--formats", "fp32", "--runs", "2", "--json",
                                     "--output_dir", str(tmp_path)])
        assert status == 0
        assert [r["format"] for r in json.loads(capsys.readouterr().out)["rows"]] == ["fp32"]

    def test_a_moved_export_folder_is_timed(self, hybrid_export, tmp_path):
        import shutil

        folder = os.path.dirname(hybrid_export["files"][1]["path"])
        shutil.copytree(folder, tmp_path / "moved" / "resnet50_hybrid")
        result = benchmark_export_dir(str(tmp_path / "moved"), output_dir=str(tmp_path / "out"), formats="fp16",
                                      warmup=0, runs=1, verbose=False)
        assert result["rows"][0]["path"].startswith(str(tmp_path / "moved"))

    def test_a_file_changed_after_its_validation_is_refused(self, hybrid_export, tmp_path, capsys):
        import shutil

        folder = os.path.dirname(hybrid_export["files"][1]["path"])
        copy = tmp_path / "copy" / "resnet50_hybrid"
        shutil.copytree(folder, copy)
        report = json.loads((copy / "report.json").read_text())
        entry = next(e for e in report["files"] if e["format"] == "fp32")
        assert entry["sha256"] == litert.content_sha256(entry["path"])  # recorded when the file was validated
        path = copy / os.path.basename(entry["path"])
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2] ^= 0x01  # one bit in the weights: still a loadable model, not the validated one
        path.write_bytes(bytes(blob))
        with pytest.raises(ValueError, match=r"resnet50_hybrid_fp32.tflite is not the file .*report.json validated "
                                             r"\(its SHA-256 differs\)"):
            benchmark_export_dir(str(tmp_path / "copy"), output_dir=str(tmp_path / "out"), formats="fp32",
                                 warmup=0, runs=1, verbose=False)
        status = benchmark_cli.main(["--export_dir", str(tmp_path / "copy"), "--formats", "fp32", "--runs", "1",
                                     "--output_dir", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1 and "its SHA-256 differs" in err[0]
        # A report written before digests were recorded: its size still catches a truncated file.
        for e in report["files"]:
            del e["sha256"]
        (copy / "report.json").write_text(json.dumps(report))
        path.write_bytes(bytes(blob[: len(blob) // 2]))
        with pytest.raises(ValueError, match=r"\(its size differs\)"):
            benchmark_export_dir(str(tmp_path / "copy"), output_dir=str(tmp_path / "out"), formats="fp32",
                                 warmup=0, runs=1, verbose=False)
        # The same bytes again pass.
        shutil.copy(entry["path"], path)
        rows = benchmark_export_dir(str(tmp_path / "copy"), output_dir=str(tmp_path / "out"), formats="fp32",
                                    warmup=0, runs=1, verbose=False)["rows"]
        assert [r["format"] for r in rows] == ["fp32"]

    def test_damaged_report(self, tmp_path):
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "report.json").write_text('{"model": "m", "files": [')
        with pytest.raises(ValueError, match=r"cannot read the export report .*report.json \(JSONDecodeError"):
            benchmark_export_dir(str(tmp_path), output_dir=str(tmp_path / "out"))
        (tmp_path / "m" / "report.json").write_text('{"model": "m"}')
        with pytest.raises(ValueError, match=r"is not a usable export report: `input_shape` must be"):
            benchmark_export_dir(str(tmp_path), output_dir=str(tmp_path / "out"))
        (tmp_path / "m" / "report.json").unlink()
        os.mkfifo(tmp_path / "m" / "report.json")  # a plain open() waits for a writer forever
        with pytest.raises(ValueError, match=r"cannot read the export report .* \(NotRegularFileError: .*a FIFO"):
            benchmark_export_dir(str(tmp_path), output_dir=str(tmp_path / "out"))

    @pytest.mark.large  # full-size keras.applications baselines
    def test_baselines(self):
        import keras

        for name, application in (("keras_mobilenetv2", keras.applications.MobileNetV2),
                                  ("keras_resnet50", keras.applications.ResNet50)):
            model = build_model(name, image_size=32)
            reference = application(weights=None, input_shape=(32, 32, 3))
            assert model.input_shape == (None, 32, 32, 3) and model.count_params() == reference.count_params()
            keras.utils.clear_session()
        with pytest.raises(ValueError, match=r"Baselines take no weights file and only float input"):
            build_model("keras_resnet50", input_type="uint8")

    def test_a_training_runs_model_folder(self, tmp_path, small_resnet_kwargs):
        from pf_keras.weights.preset import write_preset

        write_preset(build_model("resnet50_max", model_kwargs=small_resnet_kwargs, image_size=32),
                     tmp_path / "run" / "final")  # as pf-keras-train writes it
        run = str(tmp_path / "run")
        result = benchmark(f"resnet50,{run}", output_dir=str(tmp_path / "out"), formats="fp32", image_size=32,
                           warmup=0, runs=1, model_kwargs=small_resnet_kwargs, verbose=False)
        row = result["rows"][1]
        params = pf_keras.profile(pf_keras.create_model(str(tmp_path / "run" / "final"))).params
        assert (row["model"], row["params"]) == (run, params) and row["params"] != result["rows"][0]["params"]
        label = os.path.normpath(run).strip(os.sep).replace(os.sep, "_")  # a file name, not a path
        assert row["path"] == os.path.join(str(tmp_path / "out"), "files", f"{label}_fp32.tflite")

    def test_errors(self, tmp_path, hybrid_export):
        with pytest.raises(ValueError, match=r"`models` must be names from .*Received: models=\['resnet18'\]"):
            benchmark("resnet18", output_dir=str(tmp_path))
        (tmp_path / "old_run").mkdir()
        (tmp_path / "old_run" / "model.json").write_text("{}")
        with pytest.raises(ValueError, match=r"old_run is a training run of an older pf-keras"):
            benchmark(str(tmp_path / "old_run"), output_dir=str(tmp_path))
        with pytest.raises(ValueError, match=r"`formats` must be a non-empty subset"):
            benchmark("resnet50", output_dir=str(tmp_path), formats="saved_model")
        with pytest.raises(ValueError, match=r"`export_dir` must hold the export tool's output"):
            benchmark_export_dir(str(tmp_path), output_dir=str(tmp_path))
        with pytest.raises(ValueError, match=r"`threads` and `runs` must be >= 1 .*Received: threads=0"):
            time_tflite(hybrid_export["files"][1]["path"], threads=0)
        names, skipped = resolve_models(None)
        assert names[0] == "resnet50" and "keras_resnet50" in names and not set(names) & set(skipped)


def _copy_export(hybrid_export, root) -> str:
    """A copy of the hybrid export under ``root``/export (``root``/export/resnet50_hybrid/...); returns the folder."""
    import shutil

    folder = os.path.join(root, "export", "resnet50_hybrid")
    shutil.copytree(os.path.dirname(hybrid_export["files"][1]["path"]), folder)
    return folder


def _fp32(report: dict) -> dict:
    return next(e for e in report["files"] if e["format"] == "fp32")


def _escape(report: dict, folder: str) -> None:
    import shutil

    os.makedirs(os.path.join(folder, "..", "..", "elsewhere"))
    shutil.copy(os.path.join(folder, "resnet50_hybrid_int8.tflite"),
                os.path.join(folder, "..", "..", "elsewhere", "evil_fp32.tflite"))
    report["model"] = "../../elsewhere/evil"
    del _fp32(report)["sha256"], _fp32(report)["size_bytes"]


class TestOnlyProvenFilesAreTimed:
    @pytest.mark.parametrize("edit, message", [
        (lambda r, d: [_fp32(r).pop(k) for k in ("sha256", "size_bytes")], r"records neither a SHA-256 nor a size"),
        (lambda r, d: _fp32(r).update(passed=False, failures=["outside tolerance"]),
         r"resnet50_hybrid_fp32.tflite did not pass its validation in .*report.json \(outside tolerance\)"),
        (_escape, r"`model` must be a plain name \(no folders\). Received: model='../../elsewhere/evil'"),
        (lambda r, d: r.update(params="abc"), r"`params` must be a finite non-negative number"),
        (lambda r, d: r.update(params=float("nan")), r"`params` must be a finite non-negative number"),
        (lambda r, d: r.update(params=-5), r"`params` must be a finite non-negative number"),
        (lambda r, d: r.update(macs="1e9"), r"`macs` must be a finite non-negative number"),
        (lambda r, d: r.update(input_shape=[None, 32, 3]), r"`input_shape` must be a list of positive ints"),
        (lambda r, d: r.update(input_shape=[]), r"`input_shape` must be a list of positive ints"),
        (lambda r, d: r["files"].append(dict(_fp32(r), sha256="0" * 64)), r"`files` names a format twice"),
        (lambda r, d: _fp32(r).update(sha256=12345), r"the fp32 entry's `sha256` must be a hex string"),
    ], ids=["no_digest", "failed", "model_outside", "params_str", "params_nan", "params_negative", "macs_str",
            "shape_null", "shape_empty", "duplicate_entry", "sha256_int"])
    def test_unproven_files_and_damaged_reports_are_refused_before_timing(self, hybrid_export, tmp_path, capsys,
                                                                          edit, message):
        folder = _copy_export(hybrid_export, tmp_path)
        report = json.loads(open(os.path.join(folder, "report.json")).read())
        edit(report, folder)
        with open(os.path.join(folder, "report.json"), "w") as f:
            json.dump(report, f)
        argv = ["--export_dir", str(tmp_path / "export"), "--formats", "fp32", "--runs", "1",
                "--output_dir", str(tmp_path / "out")]
        assert benchmark_cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(message, err[0]), err
        assert not (tmp_path / "out" / "benchmark.md").exists()

    @pytest.mark.parametrize("formats", ["fp32,fp16", None])
    def test_a_file_missing_from_its_report_is_refused_not_skipped(self, hybrid_export, tmp_path, capsys, formats):
        # What an export of other formats into the same folder leaves: the new report lists only its own files.
        folder = _copy_export(hybrid_export, tmp_path)
        report = json.loads(open(os.path.join(folder, "report.json")).read())
        report["files"] = [e for e in report["files"] if e["format"] != "fp32"]
        with open(os.path.join(folder, "report.json"), "w") as f:
            json.dump(report, f)
        argv = ["--export_dir", str(tmp_path / "export"), "--runs", "1", "--output_dir", str(tmp_path / "out")]
        assert benchmark_cli.main(argv + (["--formats", formats] if formats else [])) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(r"resnet50_hybrid_fp32.tflite is not in .*report.json .*unproven", err[0])
        assert not (tmp_path / "out" / "benchmark.md").exists()
        assert benchmark_cli.main(argv + ["--formats", "fp16"]) == 0  # its format left out: the rest is timed

    def test_only_the_checked_bytes_are_timed_when_the_file_is_replaced_meanwhile(self, hybrid_export, tmp_path,
                                                                                  monkeypatch):
        # Another export of the same name finishing while the benchmark runs replaces the file between two
        # thread counts: every row must still time (and describe) the bytes whose digest was checked.
        import shutil

        from pf_keras_export import benchmark_lib

        folder = _copy_export(hybrid_export, tmp_path)
        fp32, int8 = (os.path.join(folder, f"resnet50_hybrid_{f}.tflite") for f in ("fp32", "int8"))
        checked = open(fp32, "rb").read()
        real, calls = benchmark_lib.time_interleaved, []

        def then_replaced(paths, **kwargs):
            calls.append(kwargs["threads"])
            result = real(paths, **kwargs)
            shutil.copy(int8, fp32 + ".new")
            os.replace(fp32 + ".new", fp32)  # an atomic replace, as the export tool writes
            return result

        monkeypatch.setattr(benchmark_lib, "time_interleaved", then_replaced)
        rows = benchmark_export_dir(str(tmp_path / "export"), output_dir=str(tmp_path / "out"), formats="fp32",
                                    threads="1,2", warmup=0, runs=1, verbose=False)["rows"]
        assert calls == [1, 2] and open(fp32, "rb").read() != checked
        expected = litert.xnnpack_coverage(checked)
        for row in rows:
            assert row["size_bytes"] == len(checked)
            assert row["cpu_ops"] == expected["cpu_ops"] and row["fully_delegated"] == expected["fully_delegated"]
        assert os.path.getsize(int8) != len(checked)  # the replaced file would show in size_bytes

    def test_threads_are_bounded(self, hybrid_export, tmp_path, capsys):
        assert benchmark_cli.main(["--threads", "2199023255552", "--output_dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "argument --threads: must be thread counts from 1 to 1024" in err[0]
        with pytest.raises(ValueError, match=r"`threads` must be ints from 1 to 1024"):
            benchmark_export_dir(os.path.dirname(os.path.dirname(hybrid_export["files"][1]["path"])),
                                 output_dir=str(tmp_path), threads=[1, 2 ** 41])


def test_two_model_folders_with_the_same_label_are_two_files(tmp_path, small_resnet_kwargs):
    from pf_keras.weights.preset import write_preset

    folders = [str(tmp_path / "px" / "a_b"), str(tmp_path / "px_a" / "b")]  # both px_a_b as a file name
    for folder, classes in zip(folders, (10, 4), strict=True):
        write_preset(build_model("resnet50_max", model_kwargs=dict(small_resnet_kwargs, classes=classes),
                                 image_size=32), folder)
    rows = benchmark(",".join(folders + folders[:1]), output_dir=str(tmp_path / "out"), formats="fp32",
                     image_size=32, warmup=0, runs=1, verbose=False)["rows"]
    assert [r["model"] for r in rows] == folders  # a folder given twice is timed once
    assert rows[0]["path"] != rows[1]["path"] and os.path.basename(rows[1]["path"]) == (
        os.path.basename(rows[0]["path"]).replace("_fp32", "_2_fp32"))
    for row, classes in zip(rows, (10, 4), strict=True):  # each row timed its own model
        assert row["params"] == pf_keras.profile(pf_keras.create_model(row["model"])).params
        _, output = litert.io_details(litert.interpreter(row["path"]))
        assert output["shape"][-1] == classes
