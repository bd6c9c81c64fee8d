"""PIL's antialiased resize of 8-bit images, bit for bit, in TensorFlow ops.

timm evaluates the official checkpoints on ``PIL.Image.resize`` of uint8 RGB images (bilinear for the
ResNets, bicubic for ViT/PiT). Pillow resamples in two passes (horizontal first, unless the height
shrinks by more than twice as many pixels as the width: Pillow 13's rule; Pillow 12 and earlier always
ran the horizontal pass first; the order changes a level here and there, since each pass rounds), each
with fixed-point weights and a uint8 result: per output sample a window of input samples starting at
``xmin``, weights ``filter((x + xmin - centre + 0.5) / filterscale)`` normalised to sum 1 (double
precision), rounded to integers with 22 fraction bits, then ``clip((sum + 2**21) >> 22, 0, 255)``
(Pillow's ``Resample.c``: ``precompute_coeffs``, ``normalize_coeffs_8bpc``, ``ImagingResample*_8bpc``).
TensorFlow's antialiased ``ScaleAndTranslate`` uses float weights and no rounding between the passes:
within about one grey level. Here the weights are computed with the same float64 operations in the
same order (sums sequential, as Pillow's loop) and the passes in exact int32 arithmetic, so the result
equals Pillow's.

Only the output window asked for is computed (each output sample depends on its own weights alone, so
a window of the resized image is the same as resizing whole and cropping): an eval crop of a huge or
extreme image costs the window, never the whole resized image. Each pass loops over the taps of its
kernel (one gather, multiply and add of the window per tap), so memory is a few copies of the window
whatever the scale.
"""

from __future__ import annotations

import functools

# Pillow's filters: support in input samples at scale 1 (widened by the scale when downsampling).
SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}
PRECISION_BITS = 22  # Pillow: 32 - 8 - 2


