"""timm's train augmentations in TensorFlow: RandAugment, colour jitter, random erasing, Mixup/CutMix.

Every op can be called with explicit parameters (magnitude, sign, box, lambda), so that it
is compared with timm's implementation on the same image and parameters
(``tests/training/augment_test.py`` against fixtures of ``tests/fixtures/make_timm_augment.py``);
the samplers (:func:`rand_augment`, :func:`color_jitter`, :func:`random_erasing`,
:func:`mix_batch`) draw those parameters with stateless ops from a seed, as timm draws them
from Python's/NumPy's global generators (same distributions, different numbers).

Images are float ``[H, W, 3]`` on PIL's 0..255 scale, as timm's ops see them (PIL uint8
images up to ``ToTensor``): the pixel ops (posterize, solarize, equalize, auto-contrast,
the ImageEnhance blends) reproduce PIL's integer arithmetic on integer-valued input. The
geometric ops (rotate, shear, translate) use TF's bilinear ``ImageProjectiveTransformV3`` with
PIL's pixel-centre convention and timm's fill colour (the ImageNet mean, ``img_mean``); PIL
resamples with bilinear or bicubic (DeiT: bicubic), so they are close, not equal (the
tolerances are in the README). Random erasing and Mixup/CutMix work on the normalised image,
as timm's do.
"""

from __future__ import annotations

import functools
import math

import tensorflow as tf

import pf_keras
from pf_keras import preprocessing

# timm's _RAND_INCREASING_TRANSFORMS ("inc1"), in timm's order.
OP_NAMES = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)
LEVEL_DENOM = 10.0  # timm's _LEVEL_DENOM / _MAX_LEVEL
TRANSLATE_PCT = 0.45  # timm's default translate_pct
FILL = tuple(round(255 * m) for m in pf_keras.imagenet.IMAGENET_MEAN)  # timm's img_mean hparam: (124, 116, 104)


def _seed(seed: tf.Tensor, *parts) -> tf.Tensor:
    for p in parts:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(p, tf.int64))
    return seed


# ---------------------------------------------------------------- PIL's pixel arithmetic


def luma(image: tf.Tensor) -> tf.Tensor:
    """PIL's ``convert("L")``: ``(19595 R + 38470 G + 7471 B + 2^15) >> 16`` on integer-valued input, [H, W, 1]."""
    weights = tf.constant([19595.0, 38470.0, 7471.0]) / 65536.0
    return tf.floor(tf.reduce_sum(image * weights, -1, keepdims=True) + 0.5)


def blend(degenerate: tf.Tensor, image: tf.Tensor, factor) -> tf.Tensor:
    """PIL's ``Image.blend(degenerate, image, factor)`` (what ImageEnhance does): truncated, clipped to 0..255."""
    return tf.clip_by_value(tf.floor(degenerate + factor * (image - degenerate)), 0.0, 255.0)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
    """``ImageEnhance.Brightness``: blend with black."""
    return blend(tf.zeros_like(image), image, factor)


