"""pf-keras-benchmark: host latency of LiteRT files (XNNPACK, batch 1), as a table, CSV, plot and JSON.

Either exports the given models and times them, or (``--export_dir``) times the files
pf-keras-export wrote. Writes ``benchmark.md``, ``.csv``, ``.png`` and ``.json`` to
``--output_dir`` and prints the table (``--json``: rows and metadata). Exit 2 with one line
for a bad flag or file.

Commands::

    pf-keras-benchmark --output_dir runs/bench        # paper models + 2 baselines, 224, fp32+int8, 1 thread
    pf-keras-benchmark --model resnet50,resnet50_hybrid --formats fp32 --threads 1,2 --runs 50
    pf-keras-benchmark --export_dir runs/demo/export --output_dir runs/demo/bench
    pf-keras-benchmark --model resnet50,resnet50_max,resnet50_hybrid --output_dir runs/phone \\
        --litert_torch_python /path/to/litert-venv/bin/python --pflayer_dir /path/to/PfLayer

With ``--litert_torch_python`` and ``--pflayer_dir`` the official models of the benchmarked
names are converted through litert-torch in that Python (fp32 and int8; cached in
``OUTPUT_DIR/files``) and timed in the same interleaved rounds, with a ``port / litert-torch``
column. A Python or checkout that does not work: one line, exit 2, before any export. A single
conversion that fails: its row says why, the rest is timed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pf_keras_export import args

PROG = "pf-keras-benchmark"


def build_parser() -> args.ArgumentParser:
    """The flags of pf-keras-benchmark."""
    from pf_keras_export import benchmark_lib, formats

    timeable = ",".join(formats.names(timeable=True))
    parser = args.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Comma-separated model names or model folders (a run's "
                        f"final/) (default: {','.join(benchmark_lib.DEFAULT_MODELS)}, those registered).")
    args.add_model_kwargs_flag(parser)
    args.add_image_size_flag(parser)
    parser.add_argument("--formats", default=None, help=f"Comma-separated subset of {timeable} (default: "
                        f"{','.join(benchmark_lib.DEFAULT_FORMATS)}; every one found with --export_dir).")
    parser.add_argument("--export_dir", default=None, help="Time the files pf-keras-export wrote here instead of "
                        "exporting --model.")
    parser.add_argument("--threads", type=args.thread_counts, default=[1],
                        help=f"Comma-separated thread counts, 1 to {args.MAX_THREADS} (default 1).")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed runs before timing (default 5).")
    parser.add_argument("--runs", type=args.positive_int, default=30, help="Timed runs (default 30).")
    parser.add_argument("--num_calibration", type=args.positive_int, default=16,
                        help="int8 calibration images (latency does not depend on them; default 16).")
    parser.add_argument("--litert_torch_python", default=None, help="A Python with torch and litert-torch: also "
                        "time the official models converted through litert-torch (needs --pflayer_dir).")
    parser.add_argument("--pflayer_dir", default=None, help="A checkout of github.com/naver-ai/PfLayer (the official "
                        "models for --litert_torch_python).")
    args.add_output_flag(parser, default="runs/benchmark", help="Where the table, CSV, plot and JSON go "
                         "(default runs/benchmark).")
    args.add_run_flags(parser)
    return parser


def run(argv: list[str]) -> int:
    """Parses ``argv``, benchmarks; returns the exit status (ValueError for user errors)."""
    import json

    from pf_keras_export import benchmark_lib
    from pf_keras_export.torch_route import TorchRoute

    flags = build_parser().parse_args(argv)
    if flags.export_dir and (flags.model or flags.model_kwargs or flags.image_size):
        raise args.UsageError("--export_dir times existing files; --model, --model_kwargs and --image_size "
                              "do not apply")
    if bool(flags.litert_torch_python) != bool(flags.pflayer_dir):
        raise args.UsageError("--litert_torch_python and --pflayer_dir go together")
    route = None
    if flags.litert_torch_python:
        if flags.export_dir or flags.model_kwargs:
            raise args.UsageError("--litert_torch_python compares the published models: it does not apply with "
                                  "--export_dir or --model_kwargs")
        route = TorchRoute(flags.litert_torch_python, flags.pflayer_dir)
    if flags.export_dir:
        result = benchmark_lib.benchmark_export_dir(
            flags.export_dir, output_dir=flags.output_dir, formats=flags.formats, threads=flags.threads,
            warmup=flags.warmup, runs=flags.runs, verbose=not flags.json,
        )
    else:
        result = benchmark_lib.benchmark(
            flags.model, output_dir=flags.output_dir, formats=flags.formats or benchmark_lib.DEFAULT_FORMATS,
            image_size=flags.image_size, threads=flags.threads, warmup=flags.warmup, runs=flags.runs,
            model_kwargs=flags.model_kwargs or None, num_calibration=flags.num_calibration, torch_route=route,
            verbose=not flags.json,
        )
    if flags.json:
        print(json.dumps(result, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pf-keras-benchmark``: the error policy around :func:`run`."""
    return args.run_tool(run, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
