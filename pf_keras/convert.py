"""Converts an official PyTorch checkpoint into a Keras weights file.

    python -m pf_keras.convert --model resnet50_hybrid --checkpoint r50_hybrid.pth \
        --output resnet50_hybrid.weights.h5

The checkpoint is read without PyTorch and without running pickled code, under the
reader's limits (:mod:`pf_keras.weights.torch_reader`). Every key and shape is checked
against the model first; a mismatch fails naming the missing, unexpected and mis-shaped
keys, and non-finite, integer or lossy float64 values fail naming the key
(``--allow_precision_loss`` rounds float64 to float32). The output is written atomically:
on a full disk nothing is left under its name and a previous file stays intact. Errors are
one line on stderr and exit status 2; ``--debug`` shows the traceback. Load the result with
``create_model(name, weights="OUT.weights.h5")`` (same ``--model_kwargs``).

``--preset_dir FOLDER`` (instead of ``--output``) writes a self-contained preset folder
(:mod:`pf_keras.weights.preset`: config.json, model.weights.h5, metadata.json with the source
file's sha256 and URL), loaded by ``create_model(FOLDER)``.
"""

from __future__ import annotations

import sys

import keras

from pf_keras import fileio
from pf_keras.cli import DEBUG_FLAG, ArgumentParser, parse_model_kwargs, run_cli
from pf_keras.models.registry import create_model
from pf_keras.weights.preset import convert_to_preset
from pf_keras.weights.torch_convert import precision_loss_allowed

PROG = "pf_keras.convert"


def convert(
    model_name: str,
    checkpoint: str,
    output: str,
    *,
    model_kwargs: dict | None = None,
    allow_precision_loss: bool = False,
) -> keras.Model:
    """Builds ``model_name`` with the checkpoint's weights and saves them to ``output``.

    Args:
        model_name: str. Registry name (see ``pf_keras.list_models()``).
        checkpoint: str. PyTorch checkpoint file (.pth/.pt/.pth.tar/.bin).
        output: str. Keras weights file to write; must end with ".weights.h5".
        model_kwargs: dict or None. Extra builder arguments (``classes``, ``depths``, ...).
        allow_precision_loss: bool. Round float64 values float32 cannot hold exactly instead
            of refusing them. Defaults to False.

    Returns:
        The converted model.

    Raises:
        ValueError: for a bad output name or unknown model.
        CheckpointError: for a malformed or hostile checkpoint, or one that does not fit.
        WriteError: when the output cannot be written (the previous file is intact).
    """
    if not output.endswith(".weights.h5"):
        raise ValueError(
            f"The output must be a Keras weights file ending in '.weights.h5'. Received: output={output!r}"
        )
    with precision_loss_allowed(allow_precision_loss):
        model = create_model(model_name, weights=checkpoint, **(model_kwargs or {}))
    fileio.save_weights(model, output)
    return model


def _main(argv: list[str]) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="registry name, e.g. resnet50_hybrid")
    parser.add_argument("--checkpoint", required=True, help="official PyTorch checkpoint (.pth)")
    parser.add_argument("--output", help="Keras weights file to write (*.weights.h5)")
    parser.add_argument("--preset_dir", help="write a preset folder instead (config.json, model.weights.h5, "
                        "metadata.json), loadable with create_model(FOLDER)")
    parser.add_argument("--source_url", help="with --preset_dir: where the checkpoint came from "
                        "(default: the model's official checkpoint URL)")
    parser.add_argument(
        "--model_kwargs", default="", help="builder arguments: JSON object, k=v pairs or a JSON file, e.g. classes=10"
    )
    parser.add_argument(
        "--allow_precision_loss", action="store_true", help="round float64 weights float32 cannot hold exactly"
    )
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    model_kwargs = parse_model_kwargs(args.model_kwargs)
    if (args.output is None) == (args.preset_dir is None):
        raise ValueError("Pass exactly one of --output (a .weights.h5 file) and --preset_dir (a preset folder).")
    if args.preset_dir is not None:
        with precision_loss_allowed(args.allow_precision_loss):
            model = convert_to_preset(args.model, args.checkpoint, args.preset_dir, model_kwargs=model_kwargs,
                                      source_url=args.source_url)
    else:
        model = convert(
            args.model,
            args.checkpoint,
            args.output,
            model_kwargs=model_kwargs,
            allow_precision_loss=args.allow_precision_loss,
        )
    params = sum(int(w.numpy().size) for w in model.trainable_weights)
    print(f"Wrote {args.output or args.preset_dir}: {model.name}, {params:,} trainable params from {args.checkpoint}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (2 and one line on stderr for any bad input)."""
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