def color(image: tf.Tensor, factor) -> tf.Tensor:
    """``ImageEnhance.Color`` (saturation): blend with the L image."""
    return blend(tf.broadcast_to(luma(image), tf.shape(image)), image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
    """``ImageEnhance.Contrast``: blend with the rounded mean of the L image."""
    mean = tf.cast(tf.floor(tf.reduce_mean(tf.cast(luma(image), tf.float64)) + 0.5), image.dtype)
    return blend(tf.fill(tf.shape(image), mean), image, factor)


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
    """``ImageEnhance.Sharpness``: blend with ``filter(SMOOTH)`` (3x3 [1 1 1; 1 5 1; 1 1 1] / 13, border kept)."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32)[:, :, None, None] / 13.0
    smooth = tf.nn.depthwise_conv2d(image[None], tf.tile(kernel, [1, 1, 3, 1]), [1, 1, 1, 1], "VALID")[0]
    smooth = tf.clip_by_value(tf.floor(smooth + 0.5), 0.0, 255.0)
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    shape = tf.shape(image)
    inner = tf.pad(tf.ones([shape[0] - 2, shape[1] - 2, 3], tf.bool), [[1, 1], [1, 1], [0, 0]])
    return blend(tf.where(inner, smooth, image), image, factor)


def invert(image: tf.Tensor) -> tf.Tensor:
    """``ImageOps.invert``."""
    return 255.0 - image


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
    """``ImageOps.posterize``: keeps the ``bits`` most significant bits (8 or more: unchanged)."""
    step = tf.pow(2.0, 8.0 - tf.minimum(tf.cast(bits, tf.float32), 8.0))
    return tf.floor(image / step) * step


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
    """``ImageOps.solarize``: inverts the values >= ``threshold``."""
    return tf.where(image >= tf.cast(threshold, tf.float32), 255.0 - image, image)


def solarize_add(image: tf.Tensor, add, threshold=128) -> tf.Tensor:
    """timm's ``solarize_add``: ``min(v + add, 255)`` for the values < ``threshold``."""
    return tf.where(image < tf.cast(threshold, tf.float32), tf.minimum(image + tf.cast(add, tf.float32), 255.0), image)


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
    """``ImageOps.autocontrast`` (cutoff 0), per channel: ``int((v - lo) * 255 / (hi - lo))``."""
    x = tf.cast(image, tf.float64)  # PIL computes the table in double precision
    lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    out = tf.cast(tf.clip_by_value(tf.floor(x * scale - lo * scale), 0.0, 255.0), image.dtype)
    return tf.where(hi > lo, out, image)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """``ImageOps.equalize``: per channel, ``lut[i] = (step // 2 + sum(h[:i])) // step`` with
    ``step = (N - h[last non-empty bin]) // 255`` (unchanged where ``step`` is 0)."""
    q = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.int32)
    channels = []
    for c in range(3):
        ch = q[..., c]
        hist = tf.math.bincount(tf.reshape(ch, [-1]), minlength=256, maxlength=256, dtype=tf.int32)
        last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0))[None])[0]
        step = (tf.reduce_sum(hist) - last) // 255
        before = tf.cumsum(hist, exclusive=True)
        lut = tf.minimum((step // 2 + before) // tf.maximum(step, 1), 255)
        eq = tf.cast(tf.gather(lut, ch), tf.float32)
        channels.append(tf.where(step > 0, eq, image[..., c]))
    return tf.stack(channels, -1)


# ---------------------------------------------------------------- geometry


def affine(image: tf.Tensor, matrix, fill=FILL) -> tf.Tensor:
    """PIL's ``transform(size, AFFINE, (a, b, c, d, e, f))``: output ``(x, y)`` samples input
    ``(a x + b y + c, d x + e y + f)`` in continuous coordinates (pixel centres at +0.5);
    bilinear, ``fill`` outside."""
    a, b, c, d, e, f = (tf.cast(v, tf.float32) for v in matrix)
    # index coordinates: x_in = a x + b y + c + (a + b - 1) / 2
    transform = tf.stack([a, b, c + 0.5 * (a + b - 1.0), d, e, f + 0.5 * (d + e - 1.0), 0.0, 0.0])
    shape = tf.shape(image)[:2]
    channels = []
    for ch in range(3):  # the fill colour differs per channel
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=image[None, :, :, ch:ch + 1], transforms=transform[None], output_shape=shape,
            fill_value=float(fill[ch]), interpolation="BILINEAR", fill_mode="CONSTANT")
        channels.append(out[0, :, :, 0])
    return tf.stack(channels, -1)


def rotate(image: tf.Tensor, degrees, fill=FILL) -> tf.Tensor:
    """``Image.rotate(degrees)`` (counter-clockwise about the centre ``(w/2, h/2)``)."""
    shape = tf.cast(tf.shape(image), tf.float32)
    cx, cy = shape[1] / 2, shape[0] / 2
    angle = -tf.cast(degrees, tf.float32) * math.pi / 180
    a, b, d, e = tf.cos(angle), tf.sin(angle), -tf.sin(angle), tf.cos(angle)
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    return affine(image, (a, b, c, d, e, f), fill)


def shear_x(image: tf.Tensor, factor, fill=FILL) -> tf.Tensor:
    return affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill)


