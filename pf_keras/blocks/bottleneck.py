"""ResNet bottlenecks with any spatial op of the paper's layer-level study.

Every kind comes from one builder, :func:`apply_bottleneck`; the kinds differ only in the
spatial op between the 1x1 reduction and the 1x1 expansion (the paper's study swaps exactly
that op). The stride sits on that spatial op (ResNet v1.5, as in torchvision and the PfLayer
reference), never on the 1x1 reduction.

Kinds (``BLOCK_KINDS``); "trainable" ops carry weights, the others are parameter-free:

- ``"regular"``: 3x3 Conv-BN-ReLU (ResNet-50). Trainable.
- ``"depthwise"``: 3x3 depthwise Conv-BN-ReLU (PyTorch ``groups=C``). Trainable.
- ``"max"``: 3x3 max-pool, padding 1, no BN/ReLU after it (R50-max).
- ``"average"``: 3x3 average pool, padding 1, zeros counted in the border windows (PyTorch
  ``AvgPool2d(3, s, 1)`` with its default ``count_include_pad=True``), no BN/ReLU.
- ``"identity"``: no spatial op. At stride 2 it subsamples (keeps pixel ``(2i, 2j)``, as a
  1x1 stride-2 op or PyTorch ``x[:, :, ::2, ::2]`` does), so the block still downsamples
  and matches its 1x1/2 shortcut.
- ``"efficient"``: max-pool at stride 1; at stride 2, 2x2 avg-pool then 3x3 Conv-BN-ReLU
  (R50-hybrid). Trainable at stride 2.

Layer names inside a block with prefix ``P`` (stable: the PyTorch name table reads them):
``P_reduce_{conv,bn,relu}``; the spatial op: ``P_spatial_{pad,conv,bn,relu}`` (regular),
``P_spatial_{pad,dwconv,bn,relu}`` (depthwise), ``P_spatial_pool`` (+ ``P_spatial_pool_pad``
at stride 2) for max, ``P_spatial_pool_pad`` + ``P_spatial_pool`` for average,
``P_spatial_identity`` / ``P_spatial_subsample`` (stride 2) for identity,
``P_spatial_avgpool`` + ``P_spatial_{conv,bn,relu}`` for the efficient stride-2 op;
``P_expand_{conv,bn}``, ``P_shortcut_{conv,bn}`` when the shape changes, ``P_drop_path`` when
stochastic depth is on, ``P_add`` and ``P_out`` (final ReLU).
"""

from __future__ import annotations

import functools

import keras

from pf_keras.blocks.conv import apply_avg_pool_3x3, apply_conv_bn, apply_max_pool_3x3
from pf_keras.layers.drop_path import DropPath

EXPANSION = 4
BLOCK_KINDS = ("regular", "depthwise", "max", "average", "identity", "efficient")
# Kinds whose spatial op has weights at the given stride (the rest are parameter-free there).
TRAINABLE_KINDS = {1: ("regular", "depthwise"), 2: ("regular", "depthwise", "efficient")}


def _apply_spatial(x, filters: int, *, kind: str, strides: int, name: str):
    """The 3x3 spatial op of a bottleneck."""
    if kind == "regular":
        return apply_conv_bn(x, filters, 3, strides=strides, name=name)
    if kind == "depthwise":
        return apply_conv_bn(x, filters, 3, strides=strides, depthwise=True, name=name)
    if kind == "average":
        return apply_avg_pool_3x3(x, strides=strides, name=f"{name}_pool")
    if kind == "identity":
        if strides == 1:
            return keras.layers.Identity(name=f"{name}_identity")(x)
        # A 1x1 "pool" with stride 2 keeps pixel (2i, 2j): ceil(side / 2), like the 1x1/2 shortcut.
        return keras.layers.MaxPooling2D(1, strides=strides, padding="valid", name=f"{name}_subsample")(x)
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

    ``kind`` selects the spatial op (see the module docstring): "regular" (3x3 conv),
    "depthwise" (3x3 depthwise conv), "max" (3x3 max-pool), "average" (3x3 average pool),
    "identity" (none; strided subsampling at stride 2) or "efficient" (max-pool at stride 1,
    2x2 avg-pool + 3x3 conv at stride 2). Every op takes the block's stride.

    Args:
        x: tensor. NHWC input.
        filters: int. Width of the bottleneck; the block outputs ``4 * filters`` channels.
        kind: str. One of ``BLOCK_KINDS``. Defaults to "regular".
        strides: int. 1 or 2. Defaults to 1.
        drop_path_rate: float. Stochastic-depth rate of the residual branch. Defaults to 0.
        name: str. Prefix of every layer name, e.g. "stage2_block1".

    Returns:
        The output tensor.

    Raises:
        ValueError: for an unknown ``kind`` or a stride other than 1 or 2.

    Example:
        >>> inputs = keras.Input((8, 8, 64))
        >>> keras.Model(inputs, apply_bottleneck(inputs, 16, kind="average", strides=2, name="b")).output_shape
        (None, 4, 4, 64)
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
