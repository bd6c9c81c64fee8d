"""ResNet bottlenecks: regular, max (parameter-free) and efficient (hybrid).

All three come from one builder, :func:`apply_bottleneck`; they differ only in the spatial
op between the 1x1 reduction and the 1x1 expansion. The stride sits on that spatial op
(ResNet v1.5, as in torchvision and the PfLayer reference), never on the 1x1 reduction.

Layer names inside a block with prefix ``P``:
``P_reduce_{conv,bn,relu}``, the spatial op (``P_spatial_{pad,conv,bn,relu}`` for a conv,
``P_spatial_pool`` for the max-pool, ``P_spatial_avgpool`` + ``P_spatial_{conv,bn,relu}`` for
the efficient stride-2 op), ``P_expand_{conv,bn}``, ``P_shortcut_{conv,bn}`` when the shape
changes, ``P_drop_path`` when stochastic depth is on, ``P_add`` and ``P_out`` (final ReLU).
"""

from __future__ import annotations

import functools

import keras

from pf_keras.blocks.conv import apply_conv_bn, apply_max_pool_3x3
from pf_keras.layers.drop_path import DropPath

EXPANSION = 4
BLOCK_KINDS = ("regular", "max", "efficient")


def _apply_spatial(x, filters: int, *, kind: str, strides: int, name: str):
    """The 3x3 spatial op of a bottleneck."""
    if kind == "regular":
        return apply_conv_bn(x, filters, 3, strides=strides, name=name)
    if kind == "max" or strides == 1:  # the efficient block is a max block at stride 1
        return apply_max_pool_3x3(x, strides=strides, name=f"{name}_pool")
    # Efficient block at stride 2: 2x2 average pool (floors odd sides) -> 3x3 conv stride 1.
    x = keras.layers.AveragePooling2D(2, strides=2, padding="valid", name=f"{name}_avgpool")(x)
    return apply_conv_bn(x, filters, 3, strides=1, name=name)


def apply_bottleneck(
    x,
    filters: int,
    *,
    kind: str = "regular",
    strides: int = 1,
    drop_path_rate: float = 0.0,
    name: str,
):
    """A bottleneck residual block.

    ``kind`` selects the spatial op:

    - ``"regular"``: 3x3 Conv-BN-ReLU with the block's stride (ResNet-50).
    - ``"max"``: 3x3 max-pool with the block's stride, no BN/ReLU after it (R50-max).
    - ``"efficient"``: max-pool at stride 1; at stride 2, 2x2 avg-pool then 3x3 Conv-BN-ReLU
      (R50-hybrid).

    Args:
        x: tensor. NHWC input.
        filters: int. Width of the bottleneck; the block outputs ``4 * filters`` channels.
        kind: str. One of "regular", "max", "efficient". Defaults to "regular".
        strides: int. 1 or 2. Defaults to 1.
        drop_path_rate: float. Stochastic-depth rate of the residual branch. Defaults to 0.
        name: str. Prefix of every layer name, e.g. "stage2_block1".

    Returns:
        The output tensor.

    Raises:
        ValueError: for an unknown ``kind`` or a stride other than 1 or 2.
    """
    if kind not in BLOCK_KINDS:
        raise ValueError(f"Bottleneck kind must be one of {BLOCK_KINDS}. Received: kind={kind!r}")
    if strides not in (1, 2):
        raise ValueError(f"Bottleneck strides must be 1 or 2. Received: strides={strides}")
    out_filters = filters * EXPANSION
    shortcut = x
    if strides != 1 or x.shape[-1] != out_filters:
        shortcut = apply_conv_bn(x, out_filters, 1, strides=strides, activation=None, name=f"{name}_shortcut")
    y = apply_conv_bn(x, filters, 1, name=f"{name}_reduce")
    y = _apply_spatial(y, filters, kind=kind, strides=strides, name=f"{name}_spatial")
    y = apply_conv_bn(y, out_filters, 1, activation=None, name=f"{name}_expand")
    if drop_path_rate > 0.0:
        y = DropPath(drop_path_rate, name=f"{name}_drop_path")(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


apply_regular_bottleneck = functools.partial(apply_bottleneck, kind="regular")
apply_max_bottleneck = functools.partial(apply_bottleneck, kind="max")
apply_efficient_bottleneck = functools.partial(apply_bottleneck, kind="efficient")
