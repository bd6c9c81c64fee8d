"""Builds the Keras model to export: registry name, optional weights file, builder overrides.

Also builds the two outside baselines of the benchmark (``keras_resnet50``,
``keras_mobilenetv2``: keras.applications models with ``weights=None``).
"""

from __future__ import annotations

import json
import os

import keras

import pf_keras
from export.images import INPUT_TYPES

BASELINES = {
    "keras_resnet50": "keras.applications.ResNet50",
    "keras_mobilenetv2": "keras.applications.MobileNetV2",
}


def parse_model_kwargs(model_kwargs: str | dict | None) -> dict:
    """Builder overrides from a dict, a JSON object string or the path to a JSON file.

    A training run's ``model.json`` (``{"name": ..., "kwargs": {...}, ...}``, written by
    ``training/train.py``) is accepted as is: its ``kwargs`` are the overrides. Lists become
    tuples (``depths``, ``input_shape``), as the builders expect.

    Raises:
        ValueError: when the value is not a JSON object.
    """
    return _parse(model_kwargs)[0]


def _parse(model_kwargs) -> tuple[dict, str | None]:
    """(builder overrides, model name declared by a training run's model.json or None)."""
    if model_kwargs is None or model_kwargs == "":
        return {}, None
    if isinstance(model_kwargs, str):
        text = model_kwargs
        if os.path.isfile(model_kwargs):
            with open(model_kwargs) as f:
                text = f.read()
        try:
            model_kwargs = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"`model_kwargs` must be a JSON object (or a JSON file) of builder arguments, e.g. "
                f"'{{\"depths\": [1, 1, 1, 1]}}' ({error}). Received: model_kwargs={model_kwargs!r}"
            ) from error
    if not isinstance(model_kwargs, dict):
        raise ValueError(
            f"`model_kwargs` must be a JSON object of builder arguments. Received: model_kwargs={model_kwargs!r}"
        )
    declared = None
    if set(model_kwargs) >= {"name", "kwargs"} and isinstance(model_kwargs["kwargs"], dict):  # model.json of a run
        declared, model_kwargs = model_kwargs["name"], model_kwargs["kwargs"]
    kwargs = {key: tuple(value) if isinstance(value, list) else value for key, value in model_kwargs.items()}
    return kwargs, declared


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
        name: str. A ``pf_keras.list_models()`` name or a baseline in :data:`BASELINES`.
        weights: str or None. Official PyTorch checkpoint or Keras ``.weights.h5`` (e.g. a training
            run's ``final.weights.h5``). Defaults to None (random initialisation).
        model_kwargs: dict, JSON string or JSON file. Builder overrides (``depths``, ``width_mult``,
            ``classes``, ...), e.g. the build arguments a training run saved. Defaults to None.
        image_size: int or None. Input side. Defaults to the ``input_shape`` in ``model_kwargs``,
            else 224.
        input_type: str. "float" (normalised input) or "uint8" (the model is built with its
            ``preprocessing`` layer, which has no weights: RGB [0, 255] in; this overrides
            ``include_preprocessing`` in ``model_kwargs``). Defaults to "float".

    Returns:
        A ``keras.Model`` named ``name`` (unless ``model_kwargs`` renames it).

    Raises:
        ValueError: for an unknown name or input type, conflicting sizes, or a weights file
            that does not fit the model.
    """
    if input_type not in INPUT_TYPES:
        raise ValueError(f"`input_type` must be one of {INPUT_TYPES}. Received: input_type={input_type!r}")
    kwargs, declared = _parse(model_kwargs)
    if declared is not None and declared != name:
        raise ValueError(
            f"`model_kwargs` comes from a training run of {declared!r}; export that model. Received: name={name!r}"
        )
    if image_size is None:
        image_size = int(kwargs["input_shape"][0]) if kwargs.get("input_shape") else 224
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
    if name not in pf_keras.list_models():
        raise ValueError(f"Unknown model name. Valid names: {known_models()}. Received: name={name!r}")
    if input_type == "uint8":
        kwargs["include_preprocessing"] = True
    # Weight files are checked by the library: a PyTorch checkpoint names its missing/unexpected
    # keys, a Keras file must set every weight (Keras alone only warns).
    return pf_keras.create_model(name, weights=weights, input_shape=shape, **kwargs)