def _kernel(interpolation: str, x):
    """Pillow's ``bilinear_filter`` / ``bicubic_filter`` (a = -0.5) on float64, same operation order."""
    import tensorflow as tf  # noqa: PLC0415

    x = tf.abs(x)
    zero = tf.zeros_like(x)
    if interpolation == "bilinear":
        return tf.where(x < 1.0, 1.0 - x, zero)
    inner = (1.5 * x - 2.5) * x * x + 1.0  # ((a + 2) x - (a + 3)) x x + 1
    outer = (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5  # (((x - 5) x + 8) x - 4) a
    return tf.where(x < 1.0, inner, tf.where(x < 2.0, outer, zero))


def coefficients(in_size, out_size, first, count, interpolation: str):
    """Pillow's fixed-point resampling weights for output samples ``first .. first + count - 1``.

    Args:
        in_size, out_size: int scalars (tensors or ints). The axis' input and output lengths.
        first: int scalar. The output window's first sample along the axis.
        count: Python int. The window's length.
        interpolation: "bilinear" or "bicubic".

    Returns:
        ``(starts, weights)``: int32 ``[count]`` first input index of each output sample, int32
        ``[count, taps]`` weights with 22 fraction bits (zero past each sample's window).
    """
    import tensorflow as tf  # noqa: PLC0415

    f64 = tf.float64
    in_size = tf.cast(in_size, tf.int32)
    scale = tf.cast(in_size, f64) / tf.cast(out_size, f64)
    filterscale = tf.maximum(scale, 1.0)
    support = SUPPORT[interpolation] * filterscale
    taps = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    centre = (tf.cast(tf.cast(first, tf.int64) + tf.range(count, dtype=tf.int64), f64) + 0.5) * scale
    inverse = 1.0 / filterscale
    # C's (int) truncates toward zero, as the cast does
    xmin = tf.maximum(tf.cast(centre - support + 0.5, tf.int32), 0)
    xmax = tf.minimum(tf.cast(centre + support + 0.5, tf.int32), in_size) - xmin
    x = tf.range(taps)[None, :]
    inside = x < xmax[:, None]
    w = _kernel(interpolation, (tf.cast(x + xmin[:, None], f64) - centre[:, None] + 0.5) * inverse)
    w = tf.where(inside, w, tf.zeros_like(w))
    total = tf.math.cumsum(w, axis=1)[:, -1:]  # a sequential scan: Pillow's order of additions
    w = tf.where(tf.not_equal(total, 0.0), w / total, w)
    one = float(1 << PRECISION_BITS)
    fixed = tf.where(w < 0.0, -0.5 + w * one, 0.5 + w * one)
    return xmin, tf.cast(fixed, tf.int32)


def _pass(image, starts, weights):
    """One pass of Pillow's 8-bit resampling along axis 0 of a (samples, n, channels) uint8 image (uint8 out, as
    Pillow's passes).

    Along axis 0 each gathered sample is a whole row (a gather of single pixels along axis 1 is ~3x slower).
    """
    import tensorflow as tf  # noqa: PLC0415

    limit = tf.shape(image)[0] - 1
    taps = tf.shape(weights)[1]

    def tap(k, acc):
        index = tf.minimum(starts + k, limit)  # past the window the weight is 0
        return k + 1, acc + tf.cast(tf.gather(image, index), tf.int32) * weights[:, k, None, None]

    acc = tf.fill(tf.concat([tf.shape(starts), tf.shape(image)[1:]], 0), tf.constant(1 << (PRECISION_BITS - 1)))
    _, acc = tf.while_loop(lambda k, _: k < taps, tap, (tf.constant(0), acc))
    return tf.cast(tf.clip_by_value(tf.bitwise.right_shift(acc, PRECISION_BITS), 0, 255), tf.uint8)


def vertical_first(in_hw, out_hw):
    """Pillow 13's choice of pass order: vertical first when the height shrinks by more than twice as many
    pixels as the width (Pillow 12 and earlier always ran the horizontal pass first)."""
    shrink_h = in_hw[0] - out_hw[0]
    return (shrink_h > 0) & (shrink_h > (in_hw[1] - out_hw[1]) * 2)


PASS_ORDERS = ("auto", "pillow13", "pillow12")


@functools.cache
def installed_pass_order() -> str:
    """The pass order of the Pillow installed beside pf-keras (timm's, in a shared environment): "pillow12" for
    Pillow < 13, else "pillow13" (also without Pillow). Read from the package metadata; Pillow is not imported."""
    from importlib import metadata  # noqa: PLC0415

    try:
        major = int(metadata.version("pillow").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError, TypeError, AttributeError, OSError):
        return "pillow13"
    return "pillow12" if major < 13 else "pillow13"


def _resize_window(image, out_hw, offset, size_hw, interpolation: str, pass_order: str):
    """The graph of :func:`resize_window` (``out_hw`` and ``offset`` int64: an extreme aspect ratio resized can
    pass 2**31 along its long side)."""
    import tensorflow as tf  # noqa: PLC0415

    hw = tf.shape(image)[:2]
    rows = coefficients(hw[0], out_hw[0], offset[0], size_hw[0], interpolation)
    cols = coefficients(hw[1], out_hw[1], offset[1], size_hw[1], interpolation)

    def span(axis, starts, weights):
        # the input samples the window reads along the axis (Pillow's ybox), and the starts within them
        first = starts[0]
        last = tf.minimum(starts[-1] + tf.shape(weights)[1], hw[axis])
        return first, last, starts - first

    def swap(x):
        return tf.transpose(x, [1, 0, 2])

    def h_first():
        first, last, row_starts = span(0, *rows)
        part = _pass(swap(image[first:last]), *cols)  # (out cols, rows, channels)
        return _pass(swap(part), row_starts, rows[1])

    def v_first():
        first, last, col_starts = span(1, *cols)
        part = _pass(image[:, first:last], *rows)  # (out rows, cols, channels)
        return swap(_pass(swap(part), col_starts, cols[1]))

    if pass_order == "pillow12":
        return h_first()
    return tf.cond(vertical_first(tf.cast(hw, tf.int64), out_hw), v_first, h_first)


@functools.cache
def _compiled(size_hw: tuple[int, int], interpolation: str, pass_order: str):
    # one graph per window size and filter, traced once: eagerly, the taps' while loops would run op by op
    import tensorflow as tf  # noqa: PLC0415

    signature = [tf.TensorSpec([None, None, None], tf.uint8), tf.TensorSpec([2], tf.int64),
                 tf.TensorSpec([2], tf.int64)]
    return tf.function(lambda image, out_hw, offset: _resize_window(image, out_hw, offset, size_hw, interpolation,
                                                                    pass_order),
                       input_signature=signature, autograph=False)


def resize_window(image, out_hw, offset, size_hw, interpolation: str, *, pass_order: str = "auto"):
    """The ``size_hw`` window at ``offset`` of Pillow's ``resize`` of ``image`` to ``out_hw``.

    Args:
        image: (height, width, channels) uint8 tensor.
        out_hw: 2 ints (tensor). The resized image's height and width.
        offset: 2 ints (tensor). The window's top-left corner in the resized image.
        size_hw: 2 Python ints. The window's height and width.
        interpolation: "bilinear" or "bicubic".
        pass_order: "pillow13" (:func:`vertical_first`), "pillow12" (horizontal first always) or "auto"
            (:func:`installed_pass_order`). Defaults to "auto".

    Returns:
        (size_hw[0], size_hw[1], channels) uint8: ``Image.resize((out_w, out_h), filter)`` cropped,
        exactly.
    """
    import tensorflow as tf  # noqa: PLC0415

    if interpolation not in SUPPORT:
        raise ValueError(f"`interpolation` must be one of {tuple(SUPPORT)}. Received: interpolation={interpolation!r}")
    if pass_order not in PASS_ORDERS:
        raise ValueError(f"`pass_order` must be one of {PASS_ORDERS}. Received: pass_order={pass_order!r}")
    if pass_order == "auto":
        pass_order = installed_pass_order()
    size_hw = (int(size_hw[0]), int(size_hw[1]))
    fn = _compiled(size_hw, interpolation, pass_order)
    return fn(tf.convert_to_tensor(image, tf.uint8), tf.cast(out_hw, tf.int64), tf.cast(offset, tf.int64))


__all__ = ["PASS_ORDERS", "PRECISION_BITS", "SUPPORT", "coefficients", "installed_pass_order", "resize_window",
           "vertical_first"]
