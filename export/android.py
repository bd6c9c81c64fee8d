"""pf-keras-android: latency on an Android phone with LiteRT's ``benchmark_model`` over adb.

Pushes the LiteRT files and the ``benchmark_model`` binary to the phone, runs every file with
each thread count and delegate, and writes ``device_benchmark.md``, ``.csv``, ``.png`` and
``.json`` in the host table's format (``--json``: rows and metadata on stdout). ``--parse
FILE`` prints the parsed fields of a saved ``benchmark_model`` output instead. Params and MACs
come from the export's ``report.json`` only when it validated the very file (its SHA-256),
else the table shows ``?``. Exit 2 with one line for a bad flag, file (two files with the
same name included), or a failed adb command.

Command (phone connected with USB debugging on)::

    pf-keras-android --files runs/demo/export --binary ~/android_aarch64_benchmark_model \\
        --threads 1,4 --delegates xnnpack,gpu --output_dir runs/demo/phone
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pf_keras_export import args

PROG = "pf-keras-android"


def build_parser() -> args.ArgumentParser:
    """The flags of pf-keras-android."""
    from pf_keras_export import android_lib

    parser = args.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", help="Comma-separated LiteRT files or export folders (pf-keras-export's "
                        "--output_dir, or one model's folder in it). Two files with the same name (a/m.tflite, "
                        "b/m.tflite) are refused: time them in separate runs.")
    parser.add_argument("--binary", help="Local path of the Android benchmark_model binary.")
    parser.add_argument("--threads", type=args.thread_counts, default=[1, 4], help="Comma-separated CPU thread counts, "
                        f"1 to {args.MAX_THREADS} (default 1,4; the GPU runs once).")
    parser.add_argument("--delegates", default="xnnpack,gpu",
                        help=f"Comma-separated subset of {','.join(android_lib.DELEGATES)} (default xnnpack,gpu).")
    parser.add_argument("--runs", type=args.positive_int, default=50, help="Timed runs (default 50).")
    parser.add_argument("--warmup", type=int, default=5, help="Warm-up runs (default 5).")
    parser.add_argument("--adb", default="adb", help="adb executable (default: adb on PATH).")
    parser.add_argument("--serial", default=None, help="Device serial when several are attached (adb -s).")
    parser.add_argument("--parse", default=None, help="Only parse this saved benchmark_model output and print it.")
    args.add_output_flag(parser, default="runs/phone", help="Where device_benchmark.* go (default runs/phone).")
    args.add_run_flags(parser)
    return parser


def run(argv: list[str]) -> int:
    """Parses ``argv``, runs on the phone (or parses a saved output); returns the exit status."""
    import json

    from pf_keras_export import android_lib

    flags = build_parser().parse_args(argv)
    if flags.parse:
        print(json.dumps(android_lib.parse_benchmark_output(android_lib.read_output(flags.parse)), indent=2))
        return 0
    if not flags.files or not flags.binary:
        raise args.UsageError("--files and --binary are required (or --parse FILE)")
    result = android_lib.run_on_device(
        flags.files, binary=flags.binary, output_dir=flags.output_dir, threads=flags.threads,
        delegates=[d for d in flags.delegates.split(",") if d], runs=flags.runs, warmup_runs=flags.warmup,
        adb=flags.adb, serial=flags.serial, verbose=not flags.json,
    )
    if flags.json:
        print(json.dumps(result, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pf-keras-android``: the error policy around :func:`run`."""
    return args.run_tool(run, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
