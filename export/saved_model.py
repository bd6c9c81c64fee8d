"""Serving SavedModel of a Keras model, written through Keras's own ``ExportArchive``.

The SavedModel has one signature, ``serving_default``, with input ``image`` and output
``predictions``. Two input conventions (``input_type``):

- ``"float"``: float32 ``(batch, H, W, 3)``, exactly what the Keras model takes: normalised RGB
  (``(x / 255 - mean) / std``), or RGB in [0, 255] when the model was built with
  ``include_preprocessing=True``.
- ``"uint8"``: uint8 RGB ``(batch, H, W, 3)`` in [0, 255]; the graph casts to float and the
  model's ``preprocessing`` layer normalises. The model must have that layer.

CLI (from the repository root)::

    python export/saved_model.py --model resnet50_hybrid --output_dir out [--input_type uint8]

writes ``out/resnet50_hybrid/saved_model/``.
"""

from __future__ import annotations

if __package__ in (None, ""):  # Run as a script: make ``export`` importable from the repository root.
    import os as _os
    import sys as _sys

    _here = _os.path.dirname(_os.path.abspath(__file__))
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _here]
    _sys.path.insert(0, _os.path.dirname(_here))
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import os  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from export.images import INPUT_TYPES  # noqa: E402

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "image"
OUTPUT_NAME = "predictions"


def takes_pixels(model: keras.Model) -> bool:
    """Whether ``model`` normalises its input itself (a ``preprocessing`` layer after the input)."""
    return any(layer.name == "preprocessing" for layer in model.layers)


def check_input_type(model: keras.Model, input_type: str) -> None:
    """Raises ValueError for an unknown ``input_type`` or uint8 input on a model without preprocessing."""
    if input_type not in INPUT_TYPES:
        raise ValueError(f"`input_type` must be one of {INPUT_TYPES}. Received: input_type={input_type!r}")
    if input_type == "uint8" and not takes_pixels(model):
        raise ValueError(
            "uint8 input needs the normalisation inside the model: build it with include_preprocessing=True "
            f"(export.py does this for --input_type uint8). Received: input_type='uint8', model={model.name!r}"
        )


def input_spec(model: keras.Model, input_type: str, batch_size: int | None = None) -> tf.TensorSpec:
    """The signature's input spec: ``(batch_size, H, W, C)`` float32 or uint8, named ``image``.

    Raises:
        ValueError: when the model's spatial size is unknown.
    """
    shape = tuple(model.input_shape)
    if None in shape[1:]:
        raise ValueError(
            f"Export needs a model with a known input size (build it with input_shape=(H, W, 3)). "
            f"Received: input_shape={shape}"
        )
    dtype = tf.uint8 if input_type == "uint8" else tf.float32
    return tf.TensorSpec((batch_size, *shape[1:]), dtype, name=INPUT_NAME)


def export_saved_model(
    model: keras.Model, path: str, *, input_type: str = "float", batch_size: int | None = None
) -> str:
    """Writes the serving SavedModel of ``model`` to ``path``.

    Args:
        model: keras.Model with a known input size.
        path: str. Output directory (created; an existing one is overwritten).
        input_type: str. "float" or "uint8" (see the module docstring). Defaults to "float".
        batch_size: int or None. Fixed batch size of the signature; None (the default) accepts
            any batch. TFLite conversion uses 1: with every shape static the converter folds
            the shape arithmetic of reshapes away (a dynamic batch leaves SHAPE, GATHER, PACK
            ops in transformers, which XNNPACK cannot take).

    Returns:
        ``path``.

    Raises:
        ValueError: for a bad ``input_type`` or an unknown input size.

    Example:
        >>> import pf_keras, tempfile
        >>> model = pf_keras.create_model("resnet50_max", depths=(1, 1, 1, 1), width_mult=0.125,
        ...                               input_shape=(64, 64, 3), classes=10)
        >>> path = export_saved_model(model, tempfile.mkdtemp() + "/saved_model")
    """
    check_input_type(model, input_type)
    spec = input_spec(model, input_type, batch_size)

    def serve(image):
        if image.dtype != tf.float32:
            image = tf.cast(image, tf.float32)
        return {OUTPUT_NAME: model(image, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=serve, input_signature=[spec])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    archive.write_out(path, verbose=False)
    return path


def load_serving_fn(path: str):
    """The ``serving_default`` concrete function of a SavedModel written by :func:`export_saved_model`."""
    loaded = tf.saved_model.load(path)
    if SIGNATURE_KEY not in loaded.signatures:
        raise ValueError(
            f"SavedModel must have a {SIGNATURE_KEY!r} signature. Signatures: {list(loaded.signatures)}. "
            f"Received: path={path!r}"
        )
    function = loaded.signatures[SIGNATURE_KEY]
    function._loaded_object = loaded  # Keep the variables alive with the function.
    return function


def main(argv) -> None:
    from absl import flags

    from export import cli

    del argv
    flag_values = flags.FLAGS
    model = cli.model_from_flags(flag_values)
    path = os.path.join(flag_values.output_dir, model.name, "saved_model")
    print(export_saved_model(model, path, input_type=flag_values.input_type))


if __name__ == "__main__":
    from absl import app, logging

    from export import cli

    cli.define_model_flags()
    cli.define_output_flags()
    logging.set_verbosity(logging.WARNING)
    app.run(main)
