"""Copies a PyTorch state dict into a Keras model through an explicit name table.

Each model family supplies a *name map*: a function from a Keras layer name to the PyTorch
module prefix holding that layer's parameters (or None for layers without weights). Layers
with sublayers (transformer blocks) may also answer for deeper paths such as
``"block1/mixer"`` or for a whole variable path (see :func:`_torch_key`). The
engine here turns each Keras variable into a PyTorch key with the fixed leaf table below,
converts the layout, and checks the whole state dict before writing anything: every
missing, unexpected and mis-shaped key is reported in one :class:`CheckpointError`, then
every unusable value: non-finite values, integer or boolean values for a float weight, and
a narrowing float cast (float64 -> float32) that changes a value, unless precision loss is
allowed (``allow_precision_loss=True`` or :func:`precision_loss_allowed`).

Layouts: Conv2d (out, in, kh, kw) -> (kh, kw, in, out); depthwise (C*m, 1, kh, kw) ->
(kh, kw, C, m); Linear (out, in) -> (in, out); position embeddings (1, C, h, w) -> (1, h, w, C).
Position embeddings trained on another grid (another resolution) are resampled to the
model's with :meth:`pf_keras.layers.PositionEmbedding.resample` (bicubic, as timm loads them).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import keras
import numpy as np

from pf_keras.layers.position_embedding import PositionEmbedding
from pf_keras.weights.errors import CheckpointError

# Keras variable name -> PyTorch parameter/buffer name.
LEAF_NAMES = {
    "kernel": "weight",
    "depthwise_kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
IGNORED_SUFFIXES = ("num_batches_tracked",)

NameMap = Callable[[str], "str | None"]

_ALLOW_PRECISION_LOSS = contextvars.ContextVar("allow_precision_loss", default=False)


@contextlib.contextmanager
def precision_loss_allowed(allow: bool = True) -> Iterator[None]:
    """Within the block, conversions default to ``allow_precision_loss=allow``.

    For callers that reach the converter through a builder (``create_model(name,
    weights="x.pth")``, ``pf_keras.convert``), which has no argument for it.
    """
    token = _ALLOW_PRECISION_LOSS.set(allow)
    try:
        yield
    finally:
        _ALLOW_PRECISION_LOSS.reset(token)


def precision_loss_allowed_now() -> bool:
    """The :func:`precision_loss_allowed` setting in effect (False unless set)."""
    return _ALLOW_PRECISION_LOSS.get()


def value_problem(array: np.ndarray, dtype: str, allow_precision_loss: bool) -> str | None:
    """Why ``array`` cannot become a ``dtype`` weight, or None (checks before any cast): non-finite values,
    non-float values for a float weight, a narrowing cast that changes a value unless ``allow_precision_loss``."""
    target = np.dtype(dtype)
    if target.kind != "f":
        return None if array.dtype.kind in "iub" else f"{array.dtype} values for a {dtype} weight"
    if array.dtype.kind != "f":
        return f"{array.dtype} (non-float) values for a {dtype} weight"
    finite = np.isfinite(array)
    if not finite.all():
        return f"{array.size - int(finite.sum())} NaN/Inf values"
    if array.dtype.itemsize > target.itemsize:
        with np.errstate(over="ignore"):
            cast = array.astype(target)
        if not np.isfinite(cast).all():
            return f"{array.dtype} values beyond the {dtype} range"
        if not allow_precision_loss and not np.array_equal(cast.astype(array.dtype), array):
            return (
                f"{array.dtype} values not exactly representable in {dtype} (pass allow_precision_loss=True / "
                "--allow_precision_loss to round them)"
            )
    return None


def _to_keras(leaf: str, array: np.ndarray, keras_shape: tuple) -> np.ndarray:
    if leaf == "depthwise_kernel" and array.ndim == 4:
        c_times_m, _, kh, kw = array.shape
        channels, multiplier = keras_shape[2], keras_shape[3]
        if c_times_m != channels * multiplier:
            return array  # reported as mis-shaped by the caller
        return array.reshape(channels, multiplier, kh, kw).transpose(2, 3, 0, 1)
    if array.ndim == 4 and len(keras_shape) == 4:
        if leaf == "kernel":
            return array.transpose(2, 3, 1, 0)
        return array.transpose(0, 2, 3, 1)  # (1, C, h, w) grid embeddings
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    return array


def plan_torch_transfer(
    model: keras.Model,
    state_dict: dict[str, np.ndarray],
    name_map: NameMap,
    *,
    allow_precision_loss: bool | None = None,
    source: str = "Checkpoint",
) -> list[tuple[keras.Variable, np.ndarray]]:
    """Matches every Keras variable to a converted PyTorch array, or raises.

    Args:
        model: keras.Model. The model to fill.
        state_dict: dict. PyTorch names to arrays in PyTorch layout.
        name_map: callable. Keras layer name -> PyTorch module prefix (None: no weights).
        allow_precision_loss: bool or None. Round float64 values that float32 cannot hold
            exactly instead of refusing them. Defaults to None: the current
            :func:`precision_loss_allowed` setting (False unless set).
        source: str. Names the checkpoint (its path) in error messages.

    Returns:
        (variable, array) pairs, arrays already in Keras layout.

    Raises:
        CheckpointError: naming every missing, unexpected and mis-shaped key; otherwise
            every key with unusable values (non-finite, integer for a float weight, lossy).
    """
    if allow_precision_loss is None:
        allow_precision_loss = precision_loss_allowed_now()
    pairs, missing, misshaped, bad_values, used = [], [], [], [], set()
    for layer in model.layers:
        variables = layer.weights
        if not variables:
            continue
        prefix = name_map(layer.name)
        if prefix is None:
            raise ValueError(f"No PyTorch name for Keras layer {layer.name!r}; the name table is incomplete.")
        for variable in variables:
            # variable.path is "<layer>/<sublayer>/.../<leaf>"; sublayers map to dotted names.
            parts = [layer.name, *variable.path.split("/")[1:]]
            leaf = parts[-1]
            key = _torch_key(parts, name_map)
            if leaf == "kernel" and isinstance(layer, keras.layers.DepthwiseConv2D):
                leaf = "depthwise_kernel"  # Keras 3 names the depthwise kernel "kernel"
            if key not in state_dict:
                missing.append(key)
                continue
            used.add(key)
            array = _to_keras(leaf, np.asarray(state_dict[key]), tuple(variable.shape))
            if tuple(array.shape) != tuple(variable.shape) and isinstance(layer, PositionEmbedding):
                try:  # trained at another resolution: resample (bicubic, timm's rule)
                    array = layer.resample(array)
                except ValueError:
                    pass  # another layout or width: reported as mis-shaped below
            if tuple(array.shape) != tuple(variable.shape):
                misshaped.append(
                    f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {_torch_shape(leaf, variable.shape)}"
                )
                continue
            problem = value_problem(array, variable.dtype, allow_precision_loss)
            if problem:
                bad_values.append(f"{key}: {problem}")
                continue
            pairs.append((variable, array.astype(variable.dtype)))
    unexpected = sorted(k for k in state_dict if k not in used and not k.endswith(IGNORED_SUFFIXES))
    if missing or unexpected or misshaped:
        raise CheckpointError(
            f"{source} does not fit model {model.name!r}: "
            f"{len(missing)} missing keys {missing}; {len(unexpected)} unexpected keys {unexpected}; "
            f"{len(misshaped)} mis-shaped keys {misshaped}. Check that the model name and its "
            "arguments (depths, width_mult, classes, include_top) match the checkpoint."
        )
    if bad_values:
        raise CheckpointError(f"{source} has unusable values in {len(bad_values)} keys: {'; '.join(bad_values)}")
    return pairs


def _torch_key(parts: list[str], name_map: NameMap) -> str:
    """PyTorch key of the Keras variable path ``parts`` ([layer, *sublayers, leaf]).

    ``name_map`` is asked about the whole variable path first (an answer is the complete
    key, for bare ``nn.Parameter``s such as ``pos_embed``), then about the module paths
    ``layer/sub/...`` from the deepest to the layer itself; the first answer is the module
    prefix, and the remaining sublayer names and the leaf (through LEAF_NAMES) are appended.
    Families whose layers have no sublayers only ever answer for the layer name.
    """
    full = name_map("/".join(parts))
    if full is not None:
        return full
    leaf = parts[-1]
    for cut in range(len(parts) - 1, 0, -1):
        prefix = name_map("/".join(parts[:cut]))
        if prefix is not None:
            return ".".join(p for p in [prefix, *parts[cut:-1], LEAF_NAMES.get(leaf, leaf)] if p)
    raise AssertionError("unreachable: the layer name has a prefix")  # checked by the caller


def _torch_shape(leaf: str, keras_shape) -> tuple:
    shape = tuple(keras_shape)
    if leaf == "depthwise_kernel" and len(shape) == 4:
        return (shape[2] * shape[3], 1, shape[0], shape[1])
    if leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    if len(shape) == 4:
        return (shape[0], shape[3], shape[1], shape[2])
    return shape


def load_torch_state_dict(
    model: keras.Model,
    state_dict: dict[str, np.ndarray],
    name_map: NameMap,
    *,
    allow_precision_loss: bool | None = None,
    source: str = "Checkpoint",
) -> None:
    """Checks the whole state dict against the model (see :func:`plan_torch_transfer`), then assigns every variable."""
    plan = plan_torch_transfer(model, state_dict, name_map, allow_precision_loss=allow_precision_loss, source=source)
    for variable, array in plan:
        variable.assign(array)
