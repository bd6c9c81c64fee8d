"""Resolves the ``weights=`` argument of the model builders."""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter

import keras

from pf_keras.layers.position_embedding import PositionEmbedding
from pf_keras.weights import h5_probe, torch_convert
from pf_keras.weights.errors import CheckpointError, describe
from pf_keras.weights.torch_convert import NameMap, load_torch_state_dict
from pf_keras.weights.torch_reader import read_state_dict

TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".bin")
KERAS_SUFFIXES = (".weights.h5", ".h5")
POSITION_EMBEDDING = "a position embedding (any grid)"  # how the fit check counts them
MAX_POSITION_EMBEDDING = 1 << 24  # values of a stored position embedding (ViT-B at 384 px: 443k; 64 MiB float32)


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

    Raises:
        CheckpointError: one line naming the file and the problem, for a file that is
            malformed, hostile, over a reader limit, or does not fit ``model``.
    """
    path = os.fspath(path)
    if path.endswith(TORCH_SUFFIXES):
        state_dict = read_state_dict(path)
        state_dict = (
            {k: v for k, v in state_dict.items() if not k.startswith(ignore_prefixes)}
            if ignore_prefixes
            else state_dict
        )
        load_torch_state_dict(model, state_dict, name_map, source=path)
    else:
        load_keras_weights(model, path)


def load_keras_weights(model: keras.Model, path: str) -> None:
    """Loads a Keras ``.weights.h5`` file, failing unless it sets every weight of ``model``.

    Keras itself only warns when a file leaves layers at their initial values (R50-max weights
    load "fine" into R50-hybrid), so the file's arrays are checked against the model first and
    a Keras warning about skipped layers is an error too.

    Raises:
        CheckpointError: naming the mismatch, when the file is for another model, size or
            head, or the problem, when it is not a readable HDF5 file (truncated, zero-filled,
            another format).
    """
    import h5py

    hint = "Build the model with the name and arguments the file was saved from."
    # Position embeddings may come from another resolution: counted, not shape-checked here;
    # PositionEmbedding.load_own_variables resamples them (and refuses another width).
    position = re.compile(r"(^|/)position_embedding(_\d+)?/vars/")
    stored: Counter = Counter()
    datasets: list[str] = []
    problems: list[str] = []

    def count(name, item):
        if isinstance(item, h5py.Dataset):
            datasets.append(name)
            # values outside the file (another file of the machine; a FIFO: a hang) or in chunks that inflate
            refused = h5_probe.refusal(name, item)
            if refused:
                problems.append(refused)
                return
            embedding = position.search(name) is not None
            stored.update([POSITION_EMBEDDING if embedding else tuple(item.shape)])
            if item.dtype.kind != "f":
                problems.append(f"{name}: {item.dtype} (non-float) values")
            elif embedding and (item.ndim not in (3, 4) or item.size > MAX_POSITION_EMBEDDING):
                problems.append(f"{name}: a position embedding of shape {item.shape}, {item.size} values (at most "
                                f"{MAX_POSITION_EMBEDDING} values in (1, tokens, width) or (1, height, width, "
                                f"channels))")

    # walked first in a child process: a damaged file can crash the HDF5 library (h5_probe)
    crashed = h5_probe.problem(path, read=False)
    if crashed:
        raise CheckpointError(f"{path}: {crashed}. Received: weights={path!r}")
    try:
        with h5py.File(path, "r") as f:
            f.visititems(count)
    except Exception as error:  # noqa: BLE001 - h5py raises OSError, KeyError, RuntimeError... on a damaged file
        raise CheckpointError(
            f"{path}: not a readable Keras .weights.h5 file ({describe(error)}). Received: weights={path!r}"
        ) from error
    if problems:
        raise CheckpointError(f"{path}: {problems[0]}. Received: weights={path!r}")
    resampled = {id(w) for layer in model.layers if isinstance(layer, PositionEmbedding) for w in layer.weights}
    expected = Counter(POSITION_EMBEDDING if id(w) in resampled else tuple(w.shape) for w in model.weights)
    if stored != expected:
        only_model = dict(list((expected - stored).items())[:4])
        only_file = dict(list((stored - expected).items())[:4])
        raise CheckpointError(
            f"The weights file does not fit model {model.name!r}: it holds {sum(stored.values())} arrays, the model "
            f"has {sum(expected.values())} weights (shapes only in the model: {only_model}; only in the file: "
            f"{only_file}). {hint} Received: weights={path!r}"
        )
    crashed = h5_probe.problem(path, read=True)  # the model's shapes: what the child reads is the model's size
    if crashed:
        raise CheckpointError(f"{path}: {crashed}. Received: weights={path!r}")
    _check_values(path, datasets)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*(Skipping|retain their freshly-initialized).*")
            model.load_weights(path)
    except Exception as error:  # Keras raises assorted types (ValueError, KeyError, UserWarning) on a mismatch.
        raise CheckpointError(
            f"The weights file does not fit model {model.name!r} ({describe(error)}). {hint} "
            f"Received: weights={path!r}"
        ) from error


def _check_values(path: str, datasets: list[str]) -> None:
    """Refuses NaN/Inf values and float64 values float32 cannot hold (as the PyTorch path does, with the same
    :func:`~pf_keras.weights.torch_convert.precision_loss_allowed` switch). The shapes were checked first, so
    what is read here is the size of the model's weights."""
    import h5py
    import numpy as np

    allow = torch_convert.precision_loss_allowed_now()
    try:
        with h5py.File(path, "r") as f:
            for name in datasets:
                problem = torch_convert.value_problem(np.asarray(f[name][()]), "float32", allow)
                if problem:
                    raise CheckpointError(f"{path}: {name}: {problem}. Received: weights={path!r}")
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - h5py's assorted errors on a damaged file
        raise CheckpointError(
            f"{path}: not a readable Keras .weights.h5 file ({describe(error)}). Received: weights={path!r}"
        ) from error