def shear_y(image: tf.Tensor, factor, fill=FILL) -> tf.Tensor:
    return affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill)


def translate_x(image: tf.Tensor, pixels, fill=FILL) -> tf.Tensor:
    return affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill)


def translate_y(image: tf.Tensor, pixels, fill=FILL) -> tf.Tensor:
    return affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill)


# ---------------------------------------------------------------- RandAugment


def apply_op(image: tf.Tensor, index, magnitude, sign) -> tf.Tensor:
    """RandAugment op ``OP_NAMES[index]`` at ``magnitude`` (0..10) with the random sign ``sign`` (+-1)
    of timm's ``_randomly_negate``, through timm's ``level_to_arg`` functions."""
    m = tf.cast(magnitude, tf.float32) / LEVEL_DENOM
    sign = tf.cast(sign, tf.float32)
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    enhance = 1.0 + sign * 0.9 * m  # _enhance_increasing_level_to_arg
    ops = [
        lambda: auto_contrast(image),
        lambda: equalize(image),
        lambda: invert(image),
        lambda: rotate(image, sign * 30.0 * m),
        lambda: posterize(image, 4 - tf.floor(m * 4)),  # _posterize_increasing_level_to_arg: 4 - int(4 m)
        lambda: solarize(image, 256 - tf.floor(m * 256)),  # _solarize_increasing_level_to_arg
        lambda: solarize_add(image, tf.floor(m * 110)),
        lambda: color(image, enhance),
        lambda: contrast(image, enhance),
        lambda: brightness(image, enhance),
        lambda: sharpness(image, enhance),
        lambda: shear_x(image, sign * 0.3 * m),
        lambda: shear_y(image, sign * 0.3 * m),
        lambda: translate_x(image, sign * TRANSLATE_PCT * m * size[1]),
        lambda: translate_y(image, sign * TRANSLATE_PCT * m * size[0]),
    ]
    out = tf.switch_case(tf.cast(index, tf.int32), ops)
    return tf.ensure_shape(out, image.shape)


def rand_augment(image: tf.Tensor, seed: tf.Tensor, *, magnitude: float, magnitude_std: float = 0.0,
                 num_ops: int = 2, prob: float = 0.5) -> tf.Tensor:
    """timm's ``rand-m{M}-mstd{S}-inc1`` on one 0..255 image: ``num_ops`` ops drawn uniformly with
    replacement, each applied with probability ``prob`` at a magnitude ``N(M, S)`` clipped to
    [0, 10], with a random sign where the op has one."""
    for k in range(num_ops):
        s = _seed(seed, 1000 + k)
        u = tf.random.stateless_uniform([2], s)
        op = tf.random.stateless_uniform([], _seed(s, 1), 0, len(OP_NAMES), dtype=tf.int32)
        m = magnitude + magnitude_std * tf.random.stateless_normal([], _seed(s, 2)) if magnitude_std else magnitude
        m = tf.clip_by_value(tf.cast(m, tf.float32), 0.0, LEVEL_DENOM)
        sign = tf.where(u[1] > 0.5, -1.0, 1.0)  # _randomly_negate
        image = tf.where(u[0] < prob, apply_op(image, op, m, sign), image)
    return image


# ---------------------------------------------------------------- colour jitter


def jitter(image: tf.Tensor, factors, order) -> tf.Tensor:
    """torchvision's ``ColorJitter`` on a PIL image with explicit factors (brightness, contrast,
    saturation) applied in ``order`` (a permutation of 0, 1, 2)."""
    fns = [lambda x: brightness(x, factors[0]), lambda x: contrast(x, factors[1]), lambda x: color(x, factors[2])]
    for k in range(3):
        image = tf.switch_case(tf.cast(order[k], tf.int32), [lambda fn=fn, x=image: fn(x) for fn in fns])
    return image


