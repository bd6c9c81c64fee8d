"""Learned additive position embedding, resized like PyTorch's bicubic on other grids."""

from __future__ import annotations

import keras
from keras import ops

# PyTorch's bicubic convolution constant (``F.interpolate(mode="bicubic")``). TensorFlow's
# ``tf.image.resize(method="bicubic")`` uses -0.5 (Keys) and renormalises the taps at the
# border instead of clamping, which is why this layer does its own resizing.
TORCH_CUBIC_A = -0.75


def _cubic_weights(t):
    """The four tap weights of PyTorch's cubic convolution for offsets ``t`` in [0, 1]."""
    a = TORCH_CUBIC_A

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

    Args:
        grid_size: (int, int) or None. Grid of the stored embedding for map inputs.
            Defaults to None: the grid of the first input, which must then be known.
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Raises:
        ValueError: for a bad ``grid_size``, and, when built, for inputs that are not
            rank 3 or 4 or whose embedding shape is unknown.

    Example:
        >>> layer = PositionEmbedding(grid_size=(4, 4))
        >>> tuple(layer(keras.ops.zeros((2, 6, 5, 8))).shape)  # resized to 6x5 on the fly
        (2, 6, 5, 8)
    """

    def __init__(self, grid_size: tuple[int, int] | None = None, **kwargs):
        super().__init__(**kwargs)
        if grid_size is not None:
            grid_size = tuple(grid_size)
            if len(grid_size) != 2 or not all(isinstance(s, int) and s >= 1 for s in grid_size):
                raise ValueError(f"`grid_size` must be None or 2 positive ints. Received: grid_size={grid_size!r}")
        self.grid_size = grid_size
        self.embedding = None

    def build(self, input_shape):
        if len(input_shape) == 3:
            shape = (1, input_shape[1], input_shape[2])
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
        self.embedding = self.add_weight(
            shape=shape, initializer=keras.initializers.TruncatedNormal(stddev=0.02), name="embedding"
        )

    def call(self, inputs):
        embedding = ops.cast(self.embedding, inputs.dtype)
        if len(inputs.shape) == 4:
            height, width = inputs.shape[1], inputs.shape[2]
            if (height, width) != tuple(self.embedding.shape[1:3]):
                if height is None or width is None:
                    shape = ops.shape(inputs)
                    height, width = shape[1], shape[2]
                embedding = resize_grid(embedding, height, width)
        return inputs + embedding

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"grid_size": list(self.grid_size) if self.grid_size else None})
        return config
