"""The tf.data input pipelines: sources, ImageNet transforms, per-host sharding.

Sources (``DataConfig.dataset``) are the registry of :mod:`pf_keras_training.sources`: a TFDS
name (``imagenet2012``; raw JPEG bytes through ``SkipDecoding`` so the train crop is decoded
partially), ``folder:PATH`` (``PATH/train/<class>/...``, ``PATH/val/<class>/...``, any format
``tf.io.decode_image`` reads), ``builtin`` (:mod:`builtin_data`, generated on first use) and
``synthetic`` (random tensors, for throughput). This module decodes what a source's
``encoded`` stream yields; it knows no kind by name.

Determinism: the training stream of one epoch is a pure function of (seed, epoch, host):
the file order is a permutation seeded by (seed, epoch) (TFDS: file and buffer shuffles
seeded the same way), and every random choice of the transforms uses stateless ops seeded by
(seed, epoch, element index) or (seed, epoch, batch index). A resumed run rebuilds the epoch's
stream and skips the batches it already consumed, so it sees exactly the batches an
uninterrupted run sees. If no file was dropped in the consumed part of the epoch (the
checkpoint counts drops per epoch), the consumed files are skipped before decoding;
otherwise they are decoded again and their batches discarded (exact either way).

Bad files: a file that fails to decode (empty, truncated, not an image, a format other than
JPEG/PNG/GIF/BMP/WebP) or whose header declares more than ``max_image_pixels`` pixels (checked
before decoding: a 1 MB PNG may declare 20000x20000; a GIF counts the pixels of all its frames, which
the decoder decodes) is skipped and counted, and so is a file
that cannot be read; no error is logged per file. Training decodes the files in chunks of 64
(:func:`_decode_chunks`), each followed by a marker, so a stream of failures still moves: the
files dropped before a good example are its ``skipped`` count, and ``max_consecutive_skips``
failures in a row (or a whole pass of the host's files) stop the stream with an error naming
the dataset (:func:`explain_data_error`) instead of looping forever. Evaluation decodes each
file in its own one-element dataset whose failure yields a padding element (weight 0,
``skipped`` 1), so files at the end of the list count too. A
truncated JPEG whose random crop lies wholly inside the intact part decodes correctly and is
used. PNG (or any non-JPEG) content under a ``.JPEG`` name is decoded in full and then
cropped; CMYK JPEGs decode to RGB. JPEGs decode to PIL's pixels (libjpeg's accurate IDCT, and the
partial decode with a margin of context: :func:`decode_jpeg_window`), so the eval crop, resized
with PIL's arithmetic (:mod:`pf_keras.pil_resample`), holds exactly what timm's pipeline gives.

Every train/eval dataset yields batches of per-replica size as dicts: train
``{"images", "targets" (soft labels), "labels", "skipped"}``, eval ``{"images", "labels",
"weights" (0 for padding), "skipped"}``. The eval stream of every host is padded to the same
number of batches so that multi-worker collectives stay in step.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable

import numpy as np
import tensorflow as tf

import pf_keras
from pf_keras.cli import op_error_reason
from pf_keras_training import augment, repeated_aug, sources
from pf_keras_training.augment import color_jitter, mix_batch, rand_augment, random_erasing
from pf_keras_training.recipes import DataConfig

AUTOTUNE = tf.data.AUTOTUNE
MAX_JPEG_SCANS = pf_keras.preprocessing.MAX_JPEG_SCANS  # more start-of-scan markers: the file is refused (why: there)
MAX_IMAGE_PIXELS = 40_000_000  # 40 MP: above any ImageNet image (the largest is ~ 4300x6000 = 26 MP)
MAX_CONSECUTIVE_SKIPS = 1000  # consecutive undecodable training files that stop a run (0 = no limit)
_STALL_MARK = "pf-keras: no decodable image in a row of files"

# The pipelines' functions are plain TensorFlow (tf.cond / tf.case, no Python branch on a tensor). The dataset
# functions below build them with AutoGraph off (``do_not_convert`` disables it for everything traced inside,
# sources' and repeated augmentation's functions included): converting them cost ~1 CPU-s per epoch's pipeline.
_without_autograph = tf.autograph.experimental.do_not_convert


Source = sources.DataSource  # a resolved source (the name training code has always used)


def resolve_source(cfg: DataConfig) -> sources.DataSource:
    """Finds the dataset named by ``cfg.dataset``; ValueError with instructions if it is missing."""
    return sources.resolve(cfg)


# ---------------------------------------------------------------- seeds


def _seed(*parts) -> tf.Tensor:
    """A stateless seed (shape [2] int64) folded from integers / scalar tensors."""
    seed = tf.constant([0x5EED, 0], tf.int64)
    for p in parts:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(p, tf.int64))
    return seed


# ---------------------------------------------------------------- decoding and crops


def sample_crop(shape_hw: tf.Tensor, seed: tf.Tensor, scale: tuple[float, float],
                ratio: tuple[float, float], attempts: int = 10) -> tf.Tensor:
    """RandomResizedCrop window [y, x, h, w] (int32) for an image of ``shape_hw``.

    Area uniform in ``scale`` of the image, log-aspect uniform in ``ratio``; the first of
    ``attempts`` candidates that fits wins, else a centre crop with the ratio clamped.
    """
    h = tf.cast(shape_hw[0], tf.float32)
    w = tf.cast(shape_hw[1], tf.float32)
    u = tf.random.stateless_uniform([attempts, 4], seed)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = tf.exp(log_r)
    cw = tf.round(tf.sqrt(area * r))
    ch = tf.round(tf.sqrt(area / r))
    fits = (cw <= w) & (ch <= h) & (cw >= 1) & (ch >= 1)
    i = tf.argmax(tf.cast(fits, tf.int32))
    in_ratio = w / h
    fb_w = tf.where(in_ratio < ratio[0], w, tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w))
    fb_h = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
    any_fit = tf.reduce_any(fits)
    ch = tf.where(any_fit, ch[i], fb_h)
    cw = tf.where(any_fit, cw[i], fb_w)
    y = tf.where(any_fit, tf.floor(u[i, 2] * (h - ch + 1)), tf.floor((h - ch) / 2))
    x = tf.where(any_fit, tf.floor(u[i, 3] * (w - cw + 1)), tf.floor((w - cw) / 2))
    return tf.cast(tf.stack([y, x, ch, cw]), tf.int32)


# libjpeg's accurate integer IDCT, what PIL (timm's decoder) uses: TensorFlow's default, the fast IDCT, differs
# from PIL by up to ~5 levels on about 2 in 3 pixels of a photo; this one decodes the same pixels, at the same speed.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"
# Columns (and rows) decoded beyond a crop on each side: libjpeg-turbo's cropped decode upsamples the chroma of
# the crop's edge columns as if they were the image's edge (up to ~30 levels off on 4:2:0/4:2:2 JPEGs); one more
# column of context on each side gives the full decode's pixels (checked against PIL on random crops).
JPEG_CROP_MARGIN = 2


def decode_jpeg_window(image_bytes: tf.Tensor, window: tf.Tensor, shape_hw: tf.Tensor | None = None) -> tf.Tensor:
    """The ``[y, x, height, width]`` window of a JPEG, decoding only it (and a margin): the pixels a full
    decode (PIL's) has there. ``shape_hw``: the JPEG's (height, width), if the caller has read it already."""
    shape = tf.image.extract_jpeg_shape(image_bytes)[:2] if shape_hw is None else shape_hw
    start = tf.maximum(window[:2] - JPEG_CROP_MARGIN, 0)
    end = tf.minimum(window[:2] + window[2:] + JPEG_CROP_MARGIN, shape)
    image = tf.image.decode_and_crop_jpeg(image_bytes, tf.concat([start, end - start], 0), channels=3,
                                          dct_method=JPEG_DCT_METHOD)
    inner = window[:2] - start
    return tf.slice(image, [inner[0], inner[1], 0], [window[2], window[3], 3])


def _le(header: tf.Tensor, offset: int, size: int) -> tf.Tensor:
    """The little-endian unsigned int of ``size`` bytes at ``offset`` of a uint8 vector (int64)."""
    weights = tf.constant([256 ** i for i in range(size)], tf.int64)
    return tf.reduce_sum(tf.cast(header[offset:offset + size], tf.int64) * weights)


def _bmp_palette(image_bytes: tf.Tensor, header: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
    """An 8-bit BMP's colours: TensorFlow's decoder returns its palette indices as grey levels (a photo saved as an
    indexed BMP became noise). The indices through the colour table (B, G, R, 0 entries after the DIB header;
    ``biClrUsed`` of them, 256 if 0; indices past the table are black, as in PIL). ``header``: the file's
    first 54 bytes, zero-padded (uint8)."""
    start = 14 + _le(header, 14, 4)
    used = _le(header, 46, 4)
    entries = tf.where((used > 0) & (used < 256), used, 256)
    # the file's bytes from the table on, padded: a table cut short by the pixel data or the file's end reads
    # what is there (as PIL); a table offset past the end fails the file (it is skipped). Checked by an assert:
    # substr's own out-of-range error quotes the file's bytes, which eagerly raised UnicodeDecodeError
    inside = tf.debugging.assert_less_equal(start, tf.cast(tf.strings.length(image_bytes), tf.int64),
                                            message="BMP colour table past the end of the file")
    with tf.control_dependencies([inside]):
        table = tf.strings.substr(image_bytes, start, 1024)
    table = tf.strings.substr(tf.strings.join([table, "\0" * 1024]), 0, 1024)
    table = tf.reshape(tf.io.decode_raw(table, tf.uint8), [256, 4])[:, 2::-1]
    table = tf.where(tf.range(256, dtype=tf.int64)[:, None] < entries, table, tf.zeros_like(table))
    return tf.gather(table, tf.cast(image[..., 0], tf.int32))


def _webp_alpha(padded: tf.Tensor, header: tf.Tensor) -> tf.Tensor:
    """Whether a still WebP has an alpha channel (libwebp's ``has_alpha``: the VP8X header's alpha flag, or the
    VP8L header's alpha bit). TensorFlow decodes such a file only as 4 channels (asked for 3 it fails, and the
    file was skipped; PIL reads it and ``convert("RGB")`` drops the alpha). An animation is False: asked for 3
    channels TensorFlow refuses it cleanly (asked for 0, TF 2.21 corrupts its heap and the process dies)."""
    riff = tf.equal(tf.strings.substr(padded, 0, 4), "RIFF") & tf.equal(tf.strings.substr(padded, 8, 4), "WEBP")
    chunk = tf.strings.substr(padded, 12, 4)
    flags = tf.cast(header[20], tf.int32)
    still_alpha = tf.equal(tf.bitwise.bitwise_and(flags, 0x12), 0x10)  # alpha flag set, animation flag clear
    extended = tf.equal(chunk, "VP8X") & still_alpha
    lossless = tf.equal(chunk, "VP8L") & tf.equal(tf.bitwise.bitwise_and(tf.cast(header[24], tf.int32), 0x10), 0x10)
    return riff & (extended | lossless)


def _decode_other(image_bytes: tf.Tensor) -> tf.Tensor:
    """A PNG, GIF (first frame), BMP or still WebP as uint8 RGB, as PIL's ``convert("RGB")`` gives it."""
    padded = tf.strings.substr(tf.strings.join([image_bytes, "\0" * 54]), 0, 54)  # the header, never short
    header = tf.io.decode_raw(padded, tf.uint8)

    def decode():
        return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)

    def without_alpha():
        return tf.io.decode_image(image_bytes, channels=4, expand_animations=False)[..., :3]

    image = tf.cond(_webp_alpha(padded, header), without_alpha, decode)
    indexed_bmp = tf.equal(tf.strings.substr(padded, 0, 2), "BM") & tf.equal(_le(header, 28, 2), 8)
    return tf.cond(indexed_bmp, lambda: _bmp_palette(image_bytes, header, image), lambda: image)


