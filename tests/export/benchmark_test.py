"""Tests of export/benchmark.py on tiny models: table, CSV, PNG and JSON (times are not asserted)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from export.benchmark import benchmark, benchmark_export_dir, cpu_model, resolve_models, time_tflite

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TestBenchmark:
    def test_tiny_models_write_every_output(self, tmp_path, small_resnet_kwargs):
        result = benchmark("resnet50,resnet50_hybrid,keras_mobilenetv2", output_dir=str(tmp_path), formats="fp32,int8",
                           image_size=32, threads="1,2", warmup=1, runs=3, model_kwargs=small_resnet_kwargs,
                           num_calibration=2, verbose=False)
        rows = result["rows"]
        assert len(rows) == 3 * 2 * 2
        assert {(r["model"], r["format"], r["threads"]) for r in rows} >= {("keras_mobilenetv2", "int8", 2)}
        for row in rows:
            assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"] and row["macs"] > 0 and row["params"] > 0
            assert row["speedup_vs_resnet50"] > 0
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

    def test_cli_on_an_export_dir(self, hybrid_export, tmp_path):
        export_dir = os.path.dirname(os.path.dirname(hybrid_export["files"][1]["path"]))
        command = [sys.executable, "export/benchmark.py", "--export_dir", export_dir, "--formats", "fp32",
                   "--runs", "2", "--output_dir", str(tmp_path)]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "| resnet50_hybrid | fp32 | 1 |" in result.stdout

    def test_errors(self, tmp_path, hybrid_export):
        with pytest.raises(ValueError, match=r"`models` must be names from .*Received: models=\['resnet18'\]"):
            benchmark("resnet18", output_dir=str(tmp_path))
        with pytest.raises(ValueError, match=r"`formats` must be a non-empty subset"):
            benchmark("resnet50", output_dir=str(tmp_path), formats="saved_model")
        with pytest.raises(ValueError, match=r"`export_dir` must hold export.py output"):
            benchmark_export_dir(str(tmp_path), output_dir=str(tmp_path))
        with pytest.raises(ValueError, match=r"`threads` and `runs` must be >= 1 .*Received: threads=0"):
            time_tflite(hybrid_export["files"][1]["path"], threads=0)
        names, skipped = resolve_models(None)
        assert names[0] == "resnet50" and "keras_resnet50" in names and not set(names) & set(skipped)
