"""The eval transform of the official checkpoints: resize, centre crop, normalise.

timm's eval pipeline for the PfLayer checkpoints (``transforms.Resize(int(size / crop_fraction))``,
``CenterCrop(size)``, ``ToTensor``, ``Normalize(mean, std)``): the shorter side goes to
``floor(size / crop_fraction)`` (256 for 224 / 0.875) and the longer side to
``int(resize * long / short)``, as torchvision computes it; the crop offset is
``round((side - size) / 2)`` (round half to even, as torchvision's Python ``round``). For uint8
images (what a decoder gives) and bilinear or bicubic interpolation the resize is PIL's, bit for
bit (:mod:`pf_keras.pil_resample`, computed for the crop window only), so the crop holds exactly
the levels timm's PIL pipeline gives; float images, "nearest" and "area" use TensorFlow's
antialiased resize, within about one grey level of PIL's.

The defaults come from each model's spec (``pf_keras.get_spec(name).eval``): bilinear for the
ResNets, bicubic for ViT/PiT, 224 and 0.875 for all. :func:`eval_transform` runs on one
image, eagerly or inside ``tf.data``; :func:`normalize` is the one normalisation of the package
(:func:`normalize_levels`: the same by table, for integer levels).
"""

from __future__ import annotations

import functools

import numpy as np

from pf_keras import pil_resample
from pf_keras.imagenet import IMAGENET_MEAN, IMAGENET_STD
from pf_keras.values import is_positive_int, is_real

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")
# Start-of-scan markers a JPEG may hold. libjpeg decodes every scan over the whole image, even an empty one, so
# the time to decode grows with scans x pixels, not with the file's size (a 30 KB file of 3,000 empty scans took
# 20 s): more is refused before decoding. Progressive JPEGs have ~10 (libjpeg's script), mozjpeg's up to ~20; the
# markers are counted anywhere in the file (entropy-coded data never holds FF DA; an EXIF thumbnail adds its own).
MAX_JPEG_SCANS = 256
MAX_RESIZE = 65_536  # pixels of the shorter side before the centre crop (size / crop_fraction)
# Above this many pixels the resized image is not made whole: a 1x5000 PNG (96 bytes) resized to a 256 shorter
# side is 256x1,280,000 (3.9 GB in float32). Bilinear and bicubic then resample only the crop window (the same
# kernel weights, up to float rounding of the sample positions: < 0.02 of a level); nearest and area fail.
MAX_RESIZED_PIXELS = 1 << 23
_WINDOW_KERNELS = {"bilinear": "triangle", "bicubic": "keyscubic"}  # ScaleAndTranslate's names
_KERNEL_RADIUS = {"bilinear": 1.0, "bicubic": 2.0}  # support, in pixels of the finer grid


def _is_tf(x) -> bool:
    return type(x).__module__.startswith("tensorflow")