# :func:`_decode_other` as one call op (not inlined, as :func:`_gif_pixels`): the untaken side of every JPEG's cond,
# and each eval file's pipeline instantiation, carry one op instead of its ~60
_decode_other_call = tf.function(_decode_other, input_signature=[tf.TensorSpec([], tf.string)], autograph=False,
                                 experimental_attributes={"_noinline": True})


def decode_random_crop(image_bytes: tf.Tensor, seed: tf.Tensor, scale: tuple[float, float],
                       ratio: tuple[float, float]) -> tf.Tensor:
    """Decodes only the sampled crop of a JPEG (:func:`decode_jpeg_window`); other formats in full, then crops."""

    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes)[:2]
        return decode_jpeg_window(image_bytes, sample_crop(shape, seed, scale, ratio), shape)

    def other():
        image = _decode_other_call(image_bytes)
        window = sample_crop(tf.shape(image)[:2], seed, scale, ratio)
        return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])

    return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)


def decode_full(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decodes any image format to uint8 RGB (CMYK and greyscale JPEGs included); JPEGs as PIL decodes them."""
    image = tf.cond(tf.io.is_jpeg(image_bytes),
                    lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method=JPEG_DCT_METHOD),
                    lambda: _decode_other_call(image_bytes))
    image.set_shape([None, None, 3])
    return image


GIF_MAX_STEPS = 1 << 16  # steps of the GIF walk before the file is refused (~13-17 us each: ~1 s of CPU)
_GIF_RUN = 64  # full (255-byte) data sub-blocks one step may skip after the first


def _gif_tables() -> tuple[np.ndarray, np.ndarray]:
    """The step table of :func:`_gif_pixels_graph`, rows ``byte + mode`` (mode 0 between blocks, 256 in
    data sub-blocks, 512 at an extension's first sub-block) and 768 (past the end): ``(bytes to skip, next
    mode, frame (1 = image descriptor), status (0 = go on, 1 = done, 2 = malformed), run (1 = a full
    sub-block: the following ones too))``; and the size of a colour table by its packed field."""
    table = np.zeros([769, 5], np.int64)
    table[:256, 3] = 2  # an unknown block byte
    table[0x21] = (2, 512, 0, 0, 0)  # extension: introducer, label, then sub-blocks
    table[0x2C] = (11, 256, 1, 0, 0)  # image: 10-byte descriptor (+ local colour table), LZW code size, sub-blocks
    table[0x3B] = (0, 0, 0, 1, 0)  # trailer
    table[256:512, 0] = np.arange(1, 257)  # a sub-block: its size byte and data; size 0 ends the blocks
    table[257:512, 1] = 256
    table[512:768] = table[256:512]
    # an extension without data: giflib's DGifSlurp (this version) reads the next byte as a sub-block size, not
    # as a block, and may find frames there that the walk would not see; the decoder fails on most such files
    table[512] = (0, 0, 0, 2, 0)
    table[[511, 767], 4] = 1
    table[768] = (0, 0, 0, 1, 0)
    colours = np.array([3 << (p % 8 + 1) if p & 0x80 else 0 for p in range(256)], np.int64)
    return table, colours


def _gif_pixels_graph(image_bytes: tf.Tensor) -> tf.Tensor:
    """The pixels a GIF decodes to, all frames: max(sum of the frames' width x height, canvas), where the
    canvas is max(screen width, widest frame) x max(screen height, tallest frame) (int64; -1 if refused).

    ``tf.io.decode_image`` decodes every frame even with ``expand_animations=False`` (giflib's
    ``DGifSlurp``: one byte per pixel of each frame, all kept, then an RGB canvas the size of the
    largest frame, which the logical screen does not bound): a small file of many frames, or a
    frame that declares 65535x65535 behind a 1x1 screen, would inflate to gigabytes. An animation
    of full frames counts frames x width x height; one of small delta frames, what the decoder
    decodes (not frames x screen).

    The walk is one flat state machine, a table-driven step per block or data sub-block (or per
    run of up to 65 full 255-byte sub-blocks, what encoders write), parsing as giflib does: after
    the header, logical screen descriptor and global colour table, ``0x21`` (extension: label,
    then sub-blocks up to a 0 size), ``0x2C`` (image: 10-byte descriptor, local colour table, LZW
    code size, then sub-blocks), ``0x3B`` (trailer: done). A file that ends early counts the
    frames whose descriptor it reached (the decoder keeps the frames of a truncated file, no
    more). Refused (-1): no frame; any other block byte (also trailing garbage, which the decoder
    ignores); an extension without data (giflib misreads what follows it); more than
    :data:`GIF_MAX_STEPS` steps (a hostile file of tiny blocks or sub-blocks: ~1 s of walking; an
    encoder's file takes ~3 steps per frame and one per 16 KB of image data).
    """
    table, colours = _gif_tables()
    pad = 256 * (_GIF_RUN + 4)  # > the longest step + the window: no read past the bytes
    b = tf.io.decode_raw(tf.strings.join([image_bytes, "\0" * pad]), tf.uint8)
    n = tf.size(b, tf.int64) - pad
    head = tf.cast(b[:13], tf.int64)
    # the window read at pos: the sizes of the next sub-blocks if full (pos + 256 j), then pos + 1..9
    offsets = np.concatenate([256 * np.arange(_GIF_RUN + 1), np.arange(1, 10)])[:, None]
    # (byte, packed field, width, height) of the window: one matmul instead of ten slices
    fields = np.zeros([4, len(offsets)], np.int64)
    fields[0, 0] = fields[1, _GIF_RUN + 9] = fields[2, _GIF_RUN + 5] = fields[3, _GIF_RUN + 7] = 1
    fields[2, _GIF_RUN + 6] = fields[3, _GIF_RUN + 8] = 256
    full = np.zeros([1, len(offsets)], np.int64)
    full[0, 1:_GIF_RUN + 1] = 256  # a full sub-block after a full one: 256 more bytes

    # one step, as small a graph as can be: each op costs every step, and each node every time a pipeline
    # instantiates its functions, which evaluation does per file (4 steps unrolled cost ~0.1 ms a file);
    # all [1, 1] but size, [[width], [height]]
    def step(pos, mode, area, size, status):
        window = tf.cast(tf.gather(b, pos + tf.constant(offsets)), tf.int64)
        byte, packed, frame = tf.split(tf.matmul(tf.constant(fields), window), [1, 1, 2])
        key = tf.where(pos >= n, tf.constant(768, tf.int64), byte + mode)
        skip, mode, image, status, run = tf.unstack(tf.gather(tf.constant(table), key), axis=-1)
        run = run * tf.matmul(tf.constant(full), tf.math.cumprod(tf.cast(tf.equal(window, 255), tf.int64)))
        pos = tf.math.add_n([pos, skip, run, image * tf.gather(tf.constant(colours), packed)])
        frame = image * frame  # 0 unless an image descriptor
        return pos, mode, area + tf.reduce_prod(frame, 0, keepdims=True), tf.maximum(size, frame), status

    start = tf.reshape(13 + tf.gather(colours, head[10]), [1, 1])  # after the global colour table
    screen = tf.reshape(head[6:10:2] + 256 * head[7:10:2], [2, 1])
    zero = tf.zeros([1, 1], tf.int64)
    _, _, area, size, status = tf.while_loop(lambda *s: tf.equal(s[-1][0, 0], 0), step,
                                             (start, zero, zero, screen, zero), maximum_iterations=GIF_MAX_STEPS)
    pixels = tf.maximum(area, tf.reduce_prod(size, 0, keepdims=True))
    return tf.reshape(tf.where(tf.equal(status, 1) & (area > 0), pixels, tf.constant(-1, tf.int64)), [])


def _gif_pixels_on_cpu(image_bytes: tf.Tensor) -> tf.Tensor:
    with tf.device("/device:CPU:0"):  # a loop of tiny ops: the host's, also eagerly on a machine with a GPU
        return _gif_pixels_graph(image_bytes)


# A function even when called eagerly (the export's image check: an eager loop costs ~1 ms a step); not inlined
# into the pipelines' functions, whose instantiation it then slows less (~35 ms instead of ~50 per pipeline).
_gif_pixels = tf.function(_gif_pixels_on_cpu, input_signature=[tf.TensorSpec([], tf.string)], autograph=False,
                          experimental_attributes={"_noinline": True})


def header_pixels(image_bytes: tf.Tensor) -> tf.Tensor:
    """Width x height declared by the header of a JPEG, PNG, GIF, BMP or WebP file (int64; -1 if unknown);
    for a GIF, the pixels of all its frames (:func:`_gif_pixels_graph`: the decoder decodes every frame; an
    animation of full frames counts frames x width x height).

    Reads headers only (the first 32 bytes; JPEG: its markers, via ``extract_jpeg_shape``; GIF:
    its block structure, in a bounded loop), so a file that would inflate to gigabytes is
    measured before anything is allocated. A JPEG of more than :data:`MAX_JPEG_SCANS` scans is
    unknown (-1): its decode time grows with scans x pixels, not with its size.
    """
    def jpeg():
        pixels = tf.reduce_prod(tf.cast(tf.image.extract_jpeg_shape(image_bytes)[:2], tf.int64))
        # libjpeg decodes every scan over the whole image, even an empty one: a 30 KB file of 3,000 empty scans
        # took 20 s to decode (9459x9459), a 1 MB one would take minutes (MAX_JPEG_SCANS)
        scans = tf.size(tf.strings.split(image_bytes, sep=b"\xff\xda")) - 1
        return tf.where(scans <= MAX_JPEG_SCANS, pixels, tf.constant(-1, tf.int64))

    def other():
        head = tf.strings.substr(tf.strings.join([tf.strings.substr(image_bytes, 0, 32), "\0" * 32]), 0, 32)
        b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

        def le(i: int, n: int) -> tf.Tensor:
            return tf.add_n([b[i + k] * (256 ** k) for k in range(n)])

        def be(i: int, n: int) -> tf.Tensor:
            return tf.add_n([b[i + k] * (256 ** (n - 1 - k)) for k in range(n)])

        def starts(i: int, magic: bytes) -> tf.Tensor:
            return tf.reduce_all(tf.equal(b[i:i + len(magic)], tf.constant(list(magic), tf.int64)))

        def signed32(v: tf.Tensor) -> tf.Tensor:
            return tf.abs(tf.where(v >= 2 ** 31, v - 2 ** 32, v))

        def bmp():
            # the 32-bit width and height at 18 and 22, whatever the header's declared size: TensorFlow's decoder
            # reads them so (a BITMAPCOREHEADER's 16-bit sizes counted 0 pixels for a file TF decoded whole)
            return signed32(le(18, 4)) * signed32(le(22, 4))

        def webp():
            vp8l = le(21, 4)
            return tf.case([
                (starts(12, b"VP8 "), lambda: (le(26, 2) % 16384) * (le(28, 2) % 16384)),
                (starts(12, b"VP8L"), lambda: (vp8l % 16384 + 1) * (vp8l // 16384 % 16384 + 1)),
                (starts(12, b"VP8X"), lambda: (le(24, 3) + 1) * (le(27, 3) + 1)),
            ], default=lambda: tf.constant(-1, tf.int64))

        return tf.case([
            (starts(0, b"\x89PNG\r\n\x1a\n"), lambda: be(16, 4) * be(20, 4)),
            (starts(0, b"GIF8"), lambda: _gif_pixels(image_bytes)),
            (starts(0, b"BM"), bmp),
            (starts(0, b"RIFF") & starts(8, b"WEBP"), webp),
        ], default=lambda: tf.constant(-1, tf.int64))

    # JPEG first, on two bytes: the other formats' ~30 header ops run only for other files
    return tf.cond(tf.equal(tf.strings.substr(image_bytes, 0, 2), b"\xff\xd8"), jpeg, other)


def checked(image_bytes: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """``image_bytes``, after checking its header: an unknown format or more than ``max_pixels`` pixels
    fails (the caller's per-file error handling skips and counts it) before any decoding."""
    pixels = header_pixels(image_bytes)
    ok = (pixels >= 0) & (pixels <= max_pixels) if max_pixels > 0 else pixels >= 0
    with tf.control_dependencies([tf.debugging.Assert(ok, ["image too large or of unknown format:", pixels])]):
        return tf.identity(image_bytes)


def _decode_each(ds: tf.data.Dataset, fn: Callable, failed: Callable) -> tf.data.Dataset:
    """``fn`` on every element, in order and in parallel; where ``fn`` fails, ``failed(element)`` instead.

    Yields ``(value, ok)``. Each element runs in its own one-element dataset whose error is
    dropped without a log line and replaced by the marker, so failures stay visible downstream.
    """

    def one(*element):
        good = tf.data.Dataset.from_tensors(element).map(lambda *e: (fn(*e), True)).ignore_errors()
        return good.concatenate(tf.data.Dataset.from_tensors((failed(*element), False))).take(1)

    return ds.interleave(one, cycle_length=AUTOTUNE, block_length=1, num_parallel_calls=AUTOTUNE,
                         deterministic=True)


def _decode_chunks(ds: tf.data.Dataset, fn: Callable, failed: Callable, chunk: int) -> tf.data.Dataset:
    """``fn`` on every ``(index, pair)`` element, in order and in parallel, dropping those it fails on (no log
    line); after every ``chunk`` input elements a marker ``(failed(last element), False)``.

    Yields ``(value, ok)``. The markers keep a stream of failures moving (it can be stopped
    downstream instead of looping silently); one small dataset per chunk keeps the cost of the
    per-file error handling low.
    """

    def one(indices, pairs):
        good = tf.data.Dataset.from_tensor_slices((indices, pairs))
        good = good.map(lambda i, p: (fn(i, p), True), num_parallel_calls=AUTOTUNE, deterministic=True)
        last = tf.nest.map_structure(lambda x: x[-1], pairs)
        return good.ignore_errors().concatenate(tf.data.Dataset.from_tensors((failed(indices[-1], last), False)))

    return ds.batch(chunk).interleave(one, cycle_length=4, block_length=chunk + 1, num_parallel_calls=AUTOTUNE,
                                      deterministic=True)


def _count_skips(ds: tf.data.Dataset, limit: int, start: int = 0) -> tf.data.Dataset:
    """Keeps the good elements of :func:`_decode_chunks`; each one's ``skipped`` is the number of files dropped
    since the previous one (the stream's first index is ``start``). A marker that closes ``limit`` > 0 failures
    in a row ends the stream with an error (:func:`explain_data_error`)."""

    def step(last, pair):
        element, ok = pair
        index = element["index"]
        if limit > 0:
            run = tf.where(ok, tf.constant(0, tf.int64), index - last)
            with tf.control_dependencies([tf.debugging.Assert(run < limit, [_STALL_MARK, run])]):
                index = tf.identity(index)
        element = dict(element)
        element["skipped"] = tf.cast(tf.where(ok, index - last - 1, 0), tf.int32)
        del element["index"]
        return tf.where(ok, index, last), (element, ok)

    return ds.scan(tf.constant(start - 1, tf.int64), step).filter(_second).map(_first)


def _first(element, ok):
    return element


def _second(element, ok):
    return ok


def explain_data_error(error: Exception, source: Source, split: str, limit: int) -> Exception:
    """A one-line ValueError for a stopped input stream (too many undecodable files in a row) or damaged
    record files (a TFRecord shard's CRC: no reader can resynchronise past it), else ``error``."""
    if isinstance(error, tf.errors.DataLossError):
        return ValueError(f"The {split} data of {source.location(split)} is damaged "
                          f"({op_error_reason(error.message)}); rebuild or re-download it. "
                          f"Received: dataset={source.name!r}")
    if not isinstance(error, tf.errors.OpError) or _STALL_MARK not in str(error):
        return error
    found = re.search(re.escape(_STALL_MARK) + r"\D*(\d+)", str(error))
    run = found.group(1) if found else "?"
    root = getattr(source, "root", "")
    folder = os.path.join(root, split) if root else ""
    if folder and not os.path.isdir(folder):
        cause = f"its folder {folder} no longer exists (moved or deleted during the run?)"
    else:
        cause = "the files are not images of a supported format (JPEG, PNG, GIF, BMP, WebP) or exceed the pixel limit"
    return ValueError(
        f"The {split} data yielded no decodable image in {run} consecutive files of {source.location(split)}; "
        f"{cause}. Received: max_consecutive_skips={limit}"
    )


def eval_transform(image: tf.Tensor, image_size: int, crop_fraction: float, interpolation: str) -> tf.Tensor:
    """Resize the shorter side to floor(image_size / crop_fraction), centre crop, normalise.

    With image_size 224: resize 256, crop 224, ``(x / 255 - mean) / std`` (what the official
    checkpoints expect): :func:`pf_keras.eval_transform`.
    """
    return pf_keras.eval_transform(image, size=image_size, crop_fraction=crop_fraction, interpolation=interpolation)


# ---------------------------------------------------------------- train transform
# (the augmentations themselves live in training/augment.py, compared with timm's op by op)


def train_resized(image_bytes: tf.Tensor, seed: tf.Tensor, cfg: DataConfig, interpolation: str) -> tf.Tensor:
    """RandomResizedCrop of one encoded image (partial decode of the crop, antialiased resize), float32
    [S, S, 3] on the 0..255 scale, not yet rounded. ``cfg.train_interpolation``: "random" picks bilinear or
    bicubic per image as timm's default does; "" uses ``interpolation``."""
    # uint8 into the resize: ScaleAndTranslate converts each pixel as it reads it (the same bits as a
    # float32 image, without a pass over the crop to convert it first)
    image = decode_random_crop(image_bytes, _seed(seed[0], seed[1], 0), (cfg.crop_scale_min, 1.0),
                               (cfg.crop_ratio_min, cfg.crop_ratio_max))
    size = [cfg.image_size, cfg.image_size]
    method = cfg.train_interpolation or interpolation
    if method == "random":
        bicubic = tf.random.stateless_uniform([], _seed(seed[0], seed[1], 5)) < 0.5
        return tf.cond(bicubic, lambda: tf.image.resize(image, size, method="bicubic", antialias=True),
                       lambda: tf.image.resize(image, size, method="bilinear", antialias=True))
    return tf.cast(tf.image.resize(image, size, method=method, antialias=True), tf.float32)  # nearest keeps uint8


def train_example(image_bytes: tf.Tensor, seed: tf.Tensor, cfg: DataConfig, interpolation: str) -> tf.Tensor:
    """timm's ``transforms_imagenet_train`` of one encoded image, on PIL's 0..255 scale up to the normalisation.

    :func:`train_resized`, rounded to integers as PIL's uint8 image is, horizontal flip, colour
    jitter and/or RandAugment, normalise, random erasing. Without RandAugment and random erasing
    the pipeline runs the steps after the resize on whole batches instead (:func:`batched_finish`),
    with the same bits.
    """
    image = tf.round(tf.clip_by_value(train_resized(image_bytes, seed, cfg, interpolation), 0.0, 255.0))
    if cfg.hflip:
        image = tf.image.stateless_random_flip_left_right(image, _seed(seed[0], seed[1], 1))
    if cfg.color_jitter > 0:
        image = color_jitter(image, cfg.color_jitter, _seed(seed[0], seed[1], 2))
    if cfg.randaugment_magnitude > 0:  # geometric ops leave fractional values: the arithmetic normalisation
        image = rand_augment(image, _seed(seed[0], seed[1], 3), magnitude=cfg.randaugment_magnitude,
                             magnitude_std=cfg.randaugment_magnitude_std, num_ops=cfg.randaugment_num_ops)
        image = pf_keras.normalize(image)
    else:
        image = augment.normalize_levels(image)
    if cfg.random_erasing > 0:
        image = random_erasing(image, _seed(seed[0], seed[1], 4), cfg.random_erasing)
    return image


def batched_finish(cfg: DataConfig) -> bool:
    """Whether the train transform after the resize (flip, colour jitter, normalisation) runs on whole
    batches (:func:`augment.finish_batch`): without RandAugment and random erasing, which stay per image."""
    return cfg.randaugment_magnitude == 0 and cfg.random_erasing == 0


def train_params(seed: tf.Tensor, cfg: DataConfig) -> dict[str, tf.Tensor]:
    """One image's draws for :func:`augment.finish_batch`, those :func:`train_example` makes: ``flip``
    (``stateless_random_flip_left_right``'s draw), colour jitter ``factors`` and ``order``."""
    flip = tf.random.stateless_uniform([], _seed(seed[0], seed[1], 1)) < 0.5
    if cfg.color_jitter > 0:
        factors, order = augment.jitter_params(cfg.color_jitter, _seed(seed[0], seed[1], 2))
    else:
        factors, order = tf.ones([3]), tf.range(3)
    return {"flip": flip, "factors": factors, "order": order}


def finish_train_batch(batch: dict[str, tf.Tensor], cfg: DataConfig) -> dict[str, tf.Tensor]:
    """A batch of :func:`train_resized` images with their :func:`train_params` -> the normalised images
    of :func:`train_example` (bit-identical), the draws removed."""
    batch = dict(batch)
    flips, factors, orders = batch.pop("flip"), batch.pop("factors"), batch.pop("order")
    batch["images"] = augment.finish_batch(batch["images"], flips, factors, orders, hflip=cfg.hflip,
                                           jitter=cfg.color_jitter > 0)
    return batch


def _train_transform(source: Source, cfg: DataConfig, interpolation: str, max_image_pixels: int,
                     batched: bool) -> Callable:
    """``(file key, seed) -> {"images", (the batched finish's draws)}``: the train transform of one file
    (:func:`train_example`, or with ``batched`` :func:`train_resized` + :func:`train_params`).

    One ``tf.function`` per process and configuration, so every epoch's pipeline calls the graph traced
    for the first instead of building its own (a second of tracing per epoch with RandAugment).
    """
    key = (source, cfg, interpolation, max_image_pixels, batched)
    try:
        hash(key)
    except TypeError:  # a source that cannot be hashed (user-defined): traced for each pipeline
        return _build_train_transform.__wrapped__(*key)
    return _build_train_transform(*key)


@functools.lru_cache(maxsize=4)
def _build_train_transform(source: Source, cfg: DataConfig, interpolation: str, max_image_pixels: int,
                           batched: bool) -> Callable:
    def transform(image_bytes, seed):
        encoded = checked(source.read(image_bytes), max_image_pixels)
        if batched:
            return dict(images=train_resized(encoded, seed, cfg, interpolation), **train_params(seed, cfg))
        return {"images": train_example(encoded, seed, cfg, interpolation)}

    return tf.function(transform, autograph=False)


# ---------------------------------------------------------------- datasets


def _options(cfg: DataConfig) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def local_batches_per_step(ctx: tf.distribute.InputContext) -> int:
    """Batches one host produces per global step: one per local replica."""
    return ctx.num_replicas_in_sync // ctx.num_input_pipelines


def make_train_dataset_fn(source: Source, cfg: DataConfig, *, seed: int, epoch: int, steps_per_epoch: int,
                          skip_steps: int, label_smoothing: float, interpolation: str, clean_prefix: bool = False,
                          max_image_pixels: int = MAX_IMAGE_PIXELS, max_consecutive_skips: int = MAX_CONSECUTIVE_SKIPS
                          ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """The dataset function of one training epoch (for ``distribute_datasets_from_function``).

    Yields exactly ``steps_per_epoch - skip_steps`` steps of per-replica batches: the
    stream of the epoch with the first ``skip_steps`` steps dropped. ``clean_prefix``
    (no file was dropped on any host in those steps) skips the consumed files before
    decoding; otherwise the consumed part is decoded again and its batches discarded. Both
    give the same stream. Files over ``max_image_pixels`` (0 = no limit) are skipped; the
    stream fails after ``max_consecutive_skips`` failures in a row, or a whole pass of the host's
    files (0 = never; see :func:`explain_data_error`).
    """
    num_classes = source.num_classes
    interpolation = interpolation or "bilinear"

    def targets_of(labels):
        one_hot = tf.one_hot(labels, num_classes)
        return one_hot * (1 - label_smoothing) + label_smoothing / num_classes

    @_without_autograph
    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = ctx.get_per_replica_batch_size(cfg.global_batch_size)
        per_step = local_batches_per_step(ctx)
        total = steps_per_epoch * per_step
        held = source.in_memory("train", ctx, cfg, seed=seed, count=batch)
        if held is not None:  # one batch of ready model inputs, repeated (synthetic: no decoding)
            images, labels = held
            element = {"images": images, "targets": targets_of(labels), "labels": labels,
                       "skipped": np.zeros([batch], np.int32)}
            return tf.data.Dataset.from_tensors(element).repeat(total - skip_steps * per_step)
        skip_batches = skip_steps * per_step
        fast_skip = clean_prefix and skip_batches > 0
        ds = source.encoded("train", ctx, seed=seed, epoch=epoch, cfg=cfg, training=True)
        ds = repeated_aug.repeat_for_replicas(ds, cfg.repeated_augment, per_step, batch).enumerate()
        if fast_skip:  # indices (and so the augmentation seeds) are kept: enumerate came first
            ds = ds.skip(skip_batches * batch)

        batched = batched_finish(cfg)  # the steps after the resize run on the batch (finish_train_batch)
        transform = _train_transform(source, cfg, interpolation, max_image_pixels, batched)

        def example(index, pair):
            image_bytes, label = pair
            return dict(transform(image_bytes, _seed(seed, epoch, ctx.input_pipeline_id, index)), labels=label,
                        index=index)

        def failed(index, pair):
            element = {"images": tf.zeros([cfg.image_size, cfg.image_size, 3]), "labels": pair[1], "index": index}
            return dict(element, flip=False, factors=tf.ones([3]), order=tf.range(3)) if batched else element

        limit, chunk = max_consecutive_skips, 64
        per_host = source.train_files_per_host(ctx)
        if per_host:  # a whole pass of this host's files
            limit, chunk = (min(limit, per_host) if limit > 0 else 0), min(chunk, per_host)
        ds = _count_skips(_decode_chunks(ds, example, failed, chunk), limit,
                          start=skip_batches * batch if fast_skip else 0)
        if fast_skip:
            ds = ds.batch(batch, drop_remainder=True).enumerate(start=skip_batches).take(total - skip_batches)
        else:
            ds = ds.batch(batch, drop_remainder=True).enumerate().take(total).skip(skip_batches)

        def finish(batch_index, b):
            b = finish_train_batch(b, cfg) if batched else dict(b)
            targets = targets_of(b["labels"])
            if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0:
                b["images"], targets = mix_batch(b["images"], targets, _seed(seed, epoch, ctx.input_pipeline_id,
                                                                           batch_index, 99), cfg)
            b["targets"] = targets
            return b

        ds = ds.map(finish, num_parallel_calls=AUTOTUNE, deterministic=True)
        return ds.prefetch(AUTOTUNE).with_options(_options(cfg))

    return dataset_fn


def eval_steps(source: Source, cfg: DataConfig) -> int:
    """Global eval steps covering the whole validation split (the last one padded)."""
    return max(1, math.ceil(source.eval_examples / cfg.global_batch_size))


def make_eval_dataset_fn(source: Source, cfg: DataConfig, *, interpolation: str,
                         max_image_pixels: int = MAX_IMAGE_PIXELS
                         ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """The validation dataset function: every host yields ``eval_steps`` steps; padding has weight 0.

    A file that cannot be decoded (or exceeds ``max_image_pixels``) takes a padding slot with
    ``skipped`` 1, wherever it is in the list.
    """
    interpolation = interpolation or "bilinear"
    steps = eval_steps(source, cfg)

    @_without_autograph
    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = ctx.get_per_replica_batch_size(cfg.global_batch_size)
        count = steps * local_batches_per_step(ctx) * batch
        pad = {"images": tf.zeros([cfg.image_size, cfg.image_size, 3]), "labels": tf.constant(0, tf.int64),
               "weights": tf.constant(0.0), "skipped": tf.constant(0, tf.int32)}
        n = min(count, source.eval_examples)
        held = source.in_memory("val", ctx, cfg, seed=1, count=min(n, 256))
        if held is not None:  # ready model inputs, repeated (synthetic: no decoding)
            ds = tf.data.Dataset.from_tensor_slices({"images": held[0], "labels": held[1]}).repeat().take(n)
            ds = ds.map(lambda e: dict(e, weights=tf.constant(1.0), skipped=tf.constant(0, tf.int32)))
        else:
            ds = source.encoded("val", ctx, seed=0, epoch=0, cfg=cfg, training=False).enumerate()

            def example(index, pair):
                image = decode_full(checked(source.read(pair[0]), max_image_pixels))
                image = eval_transform(image, cfg.image_size, cfg.crop_fraction, interpolation)
                return {"images": image, "labels": pair[1], "weights": tf.constant(1.0),
                        "skipped": tf.constant(0, tf.int32)}

            ds = _decode_each(ds, example, lambda index, pair: dict(pad, skipped=tf.constant(1, tf.int32)))
            ds = ds.map(_first)
        ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat()).take(count)
        return ds.batch(batch, drop_remainder=True).prefetch(AUTOTUNE).with_options(_options(cfg))

    return dataset_fn


def input_pipeline_throughput(source: Source, cfg: DataConfig, *, num_batches: int, threads: int,
                              interpolation: str = "bilinear") -> float:
    """Images/s of the train pipeline on one host with a private thread pool of ``threads``."""
    import time

    fn = make_train_dataset_fn(source, cfg, seed=0, epoch=0, steps_per_epoch=num_batches + 2, skip_steps=0,
                               label_smoothing=0.0, interpolation=interpolation)
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    ds = fn(ctx).with_options(options)
    it = iter(ds)
    next(it)  # warm-up (graph building, file open)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    return num_batches * cfg.global_batch_size / (time.perf_counter() - start)
