"""Max pooling with a gradient built from shifted-window comparisons.

The forward pass is the backend's own max-pool (``keras.ops.max_pool``), so outputs are
bit-identical to ``keras.layers.MaxPooling2D``. Only the backward pass differs: instead of the
backend's max-pool gradient (TensorFlow's ``MaxPoolGrad``, XLA's ``select-and-scatter``) it
compares the ``k * k`` shifted views of the input with the pooled output, records the offset of
the first window element equal to the maximum (row-major scan order of the window: top row
first, left to right) and adds the upstream gradient back with shifted pads. These are plain elementwise ops
and pads that XLA fuses; whether that is faster than the built-in gradient depends on the
backend and device (see README "Performance"), so the layers pick it with ``gradient=``.

Tie-breaking: a window with several equal maxima sends its gradient to the first of them in
row-major order, the rule of TensorFlow's CPU ``MaxPoolGrad`` and PyTorch's ``MaxPool2d``; each
window's upstream gradient goes to exactly one input, so the gradient mass is preserved. A
window whose maximum is NaN sends no gradient.

Padding: ``"valid"`` at any stride, or ``"same"`` at stride 1 (out-of-image positions are
ignored, like PyTorch's implicit ``-inf`` padding of ``pool_size // 2``).
"""

from __future__ import annotations

import keras
from keras import ops

GRADIENTS = ("auto", "builtin", "shifted")


