"""Convolution + BatchNorm (+ ReLU) units and the 3x3 spatial ops of the ResNet family.

Padding follows PyTorch exactly: a stride-2 op pads ``(k - 1) // 2`` on every side
(Keras "same" would pad (0, 1) on even sides), so strided ops get an explicit
``ZeroPadding2D`` followed by a "valid" op.
"""

from __future__ import annotations

import keras

from pf_keras.layers.batch_norm import BatchNormalization
from pf_keras.layers.conv import Conv2D
from pf_keras.layers.max_pool import MaxPool2D

# PyTorch BatchNorm2d defaults (momentum 0.1 there is 1 - 0.9 here; eps 1e-5). The Keras
# defaults (0.99, 1e-3) would change both training dynamics and converted outputs.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def apply_conv_bn(
    x,
    filters: int,
    kernel_size: int,
    *,
    strides: int = 1,
    activation: str | None = "relu",
    depthwise: bool = False,
    name: str,
):
    """Conv2D (no bias) -> BatchNorm -> optional ReLU, padded like PyTorch.

    Layers: ``{name}_pad`` (strided kernels > 1 only), ``{name}_conv`` (``{name}_dwconv``
    for a depthwise conv), ``{name}_bn`` and, with an activation, ``{name}_relu``.

    Args:
        x: tensor. NHWC input.
        filters: int. Output channels; must equal the input channels when ``depthwise``.
        kernel_size: int. Odd square kernel size.
        strides: int. 1 or 2. Defaults to 1.
        activation: str or None. "relu" or None. Defaults to "relu".
        depthwise: bool. A depthwise conv (one ``k x k`` filter per channel, PyTorch
            ``groups=C``) instead of a full conv. Defaults to False.
        name: str. Prefix of every layer name.

    Returns:
        The output tensor.
    """
    pad = (kernel_size - 1) // 2
    if pad and strides > 1:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        # Stride 1 with an odd kernel: "same" pads (k-1)/2 on both sides, as PyTorch does.
        padding = "same"
    if depthwise:
        if filters != x.shape[-1]:
            raise ValueError(
                f"A depthwise conv keeps the channel count ({x.shape[-1]}). Received: filters={filters}"
            )
        x = keras.layers.DepthwiseConv2D(
            kernel_size, strides=strides, padding=padding, use_bias=False, name=f"{name}_dwconv"
        )(x)
    else:
        # Keras Conv2D; a 1x1 output map trains as one matmul on TensorFlow (pf_keras.layers.conv).
        x = Conv2D(
            filters, kernel_size, strides=strides, padding=padding, use_bias=False, name=f"{name}_conv"
        )(x)
    # Keras BatchNormalization, trained with TensorFlow's fused kernel (pf_keras.layers.batch_norm).
    x = BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_relu")(x)
    return x


def apply_max_pool_3x3(x, *, strides: int = 1, name: str):
    """3x3 max-pool with PyTorch's padding of 1, the paper's parameter-free spatial op.

    Stride 1 uses "same", which ignores the border like PyTorch's -inf padding and is exact
    for any input. Stride 2 pads explicitly with zeros (layer ``{name}_pad``) and pools
    "valid": exact only because every caller feeds it ReLU outputs (>= 0), where a zero border
    can never win the max.

    The pool is a :class:`pf_keras.layers.MaxPool2D` (a ``MaxPooling2D`` with bit-identical
    outputs) whose gradient is the faster one where it is traced (``gradient="auto"``).

    Args:
        x: tensor. NHWC input; must be non-negative when ``strides == 2``.
        strides: int. 1 or 2. Defaults to 1.
        name: str. Name of the pooling layer (and prefix of its pad layer).

    Returns:
        The pooled tensor, ``ceil(side / strides)`` on each side.
    """
    if strides == 1:
        return MaxPool2D(3, strides=1, padding="same", name=name)(x)
    x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return MaxPool2D(3, strides=strides, padding="valid", name=name)(x)


def apply_avg_pool_3x3(x, *, strides: int = 1, name: str):
    """3x3 average pool, PyTorch ``AvgPool2d(3, strides, padding=1)`` (``count_include_pad=True``).

    PyTorch's default divides every window by 9, border windows included (the zero padding
    counts). Keras "same" average pooling divides by the number of valid pixels instead, so
    this pads explicitly with zeros (layer ``{name}_pad``) and pools "valid" at every stride.

    Args:
        x: tensor. NHWC input (any sign: the zero border is part of PyTorch's average too).
        strides: int. 1 or 2. Defaults to 1.
        name: str. Name of the pooling layer (and prefix of its pad layer).

    Returns:
        The pooled tensor, ``ceil(side / strides)`` on each side.
    """
    x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return keras.layers.AveragePooling2D(3, strides=strides, padding="valid", name=name)(x)
