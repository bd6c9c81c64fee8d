"""Resolves the ``weights=`` argument of the model builders."""

from __future__ import annotations

import os

import keras

from pf_keras.weights.torch_convert import NameMap, load_torch_state_dict
from pf_keras.weights.torch_reader import read_state_dict

TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".bin")
KERAS_SUFFIXES = (".weights.h5", ".h5")


def weights_dir() -> str:
    """Where ``weights="imagenet"`` looks for official checkpoints.

    ``$PF_KERAS_WEIGHTS_DIR`` if set, else ``~/.keras/pf_keras``.
    """
    return os.environ.get("PF_KERAS_WEIGHTS_DIR", os.path.join(os.path.expanduser("~"), ".keras", "pf_keras"))


def check_weights_arg(weights) -> None:
    """Raises ValueError unless ``weights`` is None, "imagenet" or an existing weights file."""
    if weights is None or weights == "imagenet":
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"`weights` must be None, 'imagenet' or the path to a weights file. Received: weights={weights!r}"
        )
    path = os.fspath(weights)
    if not path.endswith(TORCH_SUFFIXES + KERAS_SUFFIXES):
        raise ValueError(
            f"`weights` file must be a PyTorch checkpoint ({', '.join(TORCH_SUFFIXES)}) or a Keras weights "
            f"file ({', '.join(KERAS_SUFFIXES)}). Received: weights={path!r}"
        )
    if not os.path.isfile(path):
        raise ValueError(f"`weights` file does not exist. Received: weights={path!r}")


def load_weights_file(
    model: keras.Model, path: str, name_map: NameMap, *, ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Loads a PyTorch checkpoint (through ``name_map``) or a Keras weights file into ``model``.

    ``ignore_prefixes``: PyTorch keys allowed to stay unused (the classifier of a headless model).
    """
    path = os.fspath(path)
    if path.endswith(TORCH_SUFFIXES):
        state_dict = read_state_dict(path)
        state_dict = (
            {k: v for k, v in state_dict.items() if not k.startswith(ignore_prefixes)}
            if ignore_prefixes
            else state_dict
        )
        load_torch_state_dict(model, state_dict, name_map)
    else:
        model.load_weights(path)
