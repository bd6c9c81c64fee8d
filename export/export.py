"""pf-keras-export: SavedModel and TFLite files of a pf_keras model, each proven against Keras.

Writes ``OUT/NAME/saved_model/``, ``OUT/NAME/NAME_<format>.tflite`` and ``OUT/NAME/report.json``,
prints the validation table (``--json``: the report) and exits 0; 1 when a file fails
validation (the message names the report); 2 with one line for a bad flag or file.

Command (about a minute for a small model)::

    pf-keras-export --model resnet50_hybrid --model_kwargs 'depths=[1,1,1,1],width_mult=0.125,classes=10' \\
        --image_size 64 --formats saved_model,fp32,fp16,dynamic,int8 --output_dir out
    pf-keras-export --model runs/demo/final --output_dir runs/demo/export   # a training run's model folder

(``python export/export.py ...`` in the repository does the same.)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pf_keras_export import args

PROG = "pf-keras-export"


def build_parser() -> args.ArgumentParser:
    """The flags of pf-keras-export (imports the format registry, hence TensorFlow)."""
    from pf_keras_export import formats, images, tflite

    parser = args.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    args.add_model_flags(parser, input_types=images.INPUT_TYPES)
    parser.add_argument("--formats", default=",".join(formats.names()),
                        help=f"Comma-separated subset of {','.join(formats.names())} (default: all).")
    args.add_data_flags(parser, purpose="int8 calibration images")
    parser.add_argument("--num_calibration", type=args.positive_int, default=tflite.NUM_CALIBRATION_IMAGES,
                        help=f"Number of int8 calibration images (default {tflite.NUM_CALIBRATION_IMAGES}).")
    parser.add_argument("--int8_input_type", choices=list(tflite.IO_TYPES), default=None,
                        help="The int8 file's input type (default: uint8 with --input_type uint8, else int8).")
    parser.add_argument("--int8_output_type", choices=list(tflite.IO_TYPES), default="int8",
                        help="The int8 file's output type (default int8).")
    args.add_validation_flags(parser)
    args.add_output_flag(parser, help="Files go to OUTPUT_DIR/<model name>/.")
    args.add_run_flags(parser)
    return parser


def run(argv: list[str]) -> int:
    """Parses ``argv``, exports, validates; returns the exit status (ValueError for user errors)."""
    import json

    import keras

    from pf_keras_export import export_lib, validate_lib

    flags = build_parser().parse_args(argv)
    if flags.weights is None:  # seeded random weights: validate builds the same model
        keras.utils.set_random_seed(flags.seed)
    try:
        report = export_lib.export_model(
            flags.model,
            output_dir=flags.output_dir,
            formats=flags.formats,
            weights=flags.weights,
            model_kwargs=flags.model_kwargs,
            image_size=flags.image_size,
            input_type=flags.input_type,
            dataset=flags.dataset,
            data_dir=flags.data_dir,
            num_calibration=flags.num_calibration,
            int8_input_type=flags.int8_input_type,
            int8_output_type=flags.int8_output_type,
            require_full_delegation=flags.require_full_delegation,
            batch_size=flags.batch_size,
            verbose=not flags.json,
        )
    except validate_lib.ValidationError as error:
        return args.check_failed(PROG, str(error))
    if flags.json:
        print(json.dumps(report, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pf-keras-export``: the error policy around :func:`run`."""
    return args.run_tool(run, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
