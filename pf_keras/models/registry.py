"""Model registry: the official PfLayer names mapped to builders.

Every builder accepts the keras.applications-style keywords (``include_top``, ``weights``,
``input_tensor``, ``input_shape``, ``pooling``, ``classes``, ``classifier_activation``,
``include_preprocessing``, ``name``) plus its family's architecture overrides (ResNets:
``depths``, ``width_mult``, ``drop_path_rate``).
"""

from __future__ import annotations

from collections.abc import Callable

import keras

_REGISTRY: dict[str, Callable[..., keras.Model]] = {}


def register_model(name: str) -> Callable:
    """Decorator registering a builder under ``name`` (raises on a duplicate name)."""

    def decorate(builder: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        if name in _REGISTRY:
            raise ValueError(f"Model name {name!r} is already registered.")
        _REGISTRY[name] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    """Sorted names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def get_builder(name: str) -> Callable[..., keras.Model]:
    """The builder registered as ``name``; ValueError listing the valid names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model name. Valid names: {list_models()}. Received: name={name!r}")
    return _REGISTRY[name]


def resolve_variant(variants: dict[str, str], variant: str) -> str:
    """Registry name of an applications-style ``variant``; ValueError listing the valid ones."""
    if variant not in variants:
        raise ValueError(f"`variant` must be one of {sorted(variants)}. Received: variant={variant!r}")
    return variants[variant]


def create_model(name: str, **kwargs) -> keras.Model:
    """Builds the registered model ``name`` with keyword overrides.

    Example:
        >>> model = create_model("resnet50_hybrid", depths=(1, 1, 1, 1), width_mult=0.125,
        ...                      input_shape=(64, 64, 3), classes=10)
        >>> model.name
        'resnet50_hybrid'
    """
    return get_builder(name)(**kwargs)
