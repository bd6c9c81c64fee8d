"""Keras port or PyTorch export? Host LiteRT latency of the port's files beside the official models via litert-torch.

    python scripts/phone_route_benchmark.py --output_dir runs/phone \\
        --litert_torch_python /path/to/litert-venv/bin/python --pflayer_dir /path/to/PfLayer

Exports each ResNet of the port to fp32 LiteRT (the ``fp32`` format of ``pf-keras-export``) and
converts the same model of a PfLayer checkout (never copied here) with litert-torch in a
subprocess of ``--litert_torch_python`` (``scripts/litert_torch_convert.py``); files already in
``OUTPUT_DIR/files`` are reused. All files are then timed in interleaved rounds with the
export benchmark's timer (LiteRT interpreter, XNNPACK, batch 1), so both routes see the same
machine load. Prints a table and writes ``phone_route.json``. fp32 only: int8 through
litert-torch (its PT2E quantizer) is not wired up here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

MODELS = ("resnet50", "resnet50_max", "resnet50_hybrid")
CONVERTER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "litert_torch_convert.py")


def convert_official(name: str, path: str, *, python: str, pflayer_dir: str) -> None:
    """The official model ``name`` as a LiteRT file at ``path`` (a litert-torch subprocess); ValueError if it fails."""
    proc = subprocess.run([python, CONVERTER, "--pflayer_dir", pflayer_dir, "--model", name, "--output", path],
                          capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0 or not os.path.isfile(path):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"litert-torch conversion of {name} failed (exit {proc.returncode}): {tail}")


def export_port(name: str, folder: str) -> str:
    """The port's fp32 LiteRT file of ``name`` in ``folder`` (pf-keras-export's fp32 format)."""
    import keras

    from pf_keras_export import formats as formats_lib
    from pf_keras_export.build import build_model
    from pf_keras_export.context import ExportContext

    fmt = formats_lib.parse("fp32", timeable=True)[0]
    path = fmt.path_in(folder, name)
    if not os.path.isfile(path):
        model = build_model(name, model_kwargs=None, image_size=224)
        with tempfile.TemporaryDirectory(prefix="pf_keras_phone_") as scratch:
            path = fmt.convert(model, path, ExportContext(scratch_dir=scratch, calibration=None))
        keras.utils.clear_session()
    return path


def _main(args) -> int:
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"`models` must be among {MODELS}. Received: models={args.models!r}")
    python = args.litert_torch_python
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ValueError(f"`litert_torch_python` must be an executable Python with torch and litert-torch. "
                         f"Received: litert_torch_python={python!r}")
    if not os.path.isfile(os.path.join(args.pflayer_dir, "resnet_pf.py")):
        raise ValueError(f"`pflayer_dir` must be a PfLayer checkout (resnet_pf.py). Received: {args.pflayer_dir!r}")
    if args.threads < 1 or args.runs < 1 or args.warmup < 0:
        raise ValueError(f"`threads` and `runs` must be >= 1, `warmup` >= 0. Received: threads={args.threads}, "
                         f"runs={args.runs}, warmup={args.warmup}")
    from pf_keras import fileio
    from pf_keras_export.benchmark_lib import machine_info, time_interleaved
    from pf_keras_export.files import check_output_dir

    output_dir = check_output_dir(args.output_dir)
    files = os.path.join(output_dir, "files")
    os.makedirs(files, exist_ok=True)
    pairs = []
    for name in models:
        official = os.path.join(files, f"{name}_litert_torch_fp32.tflite")
        if not os.path.isfile(official):
            convert_official(name, official, python=python, pflayer_dir=args.pflayer_dir)
        pairs.append((name, export_port(name, files), official))
        print(f"ready: {name}", flush=True)
    timings = time_interleaved([p for _, port, official in pairs for p in (port, official)], threads=args.threads,
                               warmup=args.warmup, runs=args.runs)
    rows = []
    for i, (name, port, official) in enumerate(pairs):
        port_ms, torch_ms = timings[2 * i]["median_ms"], timings[2 * i + 1]["median_ms"]
        rows.append({"model": name, "port_fp32_ms": port_ms, "litert_torch_fp32_ms": torch_ms,
                     "port_over_litert_torch": port_ms / torch_ms, "port_file": port, "litert_torch_file": official})
    print(f"\nLiteRT fp32, batch 1, {args.threads} thread(s), median of {args.runs} interleaved runs")
    print(f"{'model':<18} {'port (ms)':>10} {'litert-torch (ms)':>18} {'port / litert-torch':>20}")
    for r in rows:
        print(f"{r['model']:<18} {r['port_fp32_ms']:>10.1f} {r['litert_torch_fp32_ms']:>18.1f} "
              f"{r['port_over_litert_torch']:>20.2f}")
    fileio.write_json(os.path.join(output_dir, "phone_route.json"),
                      {"rows": rows, "meta": {**machine_info(), "threads": args.threads, "runs": args.runs,
                                              "warmup": args.warmup}})
    return 0


def _parse_and_run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="phone_route_benchmark.py", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--litert_torch_python", required=True, help="A Python with torch and litert-torch.")
    parser.add_argument("--pflayer_dir", required=True, help="Checkout of github.com/naver-ai/PfLayer.")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--debug", action="store_true", help="Show tracebacks.")
    return _main(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    """The command line; user errors are one line on stderr and exit 2 (``pf_keras.cli.run_cli``)."""
    from pf_keras.cli import run_cli

    return run_cli(_parse_and_run, argv, prog="phone_route_benchmark.py")


if __name__ == "__main__":
    sys.exit(main())
