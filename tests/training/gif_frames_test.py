"""GIF pixel counting before decoding: every frame counts (the decoder decodes them all), hostile files end fast."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest
import tensorflow as tf

from pf_keras_training import data, recipes

CTX = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1)


# ---------------------------------------------------------------- GIF writing, block by block


def _sub_blocks(payload: bytes, size: int = 255) -> bytes:
    """``payload`` as data sub-blocks of ``size`` bytes, then the 0 terminator."""
    chunks = [payload[i:i + size] for i in range(0, len(payload), size)]
    return b"".join(bytes([len(c)]) + c for c in chunks) + b"\0"


def _read_sub_blocks(gif: bytes, pos: int) -> tuple[int, bytes]:
    payload = b""
    while gif[pos]:
        payload += gif[pos + 1:pos + 1 + gif[pos]]
        pos += 1 + gif[pos]
    return pos + 1, payload


def _table_bits(table: bytes | None) -> int:
    return 0 if table is None else 0x80 | (len(table) // 3).bit_length() - 2


def _lzw(indices: np.ndarray) -> tuple[int, bytes]:
    """(LZW minimum code size, LZW data) of a 2-D array of colour indices, as PIL encodes them."""
    from PIL import Image

    image = Image.fromarray(np.asarray(indices, np.uint8), "P")
    image.putpalette(list(range(256)) * 3)
    buf = io.BytesIO()
    image.save(buf, "GIF", optimize=False, interlace=False)  # the indices as given, rows in order
    gif = buf.getvalue()
    pos = 13 + (3 << (gif[10] % 8 + 1) if gif[10] & 0x80 else 0)
    while gif[pos] == 0x21:
        pos, _ = _read_sub_blocks(gif, pos + 2)
    assert gif[pos] == 0x2C
    pos += 10 + (3 << (gif[pos + 9] % 8 + 1) if gif[pos + 9] & 0x80 else 0)
    return gif[pos], _read_sub_blocks(gif, pos + 1)[1]


def _image(indices: np.ndarray | None, left: int = 0, top: int = 0, local: bytes | None = None, size: int = 255,
           lzw: tuple[tuple[int, int], int, bytes] | None = None) -> bytes:
    """An image block: descriptor, optional local colour table, LZW data in sub-blocks of ``size`` bytes
    (of ``indices``, or ``lzw``: (shape, code size, data) of an image encoded before)."""
    (h, w), code, payload = lzw or (np.shape(indices), *_lzw(indices))
    return (b"\x2c" + struct.pack("<HHHHB", left, top, w, h, _table_bits(local)) + (local or b"") + bytes([code])
            + _sub_blocks(payload, size))


def _extension(label: int, payload: bytes, size: int = 255) -> bytes:
    return b"\x21" + bytes([label]) + _sub_blocks(payload, size)


def _control(delay: int = 5) -> bytes:
    """A graphics control extension."""
    return _extension(0xF9, struct.pack("<BHB", 0, delay, 0))


def _netscape_loop() -> bytes:
    """The application extension of looping animations: a block of 11 bytes, then one of 3."""
    return b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"


def _palette(seed: int, colours: int = 256) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, (colours, 3), np.uint8).tobytes()


def _gif(width: int, height: int, blocks: list[bytes], palette: bytes | None = None, trailer: bool = True) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, _table_bits(palette), 0, 0) + (palette or b"")
            + b"".join(blocks) + (b"\x3b" if trailer else b""))


def _indices(seed: int, h: int, w: int, colours: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, colours, (h, w), np.uint8)


def _pil_animation(frames: int, h: int, w: int) -> bytes:
    """An animation written by PIL (a global colour table, a NETSCAPE loop, a control block per frame, local
    colour tables after the first) whose frames differ everywhere, so that PIL neither merges nor crops them."""
    from PIL import Image

    images = [Image.fromarray(np.full((h, w, 3), (40 * i, 255 - 40 * i, 90), np.uint8)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], loop=0, duration=40)
    return buf.getvalue()


def _pixels(gif: bytes) -> int:
    return int(data.header_pixels(tf.constant(gif)))


def _decoded(gif: bytes, pil: bool = True) -> tuple[int, int, int] | None:
    """(frames, height, width) that TensorFlow decodes, None if it fails; PIL agrees on the frame count
    (``pil``: PIL fails on some truncated files)."""
    from PIL import Image

    try:
        frames, h, w, _ = tf.io.decode_gif(tf.constant(gif)).shape
    except tf.errors.InvalidArgumentError:
        return None
    assert not pil or Image.open(io.BytesIO(gif)).n_frames == frames
    return frames, h, w


# ---------------------------------------------------------------- counts


class TestCounts:
    def test_a_single_frame_counts_its_pixels(self):
        for h, w in ((37, 53), (1, 1), (300, 7)):
            gif = _gif(w, h, [_image(_indices(h, h, w))], _palette(0))
            assert _decoded(gif) == (1, h, w)
            assert _pixels(gif) == h * w

    def test_an_animation_counts_every_frame(self):
        gif = _pil_animation(3, 20, 30)
        assert _decoded(gif) == (3, 20, 30)
        assert _pixels(gif) == 3 * 20 * 30  # the screen alone (600) would pass a 1000-pixel limit
        assert data.decode_full(data.checked(tf.constant(gif), 3 * 600)).shape == (20, 30, 3)
        with pytest.raises(tf.errors.InvalidArgumentError, match="too large or of unknown format"):
            data.checked(tf.constant(gif), 3 * 600 - 1)

    def test_colour_tables_and_extensions(self):
        h, w = 24, 32
        comment = bytes(range(256)) * 3  # 768 bytes: sub-blocks of 255, 255, 255, 3
        blocks = [_netscape_loop(), _extension(0xFE, comment),
                  _control(), _image(_indices(1, h, w)),
                  _control(), _extension(0xFE, b"frame 2"), _image(_indices(2, h, w, 4), local=_palette(2, 4)),
                  _extension(0x01, bytes(12) + b"plain text", size=7),  # a plain text extension
                  _control(), _image(_indices(3, h, w, 128), local=_palette(3, 128), size=17),
                  _extension(0xFF, b"PFKERAS_1.0" + bytes(300), size=1)]
        gif = _gif(w, h, blocks, _palette(0))
        assert _decoded(gif) == (3, h, w)
        assert _pixels(gif) == 3 * h * w
        decoded = tf.io.decode_gif(tf.constant(gif)).numpy()
        local = np.frombuffer(_palette(2, 4), np.uint8).reshape(4, 3)
        np.testing.assert_array_equal(decoded[1], local[_indices(2, h, w, 4)])  # the local table was used
        # a 2-colour global table (6 bytes) and no global table walk the same frames
        small = _gif(w, h, blocks[:3] + [_image(_indices(1, h, w, 2))], _palette(0, 2))
        assert (_decoded(small), _pixels(small)) == ((1, h, w), h * w)
        bare = _gif(w, h, [_image(_indices(2, h, w, 4), local=_palette(2, 4))])
        assert (_decoded(bare), _pixels(bare)) == ((1, h, w), h * w)
        black = bytes(3) + _palette(4, 8)[3:]  # a local table that would read as an end of blocks, then a 0 block
        blocks = [_image(_indices(i, h, w, 8), local=black) for i in range(2)]
        assert (_decoded(_gif(w, h, blocks)), _pixels(_gif(w, h, blocks))) == ((2, h, w), 2 * h * w)

    def test_frames_beyond_the_screen_and_delta_frames(self):
        # the decoder's canvas is its largest frame, whatever the logical screen declares
        big = _gif(1, 1, [_image(_indices(0, 200, 300))], _palette(0))
        assert _decoded(big) == (1, 200, 300)
        assert _pixels(big) == 200 * 300
        tall_and_wide = _gif(1, 1, [_image(_indices(0, 1, 300)), _image(_indices(1, 200, 1))], _palette(0))
        assert _decoded(tall_and_wide) == (2, 200, 300)
        assert _pixels(tall_and_wide) == 200 * 300  # one 200x300 canvas, 500 frame pixels
        # an animation of small delta frames decodes one screen plus the deltas, not frames x screen
        deltas = [_image(_indices(i, 10, 12), left=3 * i, top=2 * i) for i in range(1, 9)]
        delta = _gif(64, 48, [_image(_indices(0, 48, 64))] + deltas, _palette(0))
        assert _decoded(delta) == (9, 48, 64)
        assert _pixels(delta) == 48 * 64 + 8 * 10 * 12


# ---------------------------------------------------------------- truncated and malformed files


class TestDamagedFiles:
    def test_a_truncated_gif_counts_the_frames_it_reached(self):
        h, w = 12, 16
        blocks = [_netscape_loop()] + [_control() + _image(_indices(i, h, w, 16), size=40) for i in range(3)]
        gif = _gif(w, h, blocks, _palette(0, 16))
        ends = range(1, len(gif) + 1)
        counted = [int(p) for p in tf.data.Dataset.from_tensor_slices([gif[:e] for e in ends]).map(data.header_pixels)]
        assert counted[-1] == 3 * h * w and counted[-2] == 3 * h * w  # without the trailer
        descriptor = b"\x2c\x00\x00\x00\x00" + struct.pack("<HH", w, h)
        starts = [i for i in range(len(gif)) if gif.startswith(descriptor, i)]
        assert len(starts) == 3
        decoded_frames = set()
        for end, pixels in zip(ends, counted, strict=True):
            decoded = _decoded(gif[:end], pil=False)
            if decoded is not None:  # never fewer pixels than TensorFlow decodes
                decoded_frames.add(decoded[0])
                assert pixels >= decoded[0] * h * w, end
            whole = sum(s + len(descriptor) <= end for s in starts)  # descriptors up to the height
            begun = sum(s < end for s in starts)
            assert (pixels == -1 and whole == 0) or whole * h * w <= pixels <= begun * h * w, end
        assert decoded_frames == {1, 2, 3}  # the decoder keeps the frames of a truncated file

    def test_malformed_gifs_are_refused(self):
        frame = _image(_indices(0, 8, 8))
        palette = _palette(0)
        for gif in (
            _gif(8, 8, [b"\x99", frame], palette),  # an unknown block byte
            _gif(8, 8, [frame, b"\0\0"], palette, trailer=False),  # trailing garbage: the decoder would ignore it
            _gif(8, 8, [_netscape_loop(), _control()], palette),  # no frame
            _gif(8, 8, [], palette),
            _gif(8, 8, [frame], palette)[:600],  # the global colour table runs past the end
            b"GIF89a",
            b"GIF8",
        ):
            assert _pixels(gif) == -1, gif[:40]
        assert _pixels(_gif(8, 8, [frame], palette)) == 64

    def test_an_extension_without_data_is_refused(self):
        # giflib (DGifSlurp) reads the byte after an empty extension as a sub-block size: here it skips the
        # trailer and 59 bytes and decodes the two frames behind them, which PIL (and a walk by the spec) never
        # reaches; most such files fail to decode
        a, b, c = (_image(_indices(i, 8, 8)) for i in range(3))
        hidden = _gif(8, 8, [a, b"\x21\xfe\x00", b"\x3b" + bytes(range(1, 60)) + b"\0", b, c], _palette(0))
        assert tf.io.decode_gif(tf.constant(hidden)).shape[0] == 3
        assert _pixels(hidden) == -1
        for blocks in ([a, b"\x21\xfe\x00", b], [a, b"\x21\xfe\x00\x00", b], [b"\x21\xf9\x00", a]):
            assert _pixels(_gif(8, 8, blocks, _palette(0))) == -1
        assert _pixels(_gif(8, 8, [a, b"\x21\xfe\x01x\x00", b], _palette(0))) == 2 * 64

    def test_other_formats_keep_their_header_counts(self):
        from PIL import Image

        for fmt in ("PNG", "JPEG", "BMP", "WEBP"):
            buf = io.BytesIO()
            Image.fromarray(np.zeros((37, 53, 3), np.uint8)).save(buf, fmt)
            assert _pixels(buf.getvalue()) == 37 * 53, fmt


# ---------------------------------------------------------------- hostile files


class TestHostileFiles:
    def test_a_frames_bomb_is_skipped_before_decoding(self, tmp_path, images):
        # 30 frames of 4000x4000 in ~390 KB: decoding them all takes 480 MB and ~4 s; the screen is under the limit
        side = 4000
        frame = _image(None, lzw=((side, side), *_lzw(np.zeros((side, side), np.uint8))))
        bomb = _gif(side, side, [_netscape_loop()] + [_control() + frame] * 30, _palette(0, 2))
        assert len(bomb) < 500_000 and side * side < data.MAX_IMAGE_PIXELS
        assert _pixels(bomb) == 30 * side * side
        small = _gif(48, 40, [_netscape_loop()] + [_control() + _image(_indices(i, 40, 48)) for i in range(20)],
                     _palette(0))
        assert _decoded(small) == (20, 40, 48)
        root = tmp_path / "gifs"
        rng = np.random.default_rng(0)
        for split in ("train", "val"):
            folder = root / split / "a"
            folder.mkdir(parents=True)
            for i in range(3):
                (folder / f"good_{i}.JPEG").write_bytes(images.jpeg(rng.integers(0, 256, (40, 48, 3), np.uint8)))
            (folder / "bomb.gif").write_bytes(bomb)
            (folder / "small.gif").write_bytes(small)
        cfg = recipes.DataConfig(dataset=f"folder:{root}", global_batch_size=5, image_size=32)
        source = data.resolve_source(cfg)

        def used_and_skipped(limit: int) -> tuple[float, int]:
            fn = data.make_eval_dataset_fn(source, cfg, interpolation="bilinear", max_image_pixels=limit)
            batches = list(fn(CTX))
            return (sum(float(tf.reduce_sum(b["weights"])) for b in batches),
                    sum(int(tf.reduce_sum(b["skipped"])) for b in batches))

        assert used_and_skipped(data.MAX_IMAGE_PIXELS) == (4.0, 1)  # the bomb is skipped, the small animation used
        assert used_and_skipped(20 * 40 * 48 - 1) == (3.0, 2)  # 20 frames of 40x48: one frame would pass

    def test_one_byte_sub_blocks_end_within_the_step_cap(self):
        # a comment of n bytes in 1-byte sub-blocks: n + 2 steps of the walk; the decoder skips it
        frame = _image(_indices(0, 4, 4))

        def padded(n: int) -> bytes:
            return _gif(4, 4, [_extension(0xFE, b"x" * n, size=1), frame], _palette(0))

        fits = padded(data.GIF_MAX_STEPS - 8)  # + 4 steps (the frame, the trailer): 2 to spare
        assert _decoded(fits) == (1, 4, 4) and _pixels(fits) == 16
        hostile = padded(2 * data.GIF_MAX_STEPS)  # 260 KB
        assert _decoded(hostile) == (1, 4, 4)
        start = time.perf_counter()
        assert [int(p) for p in tf.data.Dataset.from_tensors(hostile).map(data.header_pixels)] == [-1]
        assert time.perf_counter() - start < 10  # refused after GIF_MAX_STEPS steps: ~1 s on a loaded core

    def test_runs_of_full_sub_blocks_are_walked_exactly(self):
        # encoders write 255-byte sub-blocks, which the walk skips up to 65 at a time
        h, w = 160, 200  # random indices: ~36 KB of image data each
        frames = [_image(_indices(i, h, w)) for i in range(2)]
        for size in (1, 255 * 64, 255 * 65, 255 * 65 + 1, 255 * 66 - 1, 255 * 200):  # 0xff data
            gif = _gif(w, h, [_extension(0xFE, b"\xff" * size)] + frames, _palette(0))
            assert _decoded(gif) == (2, h, w) and _pixels(gif) == 2 * h * w, size
        # a run ends at the first sub-block that is not full, whatever the bytes 256 further on
        sizes = [255, 254] + [255] * 70 + [3]
        comment = b"\x21\xfe" + b"".join(bytes([k]) + b"\xff" * k for k in sizes) + b"\0"
        gif = _gif(w, h, [comment] + frames, _palette(0))
        assert _decoded(gif) == (2, h, w) and _pixels(gif) == 2 * h * w
        gif = _gif(w, h, frames, _palette(0))
        second = 13 + 768 + len(frames[0])  # where the second image descriptor starts
        ends = sorted({e for k in range(13 + 768 + 256, len(gif), 256 * 7) for e in (k - 1, k, k + 1)}
                      | {second + 7, second + 9, len(gif) - 1})  # without the height / with the whole descriptor
        counted = [int(p) for p in tf.data.Dataset.from_tensor_slices([gif[:e] for e in ends]).map(data.header_pixels)]
        decoded_frames = set()
        for end, pixels in zip(ends, counted, strict=True):
            assert pixels == (2 if end >= second + 9 else 1) * h * w, end
            decoded = _decoded(gif[:end], pil=False)
            if decoded is not None:
                decoded_frames.add(decoded[0])
                assert pixels >= decoded[0] * h * w, end
        assert decoded_frames == {1, 2}

    def test_image_data_in_one_byte_sub_blocks_is_walked_exactly(self):
        h, w = 40, 48
        gif = _gif(w, h, [_image(_indices(0, h, w), size=1), _image(_indices(1, h, w), size=1)], _palette(0))
        assert _decoded(gif) == (2, h, w)
        assert _pixels(gif) == 2 * h * w
