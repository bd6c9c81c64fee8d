"""Serving SavedModel of a Keras model, written through Keras's own ``ExportArchive``.

The SavedModel has one signature, ``serving_default``, with input ``image`` and output
``predictions``. Two input conventions (``input_type``):

- ``"float"``: float32 ``(batch, H, W, 3)``, exactly what the Keras model takes: normalised RGB
  (``(x / 255 - mean) / std``), or RGB in [0, 255] when the model was built with
  ``include_preprocessing=True``.
- ``"uint8"``: uint8 RGB ``(batch, H, W, 3)`` in [0, 255]; the graph casts to float and the
  model's ``preprocessing`` layer normalises. The model must have that layer.

Written atomically (:func:`pf_keras.fileio.atomic_path`): a crash or a full disk leaves the
previous folder intact.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pf_keras import fileio
from pf_keras_export.images import INPUT_TYPES

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
            f"(the export command does this for --input_type uint8). Received: input_type='uint8', model={model.name!r}"
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
        path: str. Output directory, written atomically (an existing one is replaced only
            once the new one is complete).
        input_type: str. "float" or "uint8" (see the module docstring). Defaults to "float".
        batch_size: int or None. Fixed batch size of the signature; None (the default) accepts
            any batch. TFLite conversion uses 1: with every shape static the converter folds
            the shape arithmetic of reshapes away (a dynamic batch leaves SHAPE, GATHER, PACK
            ops in transformers, which XNNPACK cannot take).

    Returns:
        ``path``.

    Raises:
        ValueError: for a bad ``input_type`` or an unknown input size.
        pf_keras.fileio.WriteError: when the folder cannot be written (e.g. a full disk).

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
    with fileio.atomic_path(path, directory=True) as temp:
        try:
            archive.write_out(temp, verbose=False)
        except tf.errors.OpError as error:  # TensorFlow's own file ops report a full disk as an OpError
            reason = " ".join(error.message.split()[-6:])
            if "No space left on device" in error.message:
                reason = "ENOSPC: No space left on device"
            message = f"cannot write {path} ({reason}); the previous version, if any, is intact"
            raise fileio.WriteError(message) from None
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


def load_serving_fn_checked(path: str):
    """:func:`load_serving_fn`, with every way a damaged folder fails to load as one ``ValueError``."""
    try:
        return load_serving_fn(path)
    except (OSError, tf.errors.OpError, IndexError) as error:  # IndexError: a truncated variables.data file
        raise ValueError(f"TensorFlow cannot load the SavedModel {path}: {' '.join(str(error).split())}") from None


def run_saved_model(path: str, inputs: np.ndarray, *, input_type: str = "float") -> tuple[np.ndarray, dict]:
    """Loads a SavedModel, runs ``serving_default`` on ``inputs`` (float; rounded to uint8 for uint8 input).

    Returns:
        ``(outputs, {})``: no per-file details beyond the outputs.

    Raises:
        ValueError: when the folder does not load or the signature does not run on ``inputs``.
    """
    function = load_serving_fn_checked(path)
    feed = np.clip(np.rint(inputs), 0, 255).astype(np.uint8) if input_type == "uint8" else inputs
    try:
        output = function(**{INPUT_NAME: tf.constant(feed)})
    except (TypeError, tf.errors.OpError) as error:  # wrong input dtype/shape for the signature
        raise ValueError(f"the SavedModel {path} does not run: {' '.join(str(error).split())}") from None
    return np.asarray(output[OUTPUT_NAME]), {}
