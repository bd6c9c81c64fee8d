"""The flags the export command lines share: one vocabulary, one parser class, one way to fail.

Every tool builds an :class:`ArgumentParser` (argparse; ``--help`` lists exactly that tool's
flags) from the groups below. A bad flag value raises :class:`UsageError`, which the one error
policy (:func:`pf_keras.cli.run_cli`) prints as one line and turns into exit status 2.

This module imports only the standard library; the tools import it before TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pf_keras_export import startup


class UsageError(ValueError):
    """A command-line flag is missing or malformed (exit 2)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with errors raised as :class:`UsageError` instead of printing usage and exiting (as
    :class:`pf_keras.cli.ArgumentParser`; kept here because importing ``pf_keras`` imports TensorFlow, and the
    tools build their flags before silencing it)."""

    def error(self, message: str):  # argparse's hook for every parse error
        raise UsageError(f"{message} (see {self.prog} --help)")


MAX_THREADS = 1024  # thread counts above this are typos (LiteRT takes a C int; 2**41 raised a TypeError)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive int. Received: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int. Received: {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive ints (``1,2,4``)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive ints. Received: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive ints. Received: {text!r}")
    return values


def thread_counts(text: str) -> list[int]:
    """argparse type: comma-separated thread counts in 1..:data:`MAX_THREADS`."""
    values = int_list(text)
    if max(values) > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be thread counts from 1 to {MAX_THREADS}. Received: {text!r}")
    return values


def add_run_flags(parser: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    """--json, --verbose, --debug."""
    if json_output:
        parser.add_argument("--json", action="store_true", help="Print the result as JSON instead of a table.")
    parser.add_argument("--verbose", action="store_true", help="Keep TensorFlow's and LiteRT's own log lines.")
    parser.add_argument("--debug", action="store_true", help="Show the traceback of an error (or PF_KERAS_DEBUG=1).")


def add_model_flags(parser: argparse.ArgumentParser, *, input_types: Sequence[str], required: bool = True) -> None:
    """--model, --model_kwargs, --weights, --image_size, --input_type, --seed."""
    parser.add_argument("--model", required=required, help="Registry name (pf_keras.list_models()), "
                        "keras_resnet50 / keras_mobilenetv2, or a model folder: a preset folder such as a training "
                        "run's final/ (build record + weights), or the run folder itself.")
    add_model_kwargs_flag(parser)
    parser.add_argument("--weights", help="Official .pth checkpoint or Keras .weights.h5 for a registry name (a model "
                        "folder brings its own). Default: seeded random weights.")
    add_image_size_flag(parser)
    parser.add_argument("--input_type", default="float", choices=list(input_types),
                        help="float: normalised RGB in; uint8: RGB pixels in, preprocessing inside the model.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights when no --weights are "
                        "given, so that export and validate build the same model (default 0).")


def add_model_kwargs_flag(parser: argparse.ArgumentParser) -> None:
    """--model_kwargs."""
    parser.add_argument("--model_kwargs", default="", help="Builder overrides: a JSON object, k=v pairs "
                        "(depths=[1,1,1,1],width_mult=0.25) or a JSON file holding an object.")


def add_image_size_flag(parser: argparse.ArgumentParser) -> None:
    """--image_size."""
    parser.add_argument("--image_size", type=positive_int, default=None, help="Input side in pixels (default: "
                        "input_shape in --model_kwargs, else the model folder's, else 224).")


def add_data_flags(parser: argparse.ArgumentParser, *, purpose: str) -> None:
    """--dataset, --data_dir."""
    parser.add_argument("--dataset", default="builtin", help=f"{purpose}: builtin (default), synthetic, "
                        "folder:PATH or a TFDS name.")
    parser.add_argument("--data_dir", default=None, help="TFDS data folder (default: TFDS's own).")


def add_validation_flags(parser: argparse.ArgumentParser) -> None:
    """--require_full_delegation, --batch_size (the images each exported file is checked on)."""
    parser.add_argument("--require_full_delegation", action="store_true",
                        help="Also fail .tflite files XNNPACK does not take whole.")
    parser.add_argument("--batch_size", type=positive_int, default=8,
                        help="Validation images each file is checked on (default 8).")


def add_output_flag(parser: argparse.ArgumentParser, *, help: str, default: str | None = None) -> None:
    """--output_dir."""
    parser.add_argument("--output_dir", required=default is None, default=default, help=help)


def run_tool(tool: Callable[[list[str]], int | None], argv: Sequence[str] | None, *, prog: str) -> int:
    """Runs a tool's ``main`` quietly (unless ``--verbose``) under the one error policy.

    TensorFlow is silenced before anything imports it (``pf_keras`` does), then
    :func:`pf_keras.cli.run_cli` runs ``tool``: user errors are one line and exit 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    startup.start(argv, prog)
    from pf_keras.cli import run_cli  # imports Keras, hence TensorFlow: after startup.start

    return run_cli(tool, argv, prog=prog)


def check_failed(prog: str, message: str) -> int:
    """Reports a failed check (an exported file that failed validation): one line on stderr, exit 1."""
    from pf_keras.cli import CHECK_FAILED_EXIT

    print(f"{prog}: {message}", file=sys.stderr)
    return CHECK_FAILED_EXIT
