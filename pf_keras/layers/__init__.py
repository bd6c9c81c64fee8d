"""Parameter-free primitives, transformer layers and small utility layers."""

from pf_keras.layers.batch_norm import BatchNormalization
from pf_keras.layers.conv import Conv2D
from pf_keras.layers.drop_path import DropPath
from pf_keras.layers.max_pool import MaxPool2D, max_pool_2d
from pf_keras.layers.max_pool_token_mixer import MaxPoolTokenMixer
from pf_keras.layers.multi_head_self_attention import MultiHeadSelfAttention
from pf_keras.layers.position_embedding import PositionEmbedding, bicubic_resize_matrix, resize_grid
from pf_keras.layers.transformer_block import MIXER_KINDS, TransformerBlock
from pf_keras.layers.transformer_stack import MIXER_PATTERNS, apply_transformer_stack, resolve_mixers

__all__ = [
    "MIXER_KINDS",
    "MIXER_PATTERNS",
    "BatchNormalization",
    "Conv2D",
    "DropPath",
    "MaxPool2D",
    "MaxPoolTokenMixer",
    "MultiHeadSelfAttention",
    "PositionEmbedding",
    "TransformerBlock",
    "apply_transformer_stack",
    "bicubic_resize_matrix",
    "max_pool_2d",
    "resize_grid",
    "resolve_mixers",
]
