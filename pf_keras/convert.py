"""Converts an official PyTorch checkpoint into a Keras weights file.

    python -m pf_keras.convert --model resnet50_hybrid --checkpoint r50_hybrid.pth \
        --output resnet50_hybrid.weights.h5

The checkpoint is read without PyTorch and without running pickled code
(:mod:`pf_keras.weights.torch_reader`). Every key and shape is checked against the model
first; a mismatch fails naming the missing, unexpected and mis-shaped keys. Load the result
with ``create_model(name, weights="OUT.weights.h5")`` (same ``--model_kwargs``).
"""

from __future__ import annotations

import argparse
import json

import keras

from pf_keras.models.registry import create_model


def convert(
    model_name: str,
    checkpoint: str,
    output: str,
    *,
    model_kwargs: dict | None = None,
) -> keras.Model:
    """Builds ``model_name`` with the checkpoint's weights and saves them to ``output``.

    Args:
        model_name: str. Registry name (see ``pf_keras.list_models()``).
        checkpoint: str. PyTorch checkpoint file (.pth/.pt/.pth.tar/.bin).
        output: str. Keras weights file to write; must end with ".weights.h5".
        model_kwargs: dict or None. Extra builder arguments (``classes``, ``depths``, ...).

    Returns:
        The converted model.

    Raises:
        ValueError: for a bad output name, unknown model, or a checkpoint that does not fit.
    """
    if not output.endswith(".weights.h5"):
        raise ValueError(
            f"The output must be a Keras weights file ending in '.weights.h5'. Received: output={output!r}"
        )
    model = create_model(model_name, weights=checkpoint, **(model_kwargs or {}))
    model.save_weights(output)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="registry name, e.g. resnet50_hybrid")
    parser.add_argument("--checkpoint", required=True, help="official PyTorch checkpoint (.pth)")
    parser.add_argument("--output", required=True, help="Keras weights file to write (*.weights.h5)")
    parser.add_argument("--model_kwargs", default="{}", help="JSON builder arguments, e.g. '{\"classes\": 10}'")
    args = parser.parse_args(argv)
    try:
        model_kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as error:
        parser.error(f"--model_kwargs must be a JSON object: {error}")
    try:
        model = convert(args.model, args.checkpoint, args.output, model_kwargs=model_kwargs)
    except (ValueError, FileNotFoundError) as error:  # user errors: the message says what to change
        parser.exit(2, f"error: {error}\n")
    params = sum(int(w.numpy().size) for w in model.trainable_weights)
    print(f"Wrote {args.output}: {model.name}, {params:,} trainable params from {args.checkpoint}")


if __name__ == "__main__":
    main()
