"""Tests of pf_keras_export.android_lib: the benchmark_model output parser and the command pieces (no phone)."""

from __future__ import annotations

import os

import pytest

from pf_keras_export import android_lib as android

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "benchmark_model")


def _read(name: str) -> str:
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read()


class TestParseBenchmarkOutput:
    def test_xnnpack_run(self):
        parsed = android.parse_benchmark_output(_read("resnet50_hybrid_fp32_xnnpack_4t.txt"))
        assert parsed["init_us"] == 187262 and parsed["first_inference_us"] == 33905
        assert parsed["warmup_avg_us"] == 24912.4 and parsed["inference_avg_us"] == 24247.9
        assert parsed["warmup"] == {"count": 21, "first": 33905, "curr": 24118, "min": 23807, "max": 33905,
                                    "avg": 24912.4, "std": 2108}
        assert parsed["inference"]["count"] == 50 and parsed["inference"]["std"] == 574
        assert parsed["model_size_mb"] == 69.1806
        assert (parsed["delegate"], parsed["delegate_kernels"]) == ("full", 1)
        assert parsed["memory_mb"] == {"delta": {"init": 142.902, "overall": 151.074}}

    def test_gpu_run_with_percentiles_and_partial_delegation(self):
        parsed = android.parse_benchmark_output(_read("resnet50_hybrid_int8_gpu_1t.txt"))
        assert parsed["inference"]["median"] == 10274 and parsed["inference"]["p95"] == 10902
        assert (parsed["delegate"], parsed["delegate_kernels"]) == ("partial", 3)
        assert parsed["memory_mb"]["peak"] == {"init": 245.375, "overall": 252.102}

    def test_failed_run(self):
        with pytest.raises(ValueError, match=r"no 'Inference timings in us' line .*Benchmarking failed"):
            android.parse_benchmark_output(_read("failed_run.txt"))

    def test_row_matches_the_host_table(self, tmp_path):
        from pf_keras_export.benchmark_lib import format_table, write_results

        parsed = android.parse_benchmark_output(_read("resnet50_hybrid_fp32_xnnpack_4t.txt"))
        row = android.row_from_output("/phone/resnet50_hybrid_fp32.tflite", parsed, threads=4, delegate="xnnpack",
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
        command = android.benchmark_command("/data/local/tmp/m.tflite", binary="/data/local/tmp/bm", threads=4,
                                            delegate="gpu", runs=20, warmup_runs=3)
        assert command == ["/data/local/tmp/bm", "--graph=/data/local/tmp/m.tflite", "--num_threads=4",
                           "--num_runs=20", "--warmup_runs=3", "--use_gpu=true"]
        with pytest.raises(ValueError, match=r"`delegate` must be one of .*Received: delegate='npu'"):
            android.benchmark_command("m", binary="b", threads=1, delegate="npu")

    def test_expand_files(self, tmp_path):
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "m_fp32.tflite").write_bytes(b"x")
        assert android.expand_files(str(tmp_path)) == [str(tmp_path / "m" / "m_fp32.tflite")]
        with pytest.raises(ValueError, match=r"`files` must be .tflite files or export folders. Received: 'nope.bin'"):
            android.expand_files("nope.bin")

    def test_missing_adb_and_binary(self, tmp_path):
        (tmp_path / "m_fp32.tflite").write_bytes(b"x")
        with pytest.raises(ValueError, match=r"`binary` must be the benchmark_model executable"):
            android.run_on_device(str(tmp_path), binary=str(tmp_path / "missing"), output_dir=str(tmp_path / "o"))
        (tmp_path / "bm").write_bytes(b"x")
        with pytest.raises(ValueError, match=r"`adb` must be the Android platform-tools adb executable"):
            android.run_on_device(str(tmp_path), binary=str(tmp_path / "bm"), output_dir=str(tmp_path / "o"),
                                  adb="no-such-adb-here")
