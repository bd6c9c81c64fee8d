"""Builds the Keras model to export: registry name or model folder, optional weights file, builder overrides.

A model folder is a preset folder (``config.json`` holds the model's build record,
``model.weights.h5`` its weights), such as a training run's ``final/``; a training run folder
stands for its ``final/``.

Also builds the two outside baselines of the benchmark (``keras_resnet50``,
``keras_mobilenetv2``: keras.applications models with ``weights=None``).
"""

from __future__ import annotations

import os

import keras

import pf_keras
from pf_keras.cli import parse_model_kwargs as parse_kwargs_text
from pf_keras.values import is_positive_int
from pf_keras_export.images import INPUT_TYPES

# Every registered model's (and baseline's) default input side: the ImageNet evaluation crop
# of the reference, also the evaluation tool's default.
DEFAULT_IMAGE_SIZE = 224
BASELINES = {
    "keras_resnet50": "keras.applications.ResNet50",
    "keras_mobilenetv2": "keras.applications.MobileNetV2",
}


# Builder arguments the tools set themselves: --model names the model, --weights its weights, and the
# input is built from --image_size (``input_shape`` is accepted, checked against it).
RESERVED_KWARGS = ("name", "weights", "input_tensor")


def parse_model_kwargs(model_kwargs: str | dict | None) -> dict:
    """Builder overrides in the one ``--model_kwargs`` grammar (:func:`pf_keras.cli.parse_model_kwargs`).

    A JSON object, ``k=v`` pairs, a JSON file path or a dict. Lists become tuples (``depths``,
    ``input_shape``), as the builders expect.

    Raises:
        ValueError: when the value is not an object of builder arguments (a training run's old
            ``model.json`` included: pass the run's ``final/`` as the model instead), sets a key of
            :data:`RESERVED_KWARGS`, or has an ``input_shape`` that is not three positive ints.
    """
    parsed = parse_kwargs_text(model_kwargs)
    reserved = [key for key in RESERVED_KWARGS if key in parsed]
    if reserved:
        raise ValueError(f"`model_kwargs` cannot set {reserved}: the tool sets them (--model, --weights, "
                         f"--image_size). Received: model_kwargs={model_kwargs!r}")
    shape = parsed.get("input_shape", (1, 1, 1))
    if not (isinstance(shape, list | tuple) and len(shape) == 3 and all(is_positive_int(s) for s in shape)):
        raise ValueError(f"`model_kwargs` input_shape must be three positive ints (H, W, C). Received: "
                         f"input_shape={shape!r}")
    return {key: tuple(value) if isinstance(value, list) else value for key, value in parsed.items()}


def model_folder(name: str) -> str | None:
    """The preset folder ``name`` stands for (itself, or a run folder's ``final/``); None for a model name.

    Raises:
        ValueError: one line for a folder that holds no model (an unfinished run, a run of an older
            pf-keras without ``final/``).
    """
    from pf_keras.weights.preset import model_folder as resolve  # noqa: PLC0415

    if name in BASELINES or name in pf_keras.list_models() or not (os.sep in name or os.path.isdir(name)):
        return None
    return resolve(name)  # "does not exist" for a path that is not there


def default_image_size(model_kwargs: dict, folder: str | None = None) -> int:
    """The input side a model is built at: ``input_shape`` in its overrides, else the model folder's, else 224."""
    if model_kwargs.get("input_shape"):
        return int(model_kwargs["input_shape"][0])
    if folder is not None:
        from pf_keras.weights.preset import read_preset  # noqa: PLC0415

        shape = read_preset(folder).config.get("input_shape")
        if isinstance(shape, list | tuple) and shape and isinstance(shape[0], int) and shape[0] > 0:
            return shape[0]
    return DEFAULT_IMAGE_SIZE


def known_models() -> list[str]:
    """Registry names plus the keras.applications baselines."""
    return pf_keras.list_models() + sorted(BASELINES)


def build_model(
    name: str,
    *,
    weights: str | None = None,
    model_kwargs: str | dict | None = None,
    image_size: int | None = None,
    input_type: str = "float",
) -> keras.Model:
    """Builds ``name`` at ``image_size`` with optional weights, ready to export.

    Args:
        name: str. A ``pf_keras.list_models()`` name, a baseline in :data:`BASELINES`, or a model
            folder: a preset folder or a training run folder (its ``final/``), which brings its
            build record and weights.
        weights: str or None. Official PyTorch checkpoint or Keras ``.weights.h5`` for a model
            name (a model folder brings its own). Defaults to None (random initialisation).
        model_kwargs: dict or str (JSON object, k=v pairs, JSON file). Builder overrides
            (``depths``, ``width_mult``, ``classes``, ...). Defaults to None.
        image_size: int or None. Input side. Defaults to the ``input_shape`` in ``model_kwargs``,
            else the model folder's, else 224 (:data:`DEFAULT_IMAGE_SIZE`), as the evaluation tool does.
        input_type: str. "float" (normalised input) or "uint8" (the model is built with its
            ``preprocessing`` layer, which has no weights: RGB [0, 255] in; this overrides
            ``include_preprocessing`` in ``model_kwargs``). Defaults to "float".

    Returns:
        A ``keras.Model`` named ``name`` (a model folder's: its registry name).

    Raises:
        ValueError: for an unknown name or input type, conflicting sizes, a key ``model_kwargs`` may
            not set (:data:`RESERVED_KWARGS`), or a weights file that does not fit the model.
    """
    if input_type not in INPUT_TYPES:
        raise ValueError(f"`input_type` must be one of {INPUT_TYPES}. Received: input_type={input_type!r}")
    kwargs = parse_model_kwargs(model_kwargs)
    folder = model_folder(name)
    if image_size is None:
        image_size = default_image_size(kwargs, folder)
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"`image_size` must be a positive int. Received: image_size={image_size!r}")
    shape = tuple(kwargs.pop("input_shape", (image_size, image_size, 3)))
    if shape[:2] != (image_size, image_size):
        raise ValueError(
            f"`model_kwargs` input_shape must agree with `image_size` ({image_size}). Received: input_shape={shape}"
        )
    if name in BASELINES:
        if weights is not None or input_type != "float":
            raise ValueError(
                f"Baselines take no weights file and only float input. Received: name={name!r}, weights={weights!r}, "
                f"input_type={input_type!r}"
            )
        builder = keras.applications.ResNet50 if name == "keras_resnet50" else keras.applications.MobileNetV2
        return builder(weights=None, input_shape=shape, **kwargs)
    if folder is None and name not in pf_keras.list_models():
        raise ValueError(f"Unknown model name. Valid names: {known_models()}. Received: name={name!r}")
    if input_type == "uint8":
        kwargs["include_preprocessing"] = True
    # Weight files are checked by the library: a PyTorch checkpoint names its missing/unexpected
    # keys, a Keras file must set every weight (Keras alone only warns).
    return pf_keras.create_model(folder or name, weights=weights, input_shape=shape, **kwargs)
