"""Functional building blocks (``apply_<block>(x, ..., name=...)``)."""

from pf_keras.blocks.bottleneck import (
    BLOCK_KINDS,
    TRAINABLE_KINDS,
    apply_bottleneck,
    apply_efficient_bottleneck,
    apply_max_bottleneck,
    apply_regular_bottleneck,
)
from pf_keras.blocks.conv import BN_EPSILON, BN_MOMENTUM, apply_avg_pool_3x3, apply_conv_bn, apply_max_pool_3x3

__all__ = [
    "BLOCK_KINDS",
    "BN_EPSILON",
    "BN_MOMENTUM",
    "TRAINABLE_KINDS",
    "apply_avg_pool_3x3",
    "apply_bottleneck",
    "apply_conv_bn",
    "apply_efficient_bottleneck",
    "apply_max_bottleneck",
    "apply_max_pool_3x3",
    "apply_regular_bottleneck",
]