def normalize(image_255, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """RGB in [0, 255] -> ``(x / 255 - mean) / std`` as float32.

    Args:
        image_255: array-like or tensor, (..., 3).
        mean: 3 floats. Defaults to the ImageNet mean.
        std: 3 floats. Defaults to the ImageNet standard deviation.

    Returns:
        NumPy in, NumPy out; a TensorFlow tensor stays one (``tf.data``); other tensors go
        through ``keras.ops``.

    Example:
        >>> normalize(np.full((2, 2, 3), 255.0))[0, 0].round(3)
        array([2.249, 2.429, 2.64 ], dtype=float32)
    """
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    if _is_tf(image_255):
        import tensorflow as tf  # noqa: PLC0415

        x = tf.cast(image_255, tf.float32)
    elif isinstance(image_255, (np.ndarray, np.generic, list, tuple, int, float)) or not hasattr(image_255, "dtype"):
        x = np.asarray(image_255, np.float32)
    else:
        import keras  # noqa: PLC0415

        x = keras.ops.cast(image_255, "float32")
    return (x / np.float32(255.0) - mean) / std


@functools.cache
def _levels_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    return normalize(np.arange(256, dtype=np.float32)[:, None], mean, std).reshape(-1)  # [256 * 3], level-major


def normalize_levels(levels, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """:func:`normalize` of integer levels 0..255 ``(..., 3)`` (any int or float dtype holding integers), with
    the float32 bits of torch's ``ToTensor`` + ``Normalize`` everywhere: a table lookup, so graph mode, XLA and
    eager agree (Grappler and XLA each rewrite the arithmetic differently, in the last bit).

    Returns:
        float32 TensorFlow tensor.
    """
    import tensorflow as tf  # noqa: PLC0415

    table = _levels_table(tuple(float(m) for m in np.ravel(mean)), tuple(float(s) for s in np.ravel(std)))
    index = tf.cast(levels, tf.int32) * 3 + tf.range(3)
    return tf.gather(tf.constant(table), index)


def _exact(image, interpolation: str) -> bool:
    """Whether :func:`resize_and_crop` resizes ``image`` with PIL's arithmetic (uint8, bilinear or bicubic)."""
    return image.dtype == np.uint8 and interpolation in pil_resample.SUPPORT


def _check(size, crop_fraction, interpolation) -> None:
    if not is_positive_int(size):
        raise ValueError(f"`size` must be a positive int. Received: size={size!r}")
    if not is_real(crop_fraction) or not 0 < crop_fraction <= 1:
        raise ValueError(f"`crop_fraction` must be in (0, 1]. Received: crop_fraction={crop_fraction!r}")
    if size / crop_fraction > MAX_RESIZE:
        raise ValueError(f"`crop_fraction` must leave size / crop_fraction at most {MAX_RESIZE} pixels. "
                         f"Received: crop_fraction={crop_fraction!r}, size={size}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"`interpolation` must be one of {INTERPOLATIONS}. Received: interpolation={interpolation!r}")


def resize_and_crop(image, *, size: int = 224, crop_fraction: float = 0.875, interpolation: str = "bilinear"):
    """The geometric half of :func:`eval_transform`: float32 pixels, still in [0, 255] (not normalised).

    Args and Raises: as :func:`eval_transform`.

    Returns:
        (size, size, channels) float32 TensorFlow tensor.
    """
    import tensorflow as tf  # noqa: PLC0415 (the transform runs inside tf.data pipelines)

    _check(size, crop_fraction, interpolation)
    image = tf.convert_to_tensor(image)
    shape = image.shape
    if shape.rank is not None and (shape.rank != 3 or 0 in shape or shape[2] not in (None, 1, 3, 4)):
        raise ValueError("`image` must be (height, width, channels) with 1, 3 or 4 channels and height and width "
                         f">= 1. Received: shape={tuple(shape)}")
    if shape.rank == 3 and shape[2] == 4:
        image = image[..., :3]  # RGBA: the alpha dropped, as PIL's convert("RGB") (timm's loader) does
    resize = int(size / crop_fraction)  # math.floor, as timm
    hw = tf.shape(image, out_type=tf.int64)[:2]
    height, width = hw[0], hw[1]
    short, long = tf.minimum(height, width), tf.maximum(height, width)
    new_long = (resize * long) // short  # torchvision: int(size * long / short); int64: no overflow
    new_hw = tf.where(height <= width, tf.stack([resize, new_long]), tf.stack([new_long, resize]))
    # half to even, as Python's round; float64: exact for any side
    offsets = tf.cast(tf.round(tf.cast(new_hw - size, tf.float64) / 2.0), tf.int64)
    if _exact(image, interpolation):
        return tf.cast(pil_resample.resize_window(image, new_hw, offsets, (size, size), interpolation), tf.float32)
    image = tf.cast(image, tf.float32)

    def whole():  # the resized image is at most MAX_RESIZED_PIXELS: int32 sizes
        resized = tf.image.resize(image, tf.cast(new_hw, tf.int32), method=interpolation, antialias=True)
        return tf.slice(resized, tf.cast(tf.concat([offsets, [0]], 0), tf.int32), [size, size, -1])

    def window():
        if interpolation not in _WINDOW_KERNELS:
            with tf.control_dependencies([tf.debugging.Assert(False, [
                    f"resized image over {MAX_RESIZED_PIXELS} pixels; {interpolation} cannot resample a window"])]):
                return tf.zeros([size, size, tf.shape(image)[2]])
        # float64 positions: a side resized past 2**24 pixels keeps whole-pixel offsets
        scale = tf.cast(new_hw, tf.float64) / tf.cast(hw, tf.float64)  # as tf.image.resize computes it
        # Only the input rows and columns under the window's kernels (the kernel widens when downscaling), with
        # a margin: ScaleAndTranslate keeps an (output rows x input columns) intermediate.
        reach = _KERNEL_RADIUS[interpolation] * tf.maximum(1.0, 1.0 / scale) + 2.0
        first = tf.cast(offsets, tf.float64)
        start = tf.maximum(tf.constant(0, tf.int64), tf.cast(tf.floor(first / scale - reach), tf.int64))
        end = tf.minimum(hw, tf.cast(tf.math.ceil((first + size) / scale + reach), tf.int64))
        part = tf.slice(image, tf.cast(tf.concat([start, [0]], 0), tf.int32),
                        tf.cast(tf.concat([end - start, [-1]], 0), tf.int32))
        return tf.raw_ops.ScaleAndTranslate(
            images=part[None], size=[size, size], scale=tf.cast(scale, tf.float32),
            translation=tf.cast(tf.cast(start, tf.float64) * scale - first, tf.float32),
            kernel_type=_WINDOW_KERNELS[interpolation], antialias=True)[0]

    big = new_hw[0] * new_hw[1] > MAX_RESIZED_PIXELS
    image = tf.cond(big, window, whole)
    return tf.clip_by_value(image, 0.0, 255.0)  # bicubic overshoots; PIL clips to uint8


def eval_transform(
    image,
    *,
    size: int = 224,
    crop_fraction: float = 0.875,
    interpolation: str = "bilinear",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
):
    """Resizes the shorter side to ``floor(size / crop_fraction)``, centre crops ``size``, normalises.

    Args:
        image: (height, width, 3) RGB in [0, 255], uint8 or float (NumPy or TensorFlow); (height, width, 1)
            grey is normalised as grey RGB, (height, width, 4) RGBA without its alpha.
        size: int. Side of the square crop. Defaults to 224.
        crop_fraction: float in (0, 1]. Crop side over the resized shorter side. Defaults to 0.875.
        interpolation: str. "bilinear", "bicubic", "nearest" or "area". Defaults to "bilinear".
        mean, std: 3 floats each. Normalisation. Default to the ImageNet values.

    Returns:
        (size, size, 3) float32: NumPy for NumPy input, else a TensorFlow tensor.

    Raises:
        ValueError: for a bad size, crop fraction or interpolation, or an image of another rank or channel
            count or with no pixels (where its shape is known; a tensor of unknown shape fails inside the graph).

    Example:
        >>> eval_transform(np.zeros((300, 400, 3), np.uint8), size=224).shape
        (224, 224, 3)
    """
    import tensorflow as tf  # noqa: PLC0415

    numpy_in = isinstance(image, np.ndarray)
    image = tf.convert_to_tensor(image)
    pixels = resize_and_crop(image, size=size, crop_fraction=crop_fraction, interpolation=interpolation)
    # PIL's integer levels: normalised by table, the same float32 bits as timm's in every execution mode
    image = normalize_levels(pixels, mean, std) if _exact(image, interpolation) else normalize(pixels, mean, std)
    return image.numpy() if numpy_in else image


__all__ = ["INTERPOLATIONS", "eval_transform", "normalize", "normalize_levels", "resize_and_crop"]
