"""Pre-norm transformer block whose token mixer is self-attention or the max-pool mixer."""

from __future__ import annotations

import math

import keras

from pf_keras.layers.drop_path import DropPath
from pf_keras.layers.max_pool_token_mixer import MaxPoolTokenMixer
from pf_keras.layers.multi_head_self_attention import MultiHeadSelfAttention
from pf_keras.layers.position_embedding import check_grid

MIXER_KINDS = ("attention", "max")
# LayerNorm epsilon of every PfLayer transformer (``partial(nn.LayerNorm, eps=1e-6)``).
LAYER_NORM_EPSILON = 1e-6


@keras.saving.register_keras_serializable(package="pf_keras")
class TransformerBlock(keras.layers.Layer):
    """``x + drop_path(mixer(LN(x)))``, then ``x + drop_path(MLP(LN(x)))``.

    The block of ViT-max and PiT-max (https://arxiv.org/abs/2202.02777): pre-norm
    LayerNorms (epsilon 1e-6), a token mixer (:class:`MultiHeadSelfAttention` or the
    parameter-free :class:`MaxPoolTokenMixer`), and an MLP ``Dense(C -> mlp_ratio * C)`` ->
    exact GELU -> ``Dense(-> C)`` with dropout after each dense layer (timm ``Mlp``).
    Inputs are (batch, tokens, channels) sequences (a square token grid, or ``grid_size``,
    for the max mixer) or (batch, height, width, channels) maps. Every sublayer, the
    weightless ones included, takes the block's dtype policy, so a block saved under mixed
    precision loads back under any global policy.

    Sublayers: ``norm1``, ``mixer``, ``norm2``, ``mlp_fc1``, ``mlp_fc2`` (reference:
    ``norm1``, ``attn``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), plus weightless dropout and
    drop-path layers.

    Args:
        num_heads: int. Attention heads (unused by the max mixer, which keeps it for configs).
        mixer: str. "attention" or "max". Defaults to "attention".
        mlp_ratio: float. MLP hidden width over the channels. Defaults to 4.
        mixer_expansion: int. Hidden width of the max mixer over the channels. Defaults to 3.
        drop_path_rate: float. Stochastic depth of both residual branches. Defaults to 0.
        dropout_rate: float. Dropout in the mixer and the MLP. Defaults to 0.
        epsilon: float. LayerNorm epsilon. Defaults to 1e-6.
        grid_size: (int, int) or None. Token grid of sequence inputs for the max mixer
            (see :class:`MaxPoolTokenMixer`). Defaults to None (square).
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Raises:
        ValueError: for an unknown mixer or a bad rate or ratio, and, when built, for input
            shapes the mixer cannot take.

    Example:
        >>> block = TransformerBlock(num_heads=2, mixer="max")
        >>> tuple(block(keras.ops.ones((2, 16, 8))).shape)
        (2, 16, 8)
    """

    def __init__(
        self,
        num_heads: int,
        mixer: str = "attention",
        mlp_ratio: float = 4.0,
        mixer_expansion: int = 3,
        drop_path_rate: float = 0.0,
        dropout_rate: float = 0.0,
        epsilon: float = LAYER_NORM_EPSILON,
        grid_size: tuple[int, int] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mixer not in MIXER_KINDS:
            raise ValueError(f"`mixer` must be one of {MIXER_KINDS}. Received: mixer={mixer!r}")
        if not mlp_ratio > 0:
            raise ValueError(f"`mlp_ratio` must be positive. Received: mlp_ratio={mlp_ratio}")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"`dropout_rate` must be in [0, 1). Received: dropout_rate={dropout_rate}")
        self.num_heads = num_heads
        self.mixer_kind = mixer
        self.mlp_ratio = float(mlp_ratio)
        self.mixer_expansion = mixer_expansion
        self.drop_path_rate = float(drop_path_rate)
        self.dropout_rate = float(dropout_rate)
        self.epsilon = float(epsilon)
        self.grid_size = check_grid(grid_size)

        dtype = self.dtype_policy
        self.norm1 = keras.layers.LayerNormalization(epsilon=self.epsilon, name="norm1", dtype=dtype)
        if mixer == "attention":
            self.mixer = MultiHeadSelfAttention(num_heads, dropout_rate=self.dropout_rate, name="mixer", dtype=dtype)
        else:
            self.mixer = MaxPoolTokenMixer(
                mixer_expansion, dropout_rate=self.dropout_rate, grid_size=self.grid_size, name="mixer", dtype=dtype
            )
        self.norm2 = keras.layers.LayerNormalization(epsilon=self.epsilon, name="norm2", dtype=dtype)
        self.drop_path = DropPath(self.drop_path_rate, name="drop_path", dtype=dtype)
        self.mlp_dropout = keras.layers.Dropout(self.dropout_rate, name="mlp_dropout", dtype=dtype)
        self.mlp_fc1 = None
        self.mlp_fc2 = None

    def build(self, input_shape):
        channels = input_shape[-1]
        hidden = int(channels * self.mlp_ratio)
        self.norm1.build(input_shape)
        self.mixer.build(input_shape)
        self.norm2.build(input_shape)
        self.mlp_fc1 = keras.layers.Dense(hidden, name="mlp_fc1", dtype=self.dtype_policy)
        self.mlp_fc2 = keras.layers.Dense(channels, name="mlp_fc2", dtype=self.dtype_policy)
        self.mlp_fc1.build(input_shape)
        self.mlp_fc2.build((*input_shape[:-1], hidden))

    def call(self, inputs, training=None):
        x = inputs + self.drop_path(self.mixer(self.norm1(inputs), training=training), training=training)
        y = keras.activations.gelu(self.mlp_fc1(self.norm2(x)), approximate=False)
        y = self.mlp_dropout(y, training=training)
        y = self.mlp_dropout(self.mlp_fc2(y), training=training)
        return x + self.drop_path(y, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def count_macs(self, input_shape) -> int:
        """Multiply-adds of the mixer's and the MLP's dense layers (see the mixers' ``count_macs``)."""
        positions = math.prod(int(s) for s in input_shape[1:-1])
        channels = int(input_shape[-1])
        return self.mixer.count_macs(input_shape) + 2 * positions * channels * int(channels * self.mlp_ratio)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "mixer": self.mixer_kind,
                "mlp_ratio": self.mlp_ratio,
                "mixer_expansion": self.mixer_expansion,
                "drop_path_rate": self.drop_path_rate,
                "dropout_rate": self.dropout_rate,
                "epsilon": self.epsilon,
                "grid_size": list(self.grid_size) if self.grid_size else None,
            }
        )
        return config
