"""Learned additive position embedding, resized like PyTorch's bicubic on other grids."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from pf_keras.values import is_positive_int

# PyTorch's bicubic convolution constant (``F.interpolate(mode="bicubic")``). TensorFlow's
# ``tf.image.resize(method="bicubic")`` uses -0.5 (Keys) and renormalises the taps at the
# border instead of clamping, which is why this layer does its own resizing.
TORCH_CUBIC_A = -0.75
# The constant of PyTorch's antialiased bicubic (``antialias=True``; Pillow's value).
TORCH_CUBIC_A_ANTIALIAS = -0.5


def _cubic_weights(t, a: float = TORCH_CUBIC_A):
    """The four tap weights of PyTorch's cubic convolution for offsets ``t`` in [0, 1]."""

    def near(d):  # |d| <= 1
        return ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a

    return far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)


def bicubic_resize_matrix(out_size, in_size: int, dtype: str = "float32"):
    """(out_size, in_size) matrix of PyTorch's 1-D bicubic resize (``align_corners=False``).

    Row ``i`` holds the weights of output ``i``: source position
    ``(i + 0.5) * in_size / out_size - 0.5``, four taps with ``a = -0.75`` and indices
    clamped to the border, as ``torch.nn.functional.interpolate`` computes them (no
    antialiasing). ``out_size`` may be a scalar tensor (dynamic grids).

    Example:
        >>> m = bicubic_resize_matrix(3, 3)
        >>> keras.ops.convert_to_numpy(m).tolist()
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    scale = ops.cast(in_size, dtype) / ops.cast(out_size, dtype)
    source = (ops.cast(ops.arange(out_size), dtype) + 0.5) * scale - 0.5
    index = ops.minimum(ops.floor(source), float(in_size - 1))
    t = ops.clip(source - index, 0.0, 1.0)
    matrix = 0.0
    for tap, weight in enumerate(_cubic_weights(t)):
        # Clamp in float: the TFLite converter turns an int32 clip to [0, 6] into RELU6, which
        # has no int32 kernel.
        tap_index = ops.cast(ops.clip(index + float(tap - 1), 0.0, float(in_size - 1)), "int32")
        matrix = matrix + weight[:, None] * ops.one_hot(tap_index, in_size, dtype=dtype)
    return matrix


def antialiased_bicubic_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out_size, in_size) float64 matrix of PyTorch's ``F.interpolate(mode="bicubic", antialias=True)``.

    Pillow's rule, which PyTorch follows: ``a = -0.5``; output ``i`` is centred on
    ``(i + 0.5) * in_size / out_size`` and, when shrinking, the kernel is widened by the
    scale; taps outside the input are dropped and the remaining weights renormalised to 1.
    Differs from the plain rule (:func:`bicubic_resize_matrix`) also when enlarging.
    """
    scale = in_size / out_size
    support = 2.0 * max(scale, 1.0)
    inv_scale = 1.0 / max(scale, 1.0)
    matrix = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)  # int() truncates like PyTorch's cast
        hi = min(int(center + support + 0.5), in_size)
        d = np.abs((np.arange(lo, hi) - center + 0.5) * inv_scale)
        a = TORCH_CUBIC_A_ANTIALIAS
        near = ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
        far = ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
        weights = np.where(d < 1.0, near, np.where(d < 2.0, far, 0.0))
        if weights.sum() != 0.0:
            weights = weights / weights.sum()
        matrix[i, lo:hi] = weights
    return matrix


def resize_grid(grid, height, width):
    """Bicubic-resizes a (1, h, w, C) grid to (1, height, width, C), like PyTorch.

    Two matrix products with :func:`bicubic_resize_matrix` (rows, then columns); only
    MatMul, Reshape and Transpose reach the graph, all TFLite builtins.
    """
    _, in_h, in_w, channels = grid.shape
    x = ops.reshape(grid, (in_h, in_w * channels))
    x = ops.matmul(bicubic_resize_matrix(height, in_h, grid.dtype), x)  # (height, in_w * C)
    x = ops.transpose(ops.reshape(x, (height, in_w, channels)), (1, 0, 2))
    x = ops.matmul(bicubic_resize_matrix(width, in_w, grid.dtype), ops.reshape(x, (in_w, height * channels)))
    x = ops.transpose(ops.reshape(x, (width, height, channels)), (1, 0, 2))
    return ops.reshape(x, (1, height, width, channels))


