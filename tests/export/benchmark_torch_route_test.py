"""Tests of the litert-torch rows of pf-keras-benchmark (pf_keras_export.torch_route and benchmark_lib).

CI has no torch: the plumbing runs against ``stand_in_litert_torch.py``, a real program given
as the "litert-torch Python" that answers the converter's commands with the port's own LiteRT
files. The real conversion runs only when ``PF_KERAS_LITERT_TORCH_PYTHON`` (a Python with torch,
litert-torch, torchao) and ``PF_KERAS_PFLAYER_DIR`` (a PfLayer checkout) are set.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import sys

import pytest
from conftest import fill_disk

from pf_keras import fileio
from pf_keras_export import benchmark as benchmark_cli
from pf_keras_export import litert, torch_route
from pf_keras_export.benchmark_lib import add_route_ratios, benchmark
from pf_keras_export.torch_route import TorchRoute, official_file

STAND_IN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stand_in_litert_torch.py")


@pytest.fixture(name="stand_in")
def _stand_in(tmp_path, monkeypatch) -> TorchRoute:
    """A TorchRoute whose "Python" is the stand-in program; its conversions are logged to ``log.txt``."""
    program = tmp_path / "litert-python"
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN}" "$@"\n')
    program.chmod(0o755)
    (tmp_path / "PfLayer").mkdir()
    monkeypatch.setenv("STAND_IN_LOG", str(tmp_path / "log.txt"))
    return TorchRoute(str(program), str(tmp_path / "PfLayer"))


def _conversions(route: TorchRoute) -> list[str]:
    log = os.path.join(os.path.dirname(route.python), "log.txt")
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return f.read().splitlines()


class TestTorchRouteRows:
    def test_rows_beside_the_port_with_ratios(self, tmp_path, stand_in, monkeypatch, small_resnet_kwargs):
        out = tmp_path / "bench"
        monkeypatch.setenv("STAND_IN_SOURCE_DIR", str(out / "files"))  # the port's files, copied as "official"
        monkeypatch.setenv("STAND_IN_MISSING", "resnet50_max")  # e.g. a checkout without its module
        result = benchmark("resnet50,resnet50_max", output_dir=str(out), formats="fp32,int8", image_size=32,
                           warmup=1, runs=3, model_kwargs=small_resnet_kwargs, num_calibration=2,
                           torch_route=stand_in, verbose=False)
        rows = result["rows"]
        assert [(r["model"], r["format"], r["route"]) for r in rows] == [
            (m, f, route) for m in ("resnet50", "resnet50_max") for f in ("fp32", "int8")
            for route in ("port", "litert-torch")
        ]
        assert sorted(_conversions(stand_in)) == ["resnet50 fp32 32 None", "resnet50 int8 32 2"]
        pairs = {(r["model"], r["format"], r["route"]): r for r in rows}
        for model, fmt in (("resnet50", "fp32"), ("resnet50", "int8")):
            port, official = pairs[model, fmt, "port"], pairs[model, fmt, "litert-torch"]
            assert official["path"] == os.path.join(str(out), "files", f"{model}_litert_torch_{fmt}.tflite")
            assert official["size_bytes"] == port["size_bytes"]  # the stand-in copied the port's file
            assert (official["params"], official["macs"]) == (port["params"], port["macs"])
            ratio = port["median_ms"] / official["median_ms"]
            assert port["port_over_litert_torch"] == official["port_over_litert_torch"] == pytest.approx(ratio)
        for fmt in ("fp32", "int8"):
            failed = pairs["resnet50_max", fmt, "litert-torch"]
            assert failed["median_ms"] is None and failed["port_over_litert_torch"] is None
            assert failed["failure"] == "official model unavailable (ModuleNotFoundError: stand-in)"
            assert pairs["resnet50_max", fmt, "port"]["port_over_litert_torch"] is None
        # resnet50's official row is the reference of the official rows' "x vs resnet50".
        assert pairs["resnet50", "fp32", "litert-torch"]["speedup_vs_resnet50"] == 1.0
        with open(result["paths"]["markdown"]) as f:
            table = f.read()
        assert "| port / litert-torch | XNNPACK |" in table and "torch stand-in, litert-torch stand-in" in table
        assert "| resnet50_max | official via litert-torch int8 | 1 |" in table
        assert "| - | - | - | failed: official model unavailable (ModuleNotFoundError: stand-in) |" in table
        with open(result["paths"]["csv"]) as f:
            written = list(csv.DictReader(f))
        assert [r["route"] for r in written] == [r["route"] for r in rows]
        assert float(written[1]["port_over_litert_torch"]) == pytest.approx(rows[1]["port_over_litert_torch"])
        with open(result["paths"]["json"]) as f:
            meta = json.load(f)["meta"]
        assert meta["litert_torch"]["torch"] == "stand-in" and "PT2E" in meta["litert_torch"]["int8"]

    def test_cache(self, tmp_path, stand_in, monkeypatch, hybrid_export):
        source = os.path.dirname(hybrid_export["files"][1]["path"])
        monkeypatch.setenv("STAND_IN_SOURCE_DIR", source)
        files = tmp_path / "files"
        files.mkdir()

        def get(precision="fp32", size=64, num=2):
            return official_file(stand_in, "resnet50_hybrid", precision, files_dir=str(files), image_size=size,
                                 num_calibration=num, calibration=lambda s: _normalised(num, s))

        first = get()
        with open(first.path, "rb") as f, open(os.path.join(source, "resnet50_hybrid_fp32.tflite"), "rb") as g:
            assert f.read() == g.read()
        assert get().record == first.record and len(_conversions(stand_in)) == 1  # reused
        get(size=32)  # another image size: converted again
        assert _conversions(stand_in)[-1] == "resnet50_hybrid fp32 32 None"
        get(precision="int8", num=3)
        get(precision="int8", num=3)
        get(precision="int8", num=4)  # another calibration count
        assert _conversions(stand_in)[2:] == ["resnet50_hybrid int8 64 3", "resnet50_hybrid int8 64 4"]
        dynamic = get(precision="dynamic", num=3)  # dynamic range: no calibration images, none in the cache key
        assert get(precision="dynamic", num=4).record == dynamic.record
        assert _conversions(stand_in)[4:] == ["resnet50_hybrid dynamic 64 None"]
        assert dynamic.record["num_calibration"] is None and dynamic.path.endswith("_litert_torch_dynamic.tflite")
        with open(first.path, "r+b") as f:  # damaged in place (same size): the hash no longer matches
            f.write(b"\0" * 64)
        get(size=32)
        assert len(_conversions(stand_in)) == 6
        monkeypatch.setenv("STAND_IN_FAIL", "resnet50_hybrid:fp32")
        os.remove(first.path)
        failed = get()
        assert failed.path is None and failed.failure == ("conversion failed (exit 1): litert_torch_convert: "
                                                          "RuntimeError: stand-in cannot convert resnet50_hybrid fp32")
        monkeypatch.delenv("STAND_IN_FAIL")
        monkeypatch.setenv("STAND_IN_GARBAGE", "1")
        bad = get()
        assert bad.path is None and bad.failure.startswith("conversion wrote no LiteRT file (not a .tflite")
        assert not os.path.exists(first.path)

    def test_full_disk_keeps_the_previous_file(self, small_disk, stand_in, monkeypatch, hybrid_export):
        monkeypatch.setenv("STAND_IN_SOURCE_DIR", os.path.dirname(hybrid_export["files"][1]["path"]))
        cached = small_disk / "resnet50_hybrid_litert_torch_fp32.tflite"
        cached.write_bytes(b"previous file")  # no record: not reused, to be replaced
        fill_disk(small_disk, leave=0)
        with pytest.raises(fileio.WriteError, match=r"cannot write .*resnet50_hybrid_litert_torch_fp32.tflite "
                                                    r"\(ENOSPC"):
            official_file(stand_in, "resnet50_hybrid", "fp32", files_dir=str(small_disk), image_size=64,
                          num_calibration=2, calibration=lambda s: _normalised(2, s))
        assert cached.read_bytes() == b"previous file"
        assert sorted(os.listdir(small_disk)) == ["filler.bin", "resnet50_hybrid_litert_torch_fp32.tflite"]

    def test_environment_errors(self, tmp_path, stand_in, monkeypatch):
        missing = TorchRoute(str(tmp_path / "no-python"), stand_in.pflayer_dir)
        with pytest.raises(ValueError, match=r"`litert_torch_python` must be a Python with torch and litert-torch "
                                             r"\(FileNotFoundError: .*Received: litert_torch_python="):
            torch_route.check(missing)
        # This environment's Python runs the real, shipped converter, which finds no torch here.
        without_torch = TorchRoute(sys.executable, stand_in.pflayer_dir)
        with pytest.raises(ValueError, match=r"\(litert_torch_convert: ModuleNotFoundError: No module named "):
            torch_route.check(without_torch)
        with pytest.raises(ValueError, match=r"`pflayer_dir` must be a PfLayer checkout\. Received: pflayer_dir="):
            torch_route.check(TorchRoute(stand_in.python, str(tmp_path / "nowhere")))
        monkeypatch.setenv("STAND_IN_MISSING", "resnet50,resnet50_max,resnet50_hybrid,vit_ti_max,vit_s_max,vit_b_max,"
                                                "pit_ti_max,pit_s_max,pit_b_max")  # all the stand-in has
        with pytest.raises(ValueError, match=r"`pflayer_dir` must be a PfLayer checkout \(ModuleNotFoundError"):
            torch_route.check(stand_in)
        # Checked before any export: no file was written.
        with pytest.raises(ValueError, match=r"`pflayer_dir` must be a PfLayer checkout"):
            benchmark("resnet50", output_dir=str(tmp_path / "out"), torch_route=stand_in, verbose=False)
        assert not os.path.exists(tmp_path / "out" / "files")

    def test_cli_errors_are_one_line(self, tmp_path, stand_in, capsys):
        out = str(tmp_path / "out")
        cases = [
            (["--litert_torch_python", str(tmp_path / "no-python"), "--pflayer_dir", stand_in.pflayer_dir],
             "`litert_torch_python` must be a Python with torch and litert-torch"),
            (["--litert_torch_python", stand_in.python], "--litert_torch_python and --pflayer_dir go together"),
            (["--litert_torch_python", stand_in.python, "--pflayer_dir", stand_in.pflayer_dir, "--model_kwargs",
              "width_multiplier=0.25"], "it does not apply with --export_dir or --model_kwargs"),
        ]
        for argv, message in cases:
            assert benchmark_cli.main(["--model", "resnet50", "--output_dir", out, *argv]) == 2
            err = capsys.readouterr().err
            assert message in err and len(err.strip().splitlines()) == 1
        assert not os.path.exists(os.path.join(out, "files"))

    def test_converter_imports_neither_pf_keras_nor_tensorflow(self):
        with open(torch_route.CONVERTER) as f:
            tree = ast.parse(f.read())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     and node.module}
        assert not imported & {"pf_keras", "pf_keras_export", "tensorflow", "keras"}
        assert {"torch", "litert_torch"} <= imported


def test_int8_mixed_is_compared_with_the_official_int8():
    def row(fmt, route, ms):
        return {"model": "vit_s_max", "format": fmt, "route": route, "threads": 1, "image_size": 224, "median_ms": ms}

    rows = [row("int8", "port", 40.0), row("int8", "litert-torch", 10.0), row("int8_mixed", "port", 9.0),
            row("fp32", "port", 70.0), row("dynamic", "port", 15.0), row("dynamic", "litert-torch", None)]
    add_route_ratios(rows)
    assert [r["port_over_litert_torch"] for r in rows] == [4.0, 4.0, 0.9, None, None, None]


def _normalised(num: int, size: int):
    from pf_keras_export.images import load_images, model_inputs

    return model_inputs(load_images(None, num, size), takes_pixels=False)


_PYTHON = os.environ.get("PF_KERAS_LITERT_TORCH_PYTHON")
_PFLAYER = os.environ.get("PF_KERAS_PFLAYER_DIR")


@pytest.mark.skipif(not (_PYTHON and _PFLAYER), reason="needs PF_KERAS_LITERT_TORCH_PYTHON and PF_KERAS_PFLAYER_DIR")
class TestRealLitertTorch:
    def test_official_resnet50_max_fp32_and_int8(self, tmp_path):
        route = TorchRoute(_PYTHON, _PFLAYER)
        info = torch_route.check(route)
        assert {info["models"][m] for m in ("resnet50", "resnet50_max", "resnet50_hybrid")} == {"ok"}
        for precision in ("fp32", "int8", "dynamic"):
            made = official_file(route, "resnet50_max", precision, files_dir=str(tmp_path), image_size=64,
                                 num_calibration=2, calibration=lambda s: _normalised(2, s))
            assert made.failure is None, made.failure
            assert made.record["litert_torch"] == info["litert_torch"]
            with open(made.path, "rb") as f:
                content = f.read()
            ops, _ = litert.tflite_ops(content)
            detail = litert.interpreter(content).get_input_details()[0]
            assert list(detail["shape"]) == [1, 3, 64, 64]  # NCHW, as published
            assert ops["CONV_2D"] == 37 and ops["MAX_POOL_2D"] >= 16  # 1 + 16 x 2 + 4 convs (BN folded); max pools
            if precision == "int8":  # full integer, int8 in and out, like the port's int8 file
                assert detail["dtype"].__name__ == "int8" and "DEQUANTIZE" not in ops
            if precision == "dynamic":  # float in and out, int8 weights of every conv and the classifier
                tensors = litert.interpreter(content).get_tensor_details()
                assert detail["dtype"].__name__ == "float32" and "DEQUANTIZE" not in ops
                assert sum(t["dtype"].__name__ == "int8" for t in tensors) == 37 + 1
            shutil.copy(made.path, tmp_path / f"keep_{precision}.tflite")