def jitter_params(strength: float, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`color_jitter`'s draws: (brightness, contrast, saturation factors uniform in
    [max(0, 1 - s), 1 + s], float32 [3]; their order, a permutation of 0, 1, 2 as int32 [3])."""
    factors = tf.random.stateless_uniform([3], seed, max(0.0, 1 - strength), 1 + strength)
    order = tf.argsort(tf.random.stateless_uniform([3], _seed(seed, 1)))
    return factors, order


def color_jitter(image: tf.Tensor, strength: float, seed: tf.Tensor) -> tf.Tensor:
    """timm's ``--color-jitter``: brightness, contrast and saturation factors uniform in
    [max(0, 1 - s), 1 + s], applied in a random order (torchvision's ``ColorJitter``, hue 0)."""
    return jitter(image, *jitter_params(strength, seed))


def jitter_batch(images: tf.Tensor, factors: tf.Tensor, orders: tf.Tensor) -> tf.Tensor:
    """:func:`jitter` of every image of a batch [B, H, W, 3] with its own factors [B, 3] and order [B, 3]:
    bit-identical to it image by image. Each of the three steps is one blend ``clip(floor(d + f (x - d)))``
    whose degenerate ``d`` (0, the rounded mean of L, or L) and factor are selected per image.

    The steps are the iterations of a while loop, so that under XLA each step reads the previous
    one's materialised output (fused into one expression, each step recomputed the earlier ones
    per channel: 1.5x slower). L is integer-valued, so its sum is exact in float32 up to
    2^24 / 255 pixels (256x256); larger images sum in float64 as :func:`contrast` does.
    """
    per_image = [-1, 1, 1, 1]
    orders = tf.cast(orders, tf.int32)
    pixels = images.shape[1] * images.shape[2] if images.shape[1] and images.shape[2] else None
    exact_f32 = pixels is not None and pixels * 255 < 2**24

    def step(k, x):
        op = tf.gather(orders, k, axis=1)
        factor = tf.reshape(tf.gather(factors, op, batch_dims=1), per_image)
        grey = luma(x)
        if exact_f32:
            total = tf.cast(tf.reduce_sum(grey, axis=[1, 2, 3], keepdims=True), tf.float64)
        else:
            total = tf.reduce_sum(tf.cast(grey, tf.float64), axis=[1, 2, 3], keepdims=True)
        count = tf.cast(tf.reduce_prod(tf.shape(grey)[1:]), tf.float64)
        mean = tf.cast(tf.floor(total / count + 0.5), x.dtype)  # contrast's reduce_mean in float64: sum / count
        degenerate = tf.where(tf.reshape(op == 2, per_image), grey, tf.where(tf.reshape(op == 1, per_image), mean, 0.0))
        return k + 1, blend(degenerate, x, factor)

    return tf.while_loop(lambda k, x: k < 3, step, (tf.constant(0), images), parallel_iterations=1)[1]


# ---------------------------------------------------------------- normalisation, the batched finish


normalize_levels = preprocessing.normalize_levels  # table lookup: torch's float32 bits in every execution mode


@functools.cache
def _compiled_finish(hflip: bool, jitter: bool):
    def finish(images, flips, factors, orders):
        x = tf.round(tf.clip_by_value(images, 0.0, 255.0))  # PIL's uint8 image after the resize
        if hflip:
            x = tf.where(tf.reshape(flips, [-1, 1, 1, 1]), tf.reverse(x, [2]), x)
        if jitter:
            x = jitter_batch(x, factors, orders)
        return normalize_levels(x)

    return tf.function(finish, jit_compile=True, autograph=False)


def finish_batch(images: tf.Tensor, flips: tf.Tensor, factors: tf.Tensor, orders: tf.Tensor, *, hflip: bool,
                 jitter: bool) -> tf.Tensor:
    """The train transform after the resize, on a whole batch [B, H, W, 3] of resized float images, as one
    XLA-compiled function (a few fused loops instead of ~40 ops per image): round to levels, flip where
    ``flips`` [B] (if ``hflip``), :func:`jitter_batch` with ``factors`` / ``orders`` [B, 3] (if ``jitter``),
    :func:`normalize_levels`. Bit-identical to the per-image ops (``tests/training/transform_test.py``)."""
    return _compiled_finish(bool(hflip), bool(jitter))(images, flips, factors, orders)


# ---------------------------------------------------------------- random erasing


def erase(image: tf.Tensor, box, noise: tf.Tensor) -> tf.Tensor:
    """``image`` with ``noise`` inside ``box`` = (top, left, height, width)."""
    top, left, h, w = tf.unstack(tf.cast(box, tf.int32))
    ys = tf.range(tf.shape(image)[0])[:, None]
    xs = tf.range(tf.shape(image)[1])[None, :]
    inside = (ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w)
    return tf.where(inside[..., None], noise, image)


def erasing_box(shape_hw, seed: tf.Tensor, attempts: int = 10) -> tuple[tf.Tensor, tf.Tensor]:
    """timm ``RandomErasing``'s box (area 2-33 %, log-uniform aspect 0.3-3.3, ``int(round())``
    sides, first of ``attempts`` that fits strictly inside) and whether one fitted."""
    h = tf.cast(shape_hw[0], tf.float32)
    w = tf.cast(shape_hw[1], tf.float32)
    u = tf.random.stateless_uniform([attempts, 4], seed)
    area = h * w * (0.02 + (1 / 3 - 0.02) * u[:, 0])
    r = tf.exp(math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * u[:, 1])
    eh = tf.round(tf.sqrt(area * r))
    ew = tf.round(tf.sqrt(area / r))
    fits = (eh < h) & (ew < w)
    i = tf.argmax(tf.cast(fits, tf.int32))
    top = tf.floor(u[i, 2] * (h - eh[i] + 1))
    left = tf.floor(u[i, 3] * (w - ew[i] + 1))
    return tf.stack([top, left, eh[i], ew[i]]), tf.reduce_any(fits)


def random_erasing(image: tf.Tensor, seed: tf.Tensor, prob: float, attempts: int = 10) -> tf.Tensor:
    """timm's ``RandomErasing(prob, mode="pixel", max_count=1)`` on a normalised image: one box of N(0, 1) noise."""
    box, fits = erasing_box(tf.shape(image)[:2], _seed(seed, 1), attempts)
    apply = (tf.random.stateless_uniform([], seed) < prob) & fits
    noise = tf.random.stateless_normal(tf.shape(image), _seed(seed, 7), dtype=image.dtype)
    return tf.where(apply, erase(image, box, noise), image)


# ---------------------------------------------------------------- Mixup / CutMix


def smooth_one_hot(labels: tf.Tensor, num_classes: int, smoothing: float) -> tf.Tensor:
    """timm's ``one_hot(..., on_value=1 - s + s / n, off_value=s / n)``."""
    off = smoothing / num_classes
    return tf.one_hot(labels, num_classes, on_value=1.0 - smoothing + off, off_value=off)


def mix_targets(targets: tf.Tensor, lam) -> tf.Tensor:
    """timm's ``mixup_target``: ``lam * y + (1 - lam) * y.flip(0)`` (smoothing is already in ``targets``)."""
    lam = tf.cast(lam, targets.dtype)
    return lam * targets + (1 - lam) * tf.reverse(targets, [0])


def mixup(images: tf.Tensor, lam) -> tf.Tensor:
    """``lam * x + (1 - lam) * x.flip(0)`` (timm's batch mode)."""
    lam = tf.cast(lam, images.dtype)
    return lam * images + (1 - lam) * tf.reverse(images, [0])


def cutmix_box(h, w, lam, cy, cx, *, round_up: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """timm's ``rand_bbox`` for centre (cy, cx) and ``cutmix_bbox_and_lam(correct_lam=True)``:
    ((y0, y1, x0, x1), corrected lambda). The box spans ``c - cut // 2 .. c + cut // 2`` as in
    timm up to 1.0.28 (DeiT's 0.3.2 and 0.5.4 included); ``round_up`` gives timm >= 1.0.29's
    ``c + (cut + 1) // 2`` upper edge."""
    ratio = tf.sqrt(1.0 - tf.cast(lam, tf.float32))
    cut_h = tf.floor(tf.cast(h, tf.float32) * ratio)
    cut_w = tf.floor(tf.cast(w, tf.float32) * ratio)
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    cy, cx = tf.cast(cy, tf.float32), tf.cast(cx, tf.float32)
    y0 = tf.clip_by_value(cy - tf.floor(cut_h / 2), 0.0, hf)
    up = 1.0 if round_up else 0.0
    y1 = tf.clip_by_value(cy + tf.floor((cut_h + up) / 2), 0.0, hf)
    x0 = tf.clip_by_value(cx - tf.floor(cut_w / 2), 0.0, wf)
    x1 = tf.clip_by_value(cx + tf.floor((cut_w + up) / 2), 0.0, wf)
    return tf.stack([y0, y1, x0, x1]), 1.0 - (y1 - y0) * (x1 - x0) / (hf * wf)


def cutmix(images: tf.Tensor, box) -> tf.Tensor:
    """``x[:, y0:y1, x0:x1] = x.flip(0)[:, y0:y1, x0:x1]``."""
    y0, y1, x0, x1 = (tf.cast(v, tf.int32) for v in tf.unstack(tf.cast(box, tf.float32)))
    ys = tf.range(tf.shape(images)[1])[:, None]
    xs = tf.range(tf.shape(images)[2])[None, :]
    inside = ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1))[None, :, :, None]
    return tf.where(inside, tf.reverse(images, [0]), images)