def check_grid(grid, arg: str = "grid_size") -> tuple[int, int] | None:
    """``grid`` as a tuple of 2 positive ints (None stays None), or a ValueError naming ``arg``."""
    if grid is None:
        return None
    values = tuple(grid) if isinstance(grid, (tuple, list)) else (grid,)
    if len(values) != 2 or not all(is_positive_int(s) for s in values):
        raise ValueError(f"`{arg}` must be None or 2 positive ints. Received: {arg}={grid!r}")
    return values


def resample_position_embedding(
    embedding,
    grid_size: tuple[int, int],
    *,
    source_grid: tuple[int, int] | None = None,
    antialias: bool = False,
) -> np.ndarray:
    """A stored position embedding resampled to another grid (timm's ``resample_abs_pos_embed``).

    The rule of loading a checkpoint into a model of another resolution: bicubic,
    ``align_corners=False``, by default without antialiasing, exactly as
    ``timm.layers.resample_abs_pos_embed(..., interpolation="bicubic", antialias=False)``,
    DeiT's fine-tuning script and the PiT reference's own resize (the same numbers as
    :class:`PositionEmbedding` resizing on the fly). ``antialias=True`` is the rule of
    timm's current ViT checkpoint filter. Computed in float64, returned in the input dtype.

    Args:
        embedding: array. (1, tokens, C) with tokens in row-major grid order (ViT), or
            (1, h, w, C) (PiT, Keras layout).
        grid_size: (int, int). The grid to resample to.
        source_grid: (int, int) or None. Grid of a token embedding. Defaults to None: the
            square grid of ``tokens`` (as timm assumes). Ignored for (1, h, w, C) inputs.
        antialias: bool. PyTorch's antialiased bicubic instead. Defaults to False.

    Returns:
        A numpy array in the layout of ``embedding`` on ``grid_size``.

    Raises:
        ValueError: for a bad layout or grid, or tokens that do not fill the source grid.

    Example:
        >>> resample_position_embedding(np.zeros((1, 196, 8)), (24, 24)).shape
        (1, 576, 8)
    """
    array = np.asarray(embedding)
    if grid_size is None:
        raise ValueError("`grid_size` must be 2 positive ints. Received: grid_size=None")
    height, width = check_grid(grid_size)
    if array.ndim == 4 and array.shape[0] == 1:
        grid = array[0]
    elif array.ndim == 3 and array.shape[0] == 1:
        tokens = array.shape[1]
        if source_grid is None:
            side = math.isqrt(tokens)
            source_grid = (side, side)
        source_grid = check_grid(source_grid, "source_grid")
        if source_grid[0] * source_grid[1] != tokens:
            raise ValueError(
                f"A (1, tokens, C) position embedding needs its grid: {tokens} tokens do not fill "
                f"{source_grid[0]}x{source_grid[1]}; pass `source_grid`. Received: shape={array.shape}"
            )
        grid = array[0].reshape(*source_grid, array.shape[2])
    else:
        raise ValueError(
            f"A position embedding is (1, tokens, C) or (1, h, w, C). Received: shape={array.shape}"
        )
    in_h, in_w, channels = grid.shape
    if antialias:
        rows, cols = antialiased_bicubic_matrix(height, in_h), antialiased_bicubic_matrix(width, in_w)
    else:
        rows = ops.convert_to_numpy(bicubic_resize_matrix(height, in_h, "float32")).astype("float64")
        cols = ops.convert_to_numpy(bicubic_resize_matrix(width, in_w, "float32")).astype("float64")
    out = np.einsum("yh,hwc,xw->yxc", rows, grid.astype("float64"), cols).astype(array.dtype)
    return out.reshape(1, height * width, channels) if array.ndim == 3 else out[None]