def shifted_gradient_is_faster() -> bool:
    """Whether "auto" picks the shifted-window gradient here (measured, README "Performance").

    Under XLA (JAX; TensorFlow inside ``jit_compile``) the built-in gradient is a
    select-and-scatter that runs several times slower on CPU than the fused shifted-window
    ops. TensorFlow's graph executor (oneDNN ``MaxPoolGrad``) and PyTorch's own kernel are
    faster than unfused elementwise ops, so they keep the built-in gradient.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        return True
    if backend != "tensorflow":
        return False
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util  # the XLA context that tf.function(jit_compile=True) enters

    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def _check(pool_size: int, strides: int, padding: str) -> None:
    if not isinstance(pool_size, int) or pool_size < 1:
        raise ValueError(f"`pool_size` must be a positive int. Received: pool_size={pool_size!r}")
    if not isinstance(strides, int) or strides < 1:
        raise ValueError(f"`strides` must be a positive int. Received: strides={strides!r}")
    if padding not in ("valid", "same"):
        raise ValueError(f"`padding` must be 'valid' or 'same'. Received: padding={padding!r}")
    if padding == "same" and (strides != 1 or pool_size % 2 == 0):
        raise ValueError(
            "'same' padding is supported with strides=1 and an odd pool_size (a centred window). "
            f"Received: pool_size={pool_size}, strides={strides}"
        )


def _scatter_windows(parts, *, pool_size: int, strides: int, height: int, width: int):
    """Sum of each window offset's gradient ``parts[dy][dx]`` (output-sized) placed at its input position.

    Offset ``d`` of output ``o`` is input ``s * o + d`` with ``d = s * q + r``: on the grid of input
    rows with residue ``r`` it is row ``o + q``, a shift by ``q``. Each residue grid is a sum of
    zero-padded shifts; the ``s * s`` residue grids are then interleaved (stack + reshape).
    """
    s, k = strides, pool_size
    out_h, out_w = parts[0][0].shape[1], parts[0][0].shape[2]
    low_h, low_w = -(-height // s), -(-width // s)  # rows / columns of each residue grid
    grids = [[None] * s for _ in range(s)]
    for dy in range(k):
        qy, ry = divmod(dy, s)
        for dx in range(k):
            qx, rx = divmod(dx, s)
            shifted = ops.pad(parts[dy][dx], ((0, 0), (qy, low_h - out_h - qy), (qx, low_w - out_w - qx), (0, 0)))
            grids[ry][rx] = shifted if grids[ry][rx] is None else grids[ry][rx] + shifted
    if s == 1:
        return grids[0][0]
    zeros = None
    for ry in range(s):  # residues no offset reaches (pool_size < strides) get zeros
        for rx in range(s):
            if grids[ry][rx] is None:
                zeros = ops.zeros_like(grids[0][0]) if zeros is None else zeros
                grids[ry][rx] = zeros
    rows = [ops.stack(grids[ry], axis=3) for ry in range(s)]  # (n, low_h, low_w, s, c) each
    full = ops.stack(rows, axis=2)  # (n, low_h, s, low_w, s, c)
    channels = full.shape[-1]
    full = ops.reshape(full, (-1, low_h * s, low_w * s, channels))
    return full[:, :height, :width, :]


def _materialize(tensor):
    """``tensor`` kept as a buffer of its own where the backend allows it (JAX: an optimization barrier).

    XLA fuses elementwise producers into their consumers and recomputes them per read; the
    window index below is read at ``k * k`` shifted positions, so fused it would be recomputed
    ``k * k`` times per input element (measured on an H200: the fused form is the slowest
    kernel of an R50-max training step; README "Performance").
    """
    if keras.backend.backend() == "jax":
        import jax

        return jax.lax.optimization_barrier(tensor)
    return tensor


def _shifted_max_pool_grad(x, y, upstream, *, pool_size: int, strides: int, padding: str):
    """Gradient of ``max_pool(x)`` (output ``y``) for ``upstream``, routed to each window's first maximum.

    Two passes: the row-major offset of each window's first maximum (an int8 map, ``k * k``
    where no element equals the maximum, i.e. a NaN window), then each input position collects
    the upstream gradient of every window whose chosen offset points at it.
    """
    k, s = pool_size, strides
    height, width = x.shape[1], x.shape[2]
    if padding == "same":
        p = k // 2
        x = ops.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=float("-inf"))
    out_h, out_w = y.shape[1], y.shape[2]
    index_dtype = "int8" if k * k < 127 else "int32"
    first = ops.full(ops.shape(y), k * k, dtype=index_dtype)
    for offset in reversed(range(k * k)):  # the last assignment wins: the first maximum in row-major order
        dy, dx = divmod(offset, k)
        window = x[:, dy : dy + s * (out_h - 1) + 1 : s, dx : dx + s * (out_w - 1) + 1 : s, :]
        first = ops.where(ops.equal(window, y), ops.cast(offset, index_dtype), first)
    first = _materialize(first)
    zero = ops.zeros((), dtype=upstream.dtype)
    parts = [[ops.where(ops.equal(first, ops.cast(dy * k + dx, index_dtype)), upstream, zero) for dx in range(k)]
             for dy in range(k)]
    if padding == "same":
        p = k // 2
        grad = _scatter_windows(parts, pool_size=k, strides=1, height=height + 2 * p, width=width + 2 * p)
        return grad[:, p : p + height, p : p + width, :]
    return _scatter_windows(parts, pool_size=k, strides=s, height=height, width=width)


def max_pool_2d(x, *, pool_size: int = 3, strides: int = 1, padding: str = "same"):
    """``keras.ops.max_pool`` on NHWC ``x`` with the shifted-window gradient.

    Args:
        x: tensor. (batch, height, width, channels) with static height, width and channels.
        pool_size: int. Side of the square window. Defaults to 3.
        strides: int. Stride on both axes. Defaults to 1.
        padding: str. "same" (stride 1, odd window) or "valid". Defaults to "same".

    Returns:
        The pooled tensor, bit-identical to ``keras.ops.max_pool(x, pool_size, strides, padding)``.

    Raises:
        ValueError: for an unsupported combination of the arguments.

    Example:
        >>> x = keras.ops.reshape(keras.ops.arange(16, dtype="float32"), (1, 4, 4, 1))
        >>> keras.ops.convert_to_numpy(max_pool_2d(x, strides=2, padding="valid"))[0, :, :, 0]
        array([[10.]], dtype=float32)
    """
    _check(pool_size, strides, padding)

    @ops.custom_gradient
    def pool(inputs):
        outputs = ops.max_pool(inputs, pool_size, strides, padding, data_format="channels_last")

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return _shifted_max_pool_grad(
                inputs, outputs, upstream, pool_size=pool_size, strides=strides, padding=padding
            )

        return outputs, grad

    return pool(x)


@keras.saving.register_keras_serializable(package="pf_keras")
class MaxPool2D(keras.layers.MaxPooling2D):
    """``keras.layers.MaxPooling2D`` (square window, NHWC) with a choice of gradient.

    Outputs are bit-identical to ``MaxPooling2D`` with the same arguments. ``gradient="builtin"``
    is exactly ``MaxPooling2D``; ``gradient="shifted"`` computes the backward pass from shifted
    window comparisons (:func:`max_pool_2d`; ties go to the first maximum in row-major order).

    Args:
        pool_size: int. Side of the square window. Defaults to 3.
        strides: int. Stride on both axes. Defaults to 1.
        padding: str. "same" (stride 1, odd window) or "valid". Defaults to "same".
        gradient: str. One of ``GRADIENTS``. Defaults to "auto".
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Raises:
        ValueError: for an unknown ``gradient`` or an unsupported window/stride/padding.

    Example:
        >>> pool = MaxPool2D(3, strides=1, padding="same")
        >>> tuple(pool(keras.ops.ones((2, 5, 5, 4))).shape)
        (2, 5, 5, 4)
    """

    def __init__(self, pool_size: int = 3, strides: int = 1, padding: str = "same", gradient: str = "auto",
                 **kwargs):
        if gradient not in GRADIENTS:
            raise ValueError(f"`gradient` must be one of {GRADIENTS}. Received: gradient={gradient!r}")
        if kwargs.get("data_format") not in (None, "channels_last"):
            raise ValueError(f"MaxPool2D is channels_last only. Received: data_format={kwargs['data_format']!r}")
        kwargs.pop("data_format", None)
        pool_size = _as_int(pool_size, "pool_size")
        strides = _as_int(strides if strides is not None else pool_size, "strides")
        _check(pool_size, strides, padding)
        super().__init__(pool_size, strides=strides, padding=padding, data_format="channels_last", **kwargs)
        self.gradient = gradient

    def call(self, inputs):
        if self.gradient == "builtin" or (self.gradient == "auto" and not shifted_gradient_is_faster()):
            return super().call(inputs)
        return max_pool_2d(inputs, pool_size=self.pool_size[0], strides=self.strides[0], padding=self.padding)

    def get_config(self) -> dict:
        config = super().get_config()
        config["pool_size"] = self.pool_size[0]
        config["strides"] = self.strides[0]
        config["gradient"] = self.gradient
        return config


def _as_int(value, name: str) -> int:
    """``value`` or a square ``(v, v)`` pair as an int; else a ValueError."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"`{name}` must be an int or a square pair. Received: {name}={value!r}")
        value = value[0]
    return value
