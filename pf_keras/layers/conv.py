"""Conv2D that trains a convolution with a 1x1 output map as one matrix product.

When a convolution's output map is a single pixel (every conv of a ResNet's last stage on a
32x32 input, whose maps are 1x1 there), it is one dot product per example: the input window the
kernel sees, flattened, times the flattened kernel. TensorFlow's oneDNN convolution kernels are
5-9x slower than a matrix product on such shapes, forward and in both gradients (README
"Performance": a 1x1 conv 1024 -> 2048, batch 128: 23 ms against 2.6 ms), which made the last
stage about half of a ResNet-50 training step at 32x32.

:class:`Conv2D` keeps everything of ``keras.layers.Conv2D`` (weights, config, ``class_name``,
registered as ``pf_keras>Conv2D``) and, on the TensorFlow backend in training mode, computes such
a convolution as that product: only the kernel taps that see input pixels take part (a 3x3 conv
with padding 1 on a 1x1 map is its centre tap), so the zero padding costs nothing and the other
taps get a zero gradient, as in the convolution. Same outputs and gradients up to float rounding.
Inference (``training=False``: evaluation, export) and every other backend run the Keras code
unchanged, so exported graphs keep their ``CONV_2D`` ops.
"""

from __future__ import annotations

import keras
from keras import ops


def single_window_taps(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int] | None:
    """Kernel taps ``[first, last)`` that see the input when one axis has a single output position.

    Args:
        size: int. Input length along the axis.
        kernel: int. Kernel length.
        stride: int. Stride.
        padding: str. "valid" or "same" (TensorFlow's rule: the extra pad goes after).

    Returns:
        ``(first, last)``: tap ``t`` reads input index ``t - first``; or None when the axis has
        more than one output position.
    """
    if padding == "valid":
        if size < kernel or (size - kernel) // stride + 1 != 1:
            return None
        return 0, kernel
    if -(-size // stride) != 1:
        return None
    before = max(kernel - size, 0) // 2
    return before, min(kernel, before + size)


@keras.saving.register_keras_serializable(package="pf_keras")
class Conv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` whose TensorFlow training step computes a 1x1 output map as a matmul.

    The product runs on the TensorFlow backend in training mode for channels-last inputs with a
    static spatial size whose output map is 1x1, without groups or dilation; anything else is
    ``keras.layers.Conv2D``. Arguments are those of ``keras.layers.Conv2D``.

    Example:
        >>> conv = Conv2D(8, 3, padding="same", use_bias=False)
        >>> tuple(conv(keras.ops.ones((2, 1, 1, 4)), training=True).shape)
        (2, 1, 1, 8)
    """

    def _window(self, inputs, training) -> tuple[tuple[int, int], tuple[int, int]] | None:
        if not (
            training is True
            and keras.backend.backend() == "tensorflow"
            and self.data_format == "channels_last"
            and self.groups == 1
            and tuple(self.dilation_rate) == (1, 1)
            and getattr(self, "quantization_mode", None) is None
            and len(inputs.shape) == 4
        ):
            return None
        taps = []
        for axis in (0, 1):
            size = inputs.shape[1 + axis]
            if size is None:
                return None
            axis_taps = single_window_taps(size, self.kernel_size[axis], self.strides[axis], self.padding)
            if axis_taps is None:
                return None
            taps.append(axis_taps)
        return taps[0], taps[1]

    def call(self, inputs, training=None):
        window = self._window(inputs, training)
        if window is None:
            return super().call(inputs)
        (row0, row1), (col0, col1) = window
        rows, cols = row1 - row0, col1 - col0
        channels = inputs.shape[-1]
        # Tap (r, c) of the kernel reads input pixel (r - row0, c - col0): both flatten row-major
        # over (rows, cols, channels), so the product pairs each input value with its weight.
        # Slices only where they cut something (an identity slice still costs a gradient op).
        if tuple(inputs.shape[1:3]) != (rows, cols):
            inputs = inputs[:, :rows, :cols, :]
        kernel = self.kernel
        if tuple(self.kernel_size) != (rows, cols):
            kernel = kernel[row0:row1, col0:col1]
        patch = ops.reshape(inputs, (-1, rows * cols * channels))
        kernel = ops.reshape(kernel, (rows * cols * channels, self.filters))
        outputs = ops.reshape(ops.matmul(patch, kernel), (-1, 1, 1, self.filters))
        if self.use_bias:
            outputs = ops.add(outputs, ops.reshape(self.bias, (1, 1, 1, self.filters)))
        if self.activation is not None:
            return self.activation(outputs)
        return outputs