def mix_batch(images: tf.Tensor, targets: tf.Tensor, seed: tf.Tensor, cfg) -> tuple[tf.Tensor, tf.Tensor]:
    """timm's ``Mixup(mode="batch")`` on a normalised batch with (smoothed) one-hot ``targets``:
    with probability ``mix_prob``, CutMix (probability ``mix_switch_prob`` when both are on,
    lambda ~ Beta(cutmix_alpha), box from :func:`cutmix_box`, lambda corrected to the box) or
    Mixup (lambda ~ Beta(mixup_alpha)); the targets mix with the same lambda."""
    u = tf.random.stateless_uniform([4], seed)
    if cfg.cutmix_alpha > 0 and cfg.mixup_alpha > 0:
        use_cutmix = u[1] < cfg.mix_switch_prob
        alpha = tf.where(use_cutmix, cfg.cutmix_alpha, cfg.mixup_alpha)
    else:
        use_cutmix = tf.constant(cfg.cutmix_alpha > 0)
        alpha = tf.constant(max(cfg.cutmix_alpha, cfg.mixup_alpha), tf.float32)
    g = tf.random.stateless_gamma([2], _seed(seed, 3), alpha=tf.stack([alpha, alpha]))
    lam = g[0] / tf.maximum(g[0] + g[1], 1e-12)  # Beta(alpha, alpha)
    shape = tf.shape(images)
    cy = tf.floor(u[2] * tf.cast(shape[1], tf.float32))  # np.random.randint(0, H)
    cx = tf.floor(u[3] * tf.cast(shape[2], tf.float32))
    box, cut_lam = cutmix_box(shape[1], shape[2], lam, cy, cx)
    mixed = tf.where(use_cutmix, cutmix(images, box), mixup(images, lam))
    lam = tf.where(use_cutmix, cut_lam, lam)
    do_mix = u[0] < cfg.mix_prob
    images = tf.where(do_mix, mixed, images)
    lam = tf.where(do_mix, lam, 1.0)
    return images, mix_targets(targets, lam)
