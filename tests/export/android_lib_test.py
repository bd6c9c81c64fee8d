"""Tests of pf_keras_export.android_lib: the benchmark_model output parser and the command pieces, and whole runs
on a stand-in phone (``fake_adb.sh``: a folder of this machine, shell commands through ``sh -c``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from pf_keras_export import android, android_lib

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(os.path.dirname(HERE), "fixtures", "benchmark_model")


def _read(name: str) -> str:
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read()


class TestParseBenchmarkOutput:
    def test_xnnpack_run(self):
        parsed = android_lib.parse_benchmark_output(_read("resnet50_hybrid_fp32_xnnpack_4t.txt"))
        assert parsed["init_us"] == 187262 and parsed["first_inference_us"] == 33905
        assert parsed["warmup_avg_us"] == 24912.4 and parsed["inference_avg_us"] == 24247.9
        assert parsed["warmup"] == {"count": 21, "first": 33905, "curr": 24118, "min": 23807, "max": 33905,
                                    "avg": 24912.4, "std": 2108}
        assert parsed["inference"]["count"] == 50 and parsed["inference"]["std"] == 574
        assert parsed["model_size_mb"] == 69.1806
        assert (parsed["delegate"], parsed["delegate_kernels"]) == ("full", 1)
        assert parsed["memory_mb"] == {"delta": {"init": 142.902, "overall": 151.074}}

    def test_gpu_run_with_percentiles_and_partial_delegation(self):
        parsed = android_lib.parse_benchmark_output(_read("resnet50_hybrid_int8_gpu_1t.txt"))
        assert parsed["inference"]["median"] == 10274 and parsed["inference"]["p95"] == 10902
        assert (parsed["delegate"], parsed["delegate_kernels"]) == ("partial", 3)
        assert parsed["memory_mb"]["peak"] == {"init": 245.375, "overall": 252.102}

    def test_failed_run(self):
        with pytest.raises(ValueError, match=r"no 'Inference timings in us' line .*Benchmarking failed"):
            android_lib.parse_benchmark_output(_read("failed_run.txt"))

    def test_row_matches_the_host_table(self, tmp_path):
        from pf_keras_export.benchmark_lib import format_table, write_results

        parsed = android_lib.parse_benchmark_output(_read("resnet50_hybrid_fp32_xnnpack_4t.txt"))
        row = android_lib.row_from_output("/phone/resnet50_hybrid_fp32.tflite", parsed, threads=4, delegate="xnnpack",
                                      runs=50, warmup=5)
        key = (row["model"], row["format"], row["delegate"], row["threads"])
        assert key == ("resnet50_hybrid", "fp32", "xnnpack", 4)
        assert row["median_ms"] == pytest.approx(24.2479) and row["min_ms"] == pytest.approx(23.651)
        assert row["fully_delegated"] is True
        table = format_table([row], {"device": "Pixel", "runtime": "benchmark_model"}, latency_label="avg (ms)")
        assert "| resnet50_hybrid | fp32 / xnnpack | 4 |" in table
        paths = write_results([row], {"device": "Pixel"}, str(tmp_path), prefix="device_benchmark")
        assert all(os.path.getsize(p) > 0 for p in paths.values())


class TestCommands:
    def test_benchmark_command(self):
        command = android_lib.benchmark_command("/data/local/tmp/m.tflite", binary="/data/local/tmp/bm", threads=4,
                                            delegate="gpu", runs=20, warmup_runs=3)
        assert command == ["/data/local/tmp/bm", "--graph=/data/local/tmp/m.tflite", "--num_threads=4",
                           "--num_runs=20", "--warmup_runs=3", "--use_gpu=true"]
        with pytest.raises(ValueError, match=r"`delegate` must be one of .*Received: delegate='npu'"):
            android_lib.benchmark_command("m", binary="b", threads=1, delegate="npu")

    def test_expand_files(self, tmp_path):
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "m_fp32.tflite").write_bytes(b"x")
        assert android_lib.expand_files(str(tmp_path)) == [str(tmp_path / "m" / "m_fp32.tflite")]
        with pytest.raises(ValueError, match=r"`files` must be .tflite files or export folders. Received: 'nope.bin'"):
            android_lib.expand_files("nope.bin")

    def test_missing_adb_and_binary(self, tmp_path):
        (tmp_path / "m_fp32.tflite").write_bytes(b"x")
        with pytest.raises(ValueError, match=r"`binary` must be the benchmark_model executable"):
            android_lib.run_on_device(str(tmp_path), binary=str(tmp_path / "missing"), output_dir=str(tmp_path / "o"))
        (tmp_path / "bm").write_bytes(b"x")
        with pytest.raises(ValueError, match=r"`adb` must be the Android platform-tools adb executable"):
            android_lib.run_on_device(str(tmp_path), binary=str(tmp_path / "bm"), output_dir=str(tmp_path / "o"),
                                  adb="no-such-adb-here")


class TestHostileOutputs:
    @pytest.mark.parametrize("text, shown", [
        ("Inference timings in us: Init: 1, First inference: 1, Warmup (avg): 1, Inference (avg): 1" + "0" * 400,
         "'1000"),  # 1e400 is inf: "median_ms": Infinity is not JSON
        ("Inference timings in us: Init: 1.2.3, First inference: 9, Warmup (avg): 8, Inference (avg): 8", "'1.2.3'"),
        ("count=50 first=900 min=- avg=860.5\nInference timings in us: Init: 1, First inference: 1, Warmup (avg): "
         "1, Inference (avg): 1", "'-'"),
    ])
    def test_malformed_and_non_finite_numbers_are_refused(self, text, shown):
        with pytest.raises(ValueError, match=rf"malformed or non-finite number: {shown}"):
            android_lib.parse_benchmark_output(text)

    def test_parse_reads_a_bounded_regular_file(self, tmp_path, monkeypatch, capsys):
        text = _read("resnet50_hybrid_fp32_xnnpack_4t.txt")
        (tmp_path / "out.txt").write_text(text + "x" * 2048)
        monkeypatch.setattr(android_lib, "MAX_OUTPUT_BYTES", len(text) + 1024)
        assert android.main(["--parse", str(tmp_path / "out.txt")]) == 2
        assert "file too large" in capsys.readouterr().err
        os.mkfifo(tmp_path / "fifo.txt")  # a plain open() waits for a writer forever
        assert android.main(["--parse", str(tmp_path / "fifo.txt")]) == 2
        err = capsys.readouterr().err
        assert "not a regular file (a FIFO)" in err and err.count("\n") == 1


def _phone(tmp_path, monkeypatch, files: dict[str, bytes]) -> dict:
    """A stand-in phone (adb, benchmark_model, the device folder) and LiteRT files ``{relative path: bytes}``."""
    bin_dir, device = tmp_path / "bin", tmp_path / "bin" / "device"
    device.mkdir(parents=True)
    for name in ("fake_adb.sh", "fake_benchmark_model.sh"):
        shutil.copy(os.path.join(HERE, name), bin_dir / name)
        os.chmod(bin_dir / name, 0o755)
    for relative, content in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(content)
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    return {"binary": str(bin_dir / "fake_benchmark_model.sh"), "adb": str(bin_dir / "fake_adb.sh"),
            "device_dir": str(device), "output_dir": str(tmp_path / "phone"), "threads": (1,),
            "delegates": ("xnnpack",), "verbose": False}


def _report(content: bytes, **fields) -> str:
    entry = {"format": "fp32", "sha256": hashlib.sha256(content).hexdigest(), "size_bytes": len(content),
             "passed": True}
    return json.dumps({"model": "m", "input_shape": [32, 32, 3], "params": 1000, "macs": 2_000_000, "files": [entry],
                       **fields})


class TestRunOnAPhone:
    def test_device_commands_quote_file_names(self, tmp_path, monkeypatch):
        names = ["x;touch INJECTED;.tflite", "two words.tflite", "$(touch INJECTED2).tflite"]
        setup = _phone(tmp_path, monkeypatch, {f"m/{name}": b"model" for name in names})
        result = android_lib.run_on_device(str(tmp_path / "m"), **setup)
        assert sorted(os.path.basename(r["path"]) for r in result["rows"]) == sorted(names)
        assert [p for p in tmp_path.rglob("INJECTED*")] == []
        assert os.listdir(setup["device_dir"]) == ["benchmark_model"]  # each file removed, the spaced one too
        raw = tmp_path / "phone" / "device_outputs" / "two words_xnnpack_1t.txt"
        assert "--graph=" + setup["device_dir"] + "/two words.tflite --num_threads=1" in raw.read_text()

    def test_files_with_the_same_name_are_refused(self, tmp_path, monkeypatch):
        setup = _phone(tmp_path, monkeypatch, {"a/m_fp32.tflite": b"a", "b/m_fp32.tflite": b"b"})
        with pytest.raises(ValueError, match=r"`files` holds two files named 'm_fp32.tflite' \(.*a/m_fp32.tflite, "
                                             r".*b/m_fp32.tflite\)"):
            android_lib.run_on_device(f"{tmp_path / 'a'},{tmp_path / 'b'}", **setup)
        # The same file reached twice (its folder and itself) is timed once.
        result = android_lib.run_on_device(f"{tmp_path / 'a'},{tmp_path / 'a' / 'm_fp32.tflite'}", **setup)
        assert len(result["rows"]) == 1

    def test_params_come_only_from_the_report_that_proves_the_file(self, tmp_path, monkeypatch):
        setup = _phone(tmp_path, monkeypatch, {"e/m/m_fp32.tflite": b"validated bytes"})
        (tmp_path / "e" / "m" / "report.json").write_text(_report(b"validated bytes"))
        row = android_lib.run_on_device(str(tmp_path / "e"), **setup)["rows"][0]
        assert (row["params"], row["macs"], row["image_size"]) == (1000, 2_000_000, 32)
        (tmp_path / "e" / "m" / "m_fp32.tflite").write_bytes(b"another file")  # a file the report never saw
        result = android_lib.run_on_device(str(tmp_path / "e"), **setup)
        assert (result["rows"][0]["params"], result["rows"][0]["macs"]) == (None, None)
        table = (tmp_path / "phone" / "device_benchmark.md").read_text()
        assert "| m | fp32 / xnnpack | 1 | ? | ? |" in table
        stored = json.loads((tmp_path / "phone" / "device_benchmark.json").read_text(),
                            parse_constant=lambda name: pytest.fail(f"non-standard JSON: {name}"))
        assert stored["rows"][0]["median_ms"] == 0.8605

    @pytest.mark.parametrize("fields", [{"params": "abc"}, {"macs": "1e9"}, {"params": -5},
                                        {"input_shape": [None, 32, 3]}, {"input_shape": []}, {"model": "../m"}])
    def test_a_damaged_report_is_refused_before_the_phone_is_used(self, tmp_path, monkeypatch, fields):
        setup = _phone(tmp_path, monkeypatch, {"e/m/m_fp32.tflite": b"validated bytes"})
        (tmp_path / "e" / "m" / "report.json").write_text(_report(b"validated bytes", **fields))
        with pytest.raises(ValueError, match=r"report.json is not a usable export report: `(params|macs|input_shape"
                                             r"|model)` must be"):
            android_lib.run_on_device(str(tmp_path / "e"), **setup)
        assert not (tmp_path / "adb.log").exists()

    @pytest.mark.parametrize("mode, message", [
        ("big", r"printed more than 16 MiB .*stopped it"),
        ("inf", r"malformed or non-finite number"),
    ])
    def test_hostile_benchmark_output(self, tmp_path, monkeypatch, mode, message):
        setup = _phone(tmp_path, monkeypatch, {"m_fp32.tflite": b"model"})
        monkeypatch.setenv("FAKE_BM", mode)
        with pytest.raises(ValueError, match=message):
            android_lib.run_on_device(str(tmp_path / "m_fp32.tflite"), **setup)
        assert not (tmp_path / "phone" / "device_benchmark.json").exists()

    def test_cli_bounds_the_thread_count(self, capsys):
        assert android.main(["--files", "x", "--binary", "y", "--threads", "2199023255552"]) == 2
        err = capsys.readouterr().err
        assert "argument --threads: must be thread counts from 1 to 1024" in err and err.count("\n") == 1
