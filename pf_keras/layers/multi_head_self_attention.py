"""Multi-head self-attention with one fused query/key/value projection (timm layout)."""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="pf_keras")
class MultiHeadSelfAttention(keras.layers.Layer):
    """Multi-head self-attention over tokens, with a fused qkv projection.

    The attention of the even blocks of ViT-max and PiT-max (the timm ``Attention`` the
    reference uses): ``qkv = Dense(C -> 3C)``, whose outputs are laid out as
    (3, num_heads, head_dim); ``softmax(q k^T * head_dim**-0.5) v``; ``proj = Dense(C -> C)``;
    dropout. Converted checkpoints therefore load without reordering.

    Inputs are (batch, tokens, channels) sequences or (batch, height, width, channels) maps
    (attended as height * width tokens and returned as a map). Only reshapes, transposes,
    splits and batched matmuls are used, so the layer converts to builtin TFLite ops.

    Args:
        num_heads: int. Number of heads; must divide the channels.
        use_bias: bool. Biases in both projections. Defaults to True.
        dropout_rate: float. Dropout on the output projection. Defaults to 0.
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Raises:
        ValueError: for a bad ``num_heads`` or ``dropout_rate``, and, when built, for
            channels not divisible by ``num_heads`` or inputs that are not rank 3 or 4.

    Example:
        >>> attention = MultiHeadSelfAttention(num_heads=2)
        >>> tuple(attention(keras.ops.ones((2, 5, 8))).shape)
        (2, 5, 8)
    """

    def __init__(self, num_heads: int, use_bias: bool = True, dropout_rate: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"`num_heads` must be a positive int. Received: num_heads={num_heads!r}")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"`dropout_rate` must be in [0, 1). Received: dropout_rate={dropout_rate}")
        self.num_heads = num_heads
        self.use_bias = use_bias
        self.dropout_rate = float(dropout_rate)
        self.qkv = None
        self.proj = None
        self.dropout = keras.layers.Dropout(self.dropout_rate, name="dropout", dtype=self.dtype_policy)

    def build(self, input_shape):
        if len(input_shape) not in (3, 4):
            raise ValueError(
                "MultiHeadSelfAttention takes (batch, tokens, channels) or (batch, height, width, channels) "
                f"inputs. Received: input_shape={tuple(input_shape)}"
            )
        channels = input_shape[-1]
        if channels is None or channels % self.num_heads:
            raise ValueError(
                f"The channels must be a known multiple of num_heads={self.num_heads}. "
                f"Received: channels={channels}"
            )
        self.qkv = keras.layers.Dense(3 * channels, use_bias=self.use_bias, name="qkv", dtype=self.dtype_policy)
        self.proj = keras.layers.Dense(channels, use_bias=self.use_bias, name="proj", dtype=self.dtype_policy)
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def call(self, inputs, training=None):
        channels = inputs.shape[-1]
        head_dim = channels // self.num_heads
        if len(inputs.shape) == 4:
            shape = ops.shape(inputs)
            tokens = shape[1] * shape[2]
            x = ops.reshape(inputs, (-1, tokens, channels))
        else:
            tokens = ops.shape(inputs)[1]
            x = inputs

        def split_heads(t):  # (batch, tokens, C) -> (batch, heads, tokens, head_dim)
            return ops.transpose(ops.reshape(t, (-1, tokens, self.num_heads, head_dim)), (0, 2, 1, 3))

        q, k, v = ops.split(self.qkv(x), 3, axis=-1)
        q = split_heads(q) * ops.cast(head_dim**-0.5, x.dtype)
        k, v = split_heads(k), split_heads(v)
        weights = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))), axis=-1)
        x = ops.reshape(ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3)), (-1, tokens, channels))
        x = self.dropout(self.proj(x), training=training)
        if len(inputs.shape) == 4:
            x = ops.reshape(x, (-1, shape[1], shape[2], channels))
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def count_macs(self, input_shape) -> int:
        """Multiply-adds of the qkv and output projections.

        The two token-by-token products (``q k^T`` and ``weights v``, together
        ``2 * tokens**2 * channels``) are left out, as in the paper's counts; see
        :meth:`attention_macs`.
        """
        positions = math.prod(int(s) for s in input_shape[1:-1])
        return 4 * positions * int(input_shape[-1]) ** 2

    @staticmethod
    def attention_macs(input_shape) -> int:
        """Multiply-adds of ``q k^T`` and ``weights v``, which :meth:`count_macs` leaves out."""
        positions = math.prod(int(s) for s in input_shape[1:-1])
        return 2 * positions**2 * int(input_shape[-1])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"num_heads": self.num_heads, "use_bias": self.use_bias, "dropout_rate": self.dropout_rate})
        return config