@keras.saving.register_keras_serializable(package="pf_keras")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding to tokens or to a feature map.

    On (batch, tokens, channels) inputs the embedding is (1, tokens, channels) (ViT). On
    (batch, height, width, channels) maps it is a (1, grid_h, grid_w, channels) grid (PiT);
    inputs on another grid get the embedding resized with PyTorch's bicubic interpolation
    (``a = -0.75``, ``align_corners=False``, border clamping; see
    :func:`bicubic_resize_matrix`), as the PiT reference does, also when the input size is
    only known at run time. Initialised from a truncated normal with std 0.02 (as the
    reference).

    The embedding is added in the layer's compute dtype but kept and resized in its
    variable dtype (float32 under mixed precision). Weights of another grid (a checkpoint
    trained at 224 loaded into a 384 model) are resampled on load with
    :func:`resample_position_embedding`: :meth:`resample` serves the PyTorch converter,
    ``load_own_variables`` Keras weight files.

    Args:
        grid_size: (int, int) or None. For map inputs: grid of the stored embedding.
            Defaults to None: the grid of the first input, which must then be known. For
            token inputs: the (rows, columns) grid the tokens fill in row-major order
            (needed to resample a non-square one). Defaults to None: a square grid.
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Raises:
        ValueError: for a bad ``grid_size``, and, when built, for inputs that are not
            rank 3 or 4, whose embedding shape is unknown, or whose tokens do not fill
            ``grid_size``.

    Example:
        >>> layer = PositionEmbedding(grid_size=(4, 4))
        >>> tuple(layer(keras.ops.zeros((2, 6, 5, 8))).shape)  # resized to 6x5 on the fly
        (2, 6, 5, 8)
    """

    def __init__(self, grid_size: tuple[int, int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.grid_size = check_grid(grid_size)
        self.embedding = None

    def build(self, input_shape):
        if len(input_shape) == 3:
            shape = (1, input_shape[1], input_shape[2])
            if self.grid_size is not None and input_shape[1] not in (None, math.prod(self.grid_size)):
                raise ValueError(
                    f"The tokens must fill grid_size={self.grid_size}. Received: input_shape={tuple(input_shape)}"
                )
            if self.grid_size is not None:
                shape = (1, math.prod(self.grid_size), input_shape[2])
        elif len(input_shape) == 4:
            shape = (1, *(self.grid_size or input_shape[1:3]), input_shape[3])
        else:
            raise ValueError(
                "PositionEmbedding takes (batch, tokens, channels) or (batch, height, width, channels) inputs. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        if None in shape:
            raise ValueError(
                "PositionEmbedding needs known tokens and channels, or `grid_size` for maps of unknown size. "
                f"Received: input_shape={tuple(input_shape)}, grid_size={self.grid_size}"
            )
        # No autocast: the embedding is resized in float32 and only the sum runs in the compute dtype.
        self.embedding = self.add_weight(
            shape=shape,
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="embedding",
            autocast=False,
        )

    def call(self, inputs):
        embedding = ops.convert_to_tensor(self.embedding)
        if len(inputs.shape) == 4:
            height, width = inputs.shape[1], inputs.shape[2]
            if (height, width) != tuple(self.embedding.shape[1:3]):
                if height is None or width is None:
                    shape = ops.shape(inputs)
                    height, width = shape[1], shape[2]
                embedding = resize_grid(embedding, height, width)
        return inputs + ops.cast(embedding, inputs.dtype)

    def resample(self, value, *, antialias: bool = False) -> np.ndarray:
        """``value``, a stored embedding (Keras layout) of another grid, resampled to this layer's.

        Token embeddings are taken as square grids (as timm does); see
        :func:`resample_position_embedding`.

        Raises:
            ValueError: when the layer is not built, or the channels or layouts differ.
        """
        if self.embedding is None:
            raise ValueError(f"Layer {self.name!r} must be built before it can take weights.")
        shape, value = tuple(self.embedding.shape), np.asarray(value)
        if value.ndim != len(shape) or value.shape[-1] != shape[-1]:
            raise ValueError(
                f"Layer {self.name!r}: a stored position embedding {value.shape} cannot be resampled to {shape} "
                "(another layout or channel count)."
            )
        if len(shape) == 4:
            grid = shape[1:3]
        else:
            grid = self.grid_size or (math.isqrt(shape[1]),) * 2
        return resample_position_embedding(value, grid, antialias=antialias).astype(self.embedding.dtype)

    def load_own_variables(self, store):
        """Loads the embedding, resampling one saved on another grid."""
        if self.embedding is not None and len(store.keys()) == 1:
            value = np.asarray(store["0"])
            if value.shape != tuple(self.embedding.shape):
                self.embedding.assign(self.resample(value))
                return
        super().load_own_variables(store)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"grid_size": list(self.grid_size) if self.grid_size else None})
        return config
