"""pf-keras-validate: checks the files pf-keras-export wrote against the Keras model, again.

Builds the model from the same model flags (without ``--weights``: the same seeded random
weights as the export), finds every registered format's file in ``OUTPUT_DIR/<model name>/``,
rewrites ``report.json`` there (keeping the export's fields it does not recompute: build, params,
MACs, int8 calibration) and prints the table (``--json``: the report). Exit 0 when
every file passes, 1 when one fails (the message names the report), 2 for a bad flag or file.

Command::

    pf-keras-validate --model runs/demo/final --output_dir runs/demo/export
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pf_keras_export import args

PROG = "pf-keras-validate"


def build_parser() -> args.ArgumentParser:
    """The flags of pf-keras-validate."""
    from pf_keras_export import images

    parser = args.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    args.add_model_flags(parser, input_types=images.INPUT_TYPES)
    args.add_validation_flags(parser)
    args.add_output_flag(parser, help="The export tool's --output_dir (files in OUTPUT_DIR/<model name>/).")
    args.add_run_flags(parser)
    return parser


def run(argv: list[str]) -> int:
    """Parses ``argv``, validates; returns the exit status (ValueError for user errors)."""
    import contextlib
    import json
    import os

    import keras

    from pf_keras_export import validate_lib
    from pf_keras_export.build import build_model
    from pf_keras_export.export_lib import folder_lock

    flags = build_parser().parse_args(argv)
    if flags.weights is None:
        keras.utils.set_random_seed(flags.seed)
    model = build_model(flags.model, weights=flags.weights, model_kwargs=flags.model_kwargs,
                        image_size=flags.image_size, input_type=flags.input_type)
    folder = os.path.join(flags.output_dir, model.name)
    report_path = os.path.join(folder, "report.json")
    with folder_lock(folder, flags.output_dir) if os.path.isdir(folder) else contextlib.nullcontext():
        report = validate_lib.validate_files(
            model, validate_lib.find_files(folder, model.name), input_type=flags.input_type, report_path=report_path,
            extra=validate_lib.previous_fields(report_path, model), raise_on_failure=False,
            require_full_delegation=flags.require_full_delegation, batch_size=flags.batch_size,
        )
    print(json.dumps(report, indent=2) if flags.json else validate_lib.format_table(report))
    if not report["passed"]:
        return args.check_failed(PROG, validate_lib.failure_message(report, report_path))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pf-keras-validate``: the error policy around :func:`run`."""
    return args.run_tool(run, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
