"""The paper's parameter-free token mixer ("efficient layer") of ViT-max and PiT-max."""

from __future__ import annotations

import math

import keras
from keras import ops

from pf_keras.layers.max_pool import MaxPool2D
from pf_keras.layers.position_embedding import check_grid


def token_grid_side(tokens: int | None, layer_name: str) -> int:
    """Side of the square grid holding ``tokens`` tokens, or a ValueError."""
    side = math.isqrt(tokens) if isinstance(tokens, int) and tokens > 0 else 0
    if side * side != tokens:
        raise ValueError(
            f"Layer {layer_name!r} needs a known square number of tokens (a square patch grid) on "
            f"(batch, tokens, channels) inputs; pass `grid_size` for another grid, or a (batch, height, "
            f"width, channels) map. Received: tokens={tokens}"
        )
    return side


@keras.saving.register_keras_serializable(package="pf_keras")
class MaxPoolTokenMixer(keras.layers.Layer):
    """Expand, GELU, 3x3 max-pool over the token grid, GELU, project back.

    The token mixer that replaces self-attention in the odd blocks of ViT-max and PiT-max
    (Han et al., ICLR 2022, https://arxiv.org/abs/2202.02777; ``EffLayer`` in the
    reference): ``Dense(C -> expansion * C)`` -> exact (erf) GELU -> max-pool
    (``pool_size``, stride 1, padding ignored like PyTorch's implicit -inf padding) -> GELU
    -> ``Dense(expansion * C -> C)`` -> dropout. The only spatial operation has no
    parameters.

    Inputs are (batch, height, width, channels) maps, or (batch, tokens, channels)
    sequences in row-major order of their grid (as a patch embedding produces them): the
    ``grid_size`` grid, or else a square one. The grid is fixed when the layer is built, so
    ``call`` reads no shapes and traces alike on every backend (``jax.jit``, torch export).

    Sublayers: ``expand`` and ``proj`` (``attn.qkv`` and ``attn.proj`` in the reference).

    Args:
        expansion: int. Hidden width as a multiple of the input channels. Defaults to 3
            (the reference's fixed value).
        pool_size: int. Odd side of the max-pool window. Defaults to 3.
        use_bias: bool. Biases in both dense layers. Defaults to True.
        dropout_rate: float. Dropout on the output. Defaults to 0.
        grid_size: (int, int) or None. (rows, columns) of the token grid of sequence
            inputs. Defaults to None: the square grid of the static token count.
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Raises:
        ValueError: for a bad ``expansion``, ``pool_size`` or ``dropout_rate``, and, when
            built, for inputs that are not rank 3 or 4 or whose token count neither fills
            ``grid_size`` nor is a known square.

    Example:
        >>> mixer = MaxPoolTokenMixer()
        >>> tuple(mixer(keras.ops.ones((2, 16, 8))).shape)  # a 4x4 grid of tokens
        (2, 16, 8)
        >>> tuple(mixer(keras.ops.ones((2, 3, 5, 8))).shape)  # or a map
        (2, 3, 5, 8)
        >>> tuple(MaxPoolTokenMixer(grid_size=(3, 5))(keras.ops.ones((2, 15, 8))).shape)  # non-square grid
        (2, 15, 8)
    """

    def __init__(
        self,
        expansion: int = 3,
        pool_size: int = 3,
        use_bias: bool = True,
        dropout_rate: float = 0.0,
        grid_size: tuple[int, int] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(expansion, int) or expansion < 1:
            raise ValueError(f"`expansion` must be a positive int. Received: expansion={expansion!r}")
        if not isinstance(pool_size, int) or pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(
                f"`pool_size` must be a positive odd int (the window is centred). Received: pool_size={pool_size!r}"
            )
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"`dropout_rate` must be in [0, 1). Received: dropout_rate={dropout_rate}")
        self.expansion = expansion
        self.pool_size = pool_size
        self.use_bias = use_bias
        self.dropout_rate = float(dropout_rate)
        self.grid_size = check_grid(grid_size)
        self.token_grid = None  # (rows, columns) of sequence inputs, set by build
        self.expand = None
        self.proj = None
        # Stride 1 "same": out-of-grid positions are ignored, exactly like PyTorch's padding
        # of pool_size // 2 (the GELU output can be negative, so zero padding would be wrong).
        # A MaxPooling2D with the faster gradient where it is traced (pf_keras.layers.max_pool).
        self.pool = MaxPool2D(pool_size, strides=1, padding="same", name="pool", dtype=self.dtype_policy)
        self.dropout = keras.layers.Dropout(self.dropout_rate, name="dropout", dtype=self.dtype_policy)

    def build(self, input_shape):
        if len(input_shape) not in (3, 4):
            raise ValueError(
                "MaxPoolTokenMixer takes (batch, tokens, channels) or (batch, height, width, channels) "
                f"inputs. Received: input_shape={tuple(input_shape)}"
            )
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"The channel dimension must be known. Received: input_shape={tuple(input_shape)}")
        if len(input_shape) == 3:
            self.token_grid = self._grid_of(input_shape[1])
        hidden = channels * self.expansion
        self.expand = keras.layers.Dense(hidden, use_bias=self.use_bias, name="expand", dtype=self.dtype_policy)
        self.proj = keras.layers.Dense(channels, use_bias=self.use_bias, name="proj", dtype=self.dtype_policy)
        self.expand.build(input_shape)
        self.proj.build((*input_shape[:-1], hidden))

    def _grid_of(self, tokens) -> tuple[int, int]:
        """(rows, columns) of ``tokens`` tokens: ``grid_size``, or the square grid; else a ValueError."""
        if self.grid_size is None:
            side = token_grid_side(tokens, self.name)
            return side, side
        if tokens is not None and tokens != math.prod(self.grid_size):
            raise ValueError(
                f"Layer {self.name!r}: the tokens must fill grid_size={self.grid_size}. Received: tokens={tokens}"
            )
        return self.grid_size

    def call(self, inputs, training=None):
        x = keras.activations.gelu(self.expand(inputs), approximate=False)
        if len(inputs.shape) == 3:  # tokens -> grid (reshape only: no Flex ops in TFLite)
            # The grid from build: a traced token count (a torch SymInt) is no int and is never read.
            tokens, grid = inputs.shape[1], self.token_grid
            if grid is None or (isinstance(tokens, int) and tokens != grid[0] * grid[1]):
                grid = self._grid_of(tokens)  # built on a map, or reused on another sequence
            rows, cols = grid
            hidden = x.shape[-1]
            x = ops.reshape(self.pool(ops.reshape(x, (-1, rows, cols, hidden))), (-1, rows * cols, hidden))
        else:
            x = self.pool(x)
        x = self.proj(keras.activations.gelu(x, approximate=False))
        return self.dropout(x, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def count_macs(self, input_shape) -> int:
        """Multiply-adds of the two dense layers (the max-pool has none)."""
        positions = math.prod(int(s) for s in input_shape[1:-1])
        return 2 * positions * int(input_shape[-1]) ** 2 * self.expansion

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "expansion": self.expansion,
                "pool_size": self.pool_size,
                "use_bias": self.use_bias,
                "dropout_rate": self.dropout_rate,
                "grid_size": list(self.grid_size) if self.grid_size else None,
            }
        )
        return config
