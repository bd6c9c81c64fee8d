"""Input pipeline: bad files, CMYK/PNG decoding, determinism and resume skipping, augmentations."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
import tiny_tfds
from hostile_images import scan_bomb_jpeg

from pf_keras_training import data, recipes

CTX = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1)


def _image(seed: int, h: int = 48, w: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, h * w * 3).reshape(h, w, 3)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def bad_folder(tmp_path, images):
    """A folder dataset whose train and val splits hold a truncated JPEG, an empty file, a PNG
    named .JPEG and a CMYK JPEG among normal JPEGs."""
    root = tmp_path / "bad"
    for split in ("train", "val"):
        for label, name in enumerate(("a", "b")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(6):
                (folder / f"good_{i}.JPEG").write_bytes(images.jpeg(_image(100 * label + i)))
        folder = root / split / "a"
        (folder / "truncated.JPEG").write_bytes(images.truncated_jpeg(_image(7)))
        (folder / "empty.JPEG").write_bytes(b"")
        (folder / "png.JPEG").write_bytes(images.png(_image(8)))
        (folder / "cmyk.JPEG").write_bytes(images.jpeg(_image(9), mode="CMYK"))
    return str(root)


class TestDecoding:
    def test_cmyk_and_png_decode_to_rgb(self, images):
        import io

        from PIL import Image

        array = _image(3)
        cmyk = images.jpeg(array, mode="CMYK")
        expected = np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB"), np.float32)
        decoded = data.decode_full(tf.constant(cmyk)).numpy().astype(np.float32)
        assert decoded.shape == array.shape
        # TensorFlow's CMYK -> RGB truncates where PIL rounds: at most one level
        assert np.abs(decoded - expected).max() <= 1.0
        png = data.decode_full(tf.constant(images.png(array))).numpy()
        np.testing.assert_array_equal(png, array)
        crop = data.decode_random_crop(tf.constant(images.png(array)), tf.constant([1, 2], tf.int64), (0.08, 1.0),
                                       (0.75, 4 / 3))
        assert crop.shape[-1] == 3 and crop.shape[0] <= array.shape[0]

    @staticmethod
    def _jpegs():
        """JPEGs as encoders write them: chroma 4:2:0, 4:2:2 and 4:4:4, progressive, optimised, greyscale."""
        import io

        from PIL import Image

        rng = np.random.default_rng(11)
        out = []
        for i, (mode, kwargs) in enumerate([("RGB", dict(quality=90)), ("RGB", dict(quality=75, subsampling=1)),
                                            ("RGB", dict(quality=95, subsampling=0)),
                                            ("RGB", dict(quality=85, progressive=True)),
                                            ("RGB", dict(quality=60, optimize=True, subsampling=2)),
                                            ("L", dict(quality=90))]):
            h, w = int(rng.integers(40, 200)), int(rng.integers(40, 200))
            coarse = rng.integers(0, 256, (h // 6, w // 6, 3), dtype=np.uint8)
            photo = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))
            noisy = np.clip(photo + rng.normal(0, 12, photo.shape), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(noisy if i % 2 else photo).convert(mode).save(buf, "JPEG", **kwargs)
            out.append(buf.getvalue())
        return out

    def test_jpegs_decode_to_pils_pixels(self):
        import io

        from PIL import Image

        for jpeg in self._jpegs():
            expected = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
            np.testing.assert_array_equal(data.decode_full(tf.constant(jpeg)).numpy(), expected)
            # TensorFlow's default IDCT would not: the pipeline must not use it
            default = tf.io.decode_jpeg(jpeg, channels=3).numpy()
            assert not np.array_equal(default, expected)

    def test_partial_decode_equals_pils_crop(self):
        # libjpeg-turbo's cropped decode upsamples chroma at the crop's edge columns as at the image's edge; the
        # margin of context removes that. Random windows, and windows on 16-pixel (MCU) boundaries.
        import io

        from PIL import Image

        rng = np.random.default_rng(12)
        window_fn = tf.function(data.decode_jpeg_window)
        for jpeg in self._jpegs():
            full = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
            h, w = full.shape[:2]
            windows = [(0, 0, h, w), (16, 16, h - 16, w - 32), (0, 16, h // 2, 16), (h - 1, w - 1, 1, 1)]
            for _ in range(12):
                ch, cw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
                windows.append((int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw))
            for y, x, ch, cw in windows:
                crop = window_fn(tf.constant(jpeg), tf.constant([y, x, ch, cw], tf.int32)).numpy()
                np.testing.assert_array_equal(crop, full[y:y + ch, x:x + cw], err_msg=str((y, x, ch, cw)))
        # the train transform's crop is that window of the sampled crop
        jpeg = tf.constant(self._jpegs()[0])
        seed = tf.constant([5, 6], tf.int64)
        y, x, ch, cw = data.sample_crop(tf.image.extract_jpeg_shape(jpeg)[:2], seed, (0.08, 1.0),
                                        (0.75, 4 / 3)).numpy()
        full = np.asarray(Image.open(io.BytesIO(jpeg.numpy())).convert("RGB"))
        partial = data.decode_random_crop(jpeg, seed, (0.08, 1.0), (0.75, 4 / 3)).numpy()
        np.testing.assert_array_equal(partial, full[y:y + ch, x:x + cw])

    def test_indexed_bmp_decodes_to_its_palette_colours(self):
        # TensorFlow's BMP decoder returns an 8-bit BMP's palette indices as grey levels
        import io

        from PIL import Image

        rng = np.random.default_rng(13)
        photo = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(photo).convert("P").save(buf, "BMP")
        indexed = buf.getvalue()
        # a hand-written one: 4 table entries (biClrUsed = 4), indices up to 15 (past the table: black in PIL)
        h, w = 5, 6
        index = rng.integers(0, 16, (h, w), dtype=np.uint8)
        table = b"".join(bytes([b, g, r, 0]) for r, g, b in rng.integers(0, 256, (4, 3)).tolist())
        rows = b"".join(bytes(index[y]) + b"\0" * (-w % 4) for y in range(h - 1, -1, -1))
        offset = 14 + 40 + len(table)
        short = (b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset)
                 + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 0, len(rows), 2835, 2835, 4, 0) + table + rows)
        for bmp in (indexed, short):
            expected = np.asarray(Image.open(io.BytesIO(bmp)).convert("RGB"))
            assert len(np.unique(expected.reshape(-1, 3), axis=0)) > 3  # colours, not greys
            np.testing.assert_array_equal(data.decode_full(tf.constant(bmp)).numpy(), expected)
            crop = data.decode_random_crop(tf.constant(bmp), tf.constant([1, 2], tf.int64), (1.0, 1.0), (1.0, 1.0))
            y, x = (np.array(expected.shape[:2]) - crop.shape[:2]) // 2
            np.testing.assert_array_equal(crop.numpy(), expected[y:y + crop.shape[0], x:x + crop.shape[1]])
        assert (np.asarray(Image.open(io.BytesIO(short)).convert("RGB"))[index >= 4] == 0).all()

    def test_broken_indexed_bmps_fail_as_bad_files(self):
        # a colour table past the file's end: an error naming no bytes (substr's own error quoted the file, and
        # eagerly that was a UnicodeDecodeError past export's except clause), so the file is skipped
        import io

        from PIL import Image

        from pf_keras_training import sources

        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(15).integers(0, 256, (5, 6, 3), np.uint8)).convert("P").save(buf, "BMP")
        good = bytearray(buf.getvalue())
        past_end = bytearray(good)
        past_end[14:18] = struct.pack("<I", 0xFFFFFFF0)  # DIB header size
        for bad in (bytes(past_end), bytes(good[:30]), bytes(good[:80])):
            with pytest.raises(tf.errors.InvalidArgumentError):
                data.decode_full(tf.constant(bad))
            assert sources._export_pixels(bad, 8) is None

    def test_webp_with_alpha_decodes_and_animations_are_refused_cleanly(self):
        # TensorFlow decodes a WebP with alpha only as 4 channels (asked for 3 it failed: the file was skipped);
        # an animated WebP asked for 0 channels corrupts TensorFlow's heap, asked for 3 it is refused cleanly
        import io

        from PIL import Image

        rng = np.random.default_rng(14)
        rgba = rng.integers(0, 256, (21, 17, 4), dtype=np.uint8)
        for kwargs in (dict(lossless=True), dict(quality=80)):  # VP8L with its alpha bit; VP8X + ALPH + VP8
            buf = io.BytesIO()
            Image.fromarray(rgba).save(buf, "WEBP", **kwargs)
            expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            np.testing.assert_array_equal(data.decode_full(tf.constant(buf.getvalue())).numpy(), expected)
        for mode in ("RGB", "RGBA"):
            frames = [Image.fromarray(rng.integers(0, 256, (9, 8, 4), dtype=np.uint8)).convert(mode) for _ in range(3)]
            buf = io.BytesIO()
            frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
            for _ in range(3):
                with pytest.raises(tf.errors.InvalidArgumentError):
                    data.decode_full(tf.constant(buf.getvalue()))
            with pytest.raises(tf.errors.InvalidArgumentError):
                data.decode_random_crop(tf.constant(buf.getvalue()), tf.constant([1, 2], tf.int64), (0.5, 1.0),
                                        (0.75, 4 / 3))

    def test_bad_files_are_skipped_and_counted(self, bad_folder):
        cfg = recipes.DataConfig(dataset=f"folder:{bad_folder}", global_batch_size=4, image_size=32)
        source = data.resolve_source(cfg)
        assert source.eval_examples == 16
        fn = data.make_eval_dataset_fn(source, cfg, interpolation="bilinear")
        batches = list(fn(CTX))
        assert len(batches) == data.eval_steps(source, cfg) == 4
        weights = sum(float(tf.reduce_sum(b["weights"])) for b in batches)
        skipped = sum(int(tf.reduce_sum(b["skipped"])) for b in batches)
        assert (weights, skipped) == (14.0, 2)  # the PNG and the CMYK file are used, 2 files dropped
        for b in batches:
            assert np.isfinite(b["images"].numpy()).all()
        def train(skip_steps):
            fn = data.make_train_dataset_fn(source, cfg, seed=0, epoch=0, steps_per_epoch=8, skip_steps=skip_steps,
                                            label_smoothing=0.1, interpolation="bilinear")
            return list(fn(CTX))

        batches = train(0)
        assert len(batches) == 8
        assert sum(int(tf.reduce_sum(b["skipped"])) for b in batches) >= 2
        np.testing.assert_allclose(batches[0]["targets"].numpy().sum(-1), 1.0, rtol=1e-6)
        for a, b in zip(batches[5:], train(5), strict=True):  # resuming past dropped files is exact
            np.testing.assert_array_equal(a["images"].numpy(), b["images"].numpy())
            np.testing.assert_array_equal(a["skipped"].numpy(), b["skipped"].numpy())


class TestDeterminism:
    def _cfg(self, shapes_dir, **kw) -> recipes.DataConfig:
        return recipes.DataConfig(dataset=f"folder:{shapes_dir}", global_batch_size=8, image_size=32,
                                  color_jitter=0.4, randaugment_magnitude=9, randaugment_magnitude_std=0.5,
                                  mixup_alpha=0.8, cutmix_alpha=1.0, random_erasing=0.25, **kw)

    def test_stream_is_a_function_of_seed_epoch_and_step(self, shapes_dir):
        cfg = self._cfg(shapes_dir)
        source = data.resolve_source(cfg)

        def stream(epoch, skip, seed=0, clean_prefix=False):
            fn = data.make_train_dataset_fn(source, cfg, seed=seed, epoch=epoch, steps_per_epoch=5, skip_steps=skip,
                                            label_smoothing=0.1, interpolation="bilinear", clean_prefix=clean_prefix)
            return [b for b in fn(CTX)]

        full = stream(0, 0)
        again = stream(0, 0)
        assert len(full) == 5
        for a, b in zip(full, again, strict=True):
            np.testing.assert_array_equal(a["images"].numpy(), b["images"].numpy())
        for clean_prefix in (False, True):  # decode-and-discard, or skip files before decoding
            resumed = stream(0, 3, clean_prefix=clean_prefix)
            assert len(resumed) == 2
            for a, b in zip(full[3:], resumed, strict=True):
                np.testing.assert_array_equal(a["images"].numpy(), b["images"].numpy())
                np.testing.assert_array_equal(a["targets"].numpy(), b["targets"].numpy())
        other_epoch = stream(1, 0)
        assert not np.array_equal(full[0]["labels"].numpy(), other_epoch[0]["labels"].numpy())

    def test_every_epoch_calls_the_transform_traced_for_the_first(self, shapes_dir):
        cfg = recipes.DataConfig(dataset=f"folder:{shapes_dir}", global_batch_size=4, image_size=24)
        source = data.resolve_source(cfg)
        streams = []
        for epoch in range(2):
            fn = data.make_train_dataset_fn(source, cfg, seed=0, epoch=epoch, steps_per_epoch=2, skip_steps=0,
                                            label_smoothing=0.0, interpolation="bilinear")
            streams.append([b["images"].numpy() for b in fn(CTX)])
        transform = data._train_transform(source, cfg, "bilinear", data.MAX_IMAGE_PIXELS, data.batched_finish(cfg))
        assert transform.experimental_get_tracing_count() == 1  # traced by epoch 0's pipeline only
        assert not np.array_equal(streams[0][0], streams[1][0])  # and still seeded per epoch

    def test_hosts_get_disjoint_shards(self, shapes_dir):
        cfg = recipes.DataConfig(dataset=f"folder:{shapes_dir}", global_batch_size=4, image_size=32)
        source = data.resolve_source(cfg)
        fn = data.make_eval_dataset_fn(source, cfg, interpolation="bilinear")
        seen = []
        for host in range(2):
            ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=host, num_replicas_in_sync=2)
            batches = list(fn(ctx))
            assert len(batches) == data.eval_steps(source, cfg)  # every host runs the same number of steps
            seen.append(sum(float(tf.reduce_sum(b["weights"])) for b in batches))
        assert sum(seen) == source.eval_examples


class TestAugmentations:
    def test_rand_augment_differs_per_image(self):
        image = tf.constant(_image(1, 32, 32), tf.float32)  # PIL's 0..255 scale, as timm's ops see it
        outs = [data.rand_augment(image, tf.constant([i, 0], tf.int64), magnitude=9, num_ops=2, prob=1.0).numpy()
                for i in range(8)]
        distinct = {np.round(o, 3).tobytes() for o in outs}
        assert len(distinct) >= 6
        for o in outs:
            assert o.shape == (32, 32, 3) and np.isfinite(o).all() and o.min() >= 0 and o.max() <= 255

    def test_mix_batch_keeps_targets_normalised(self):
        cfg = recipes.DataConfig(mixup_alpha=0.8, cutmix_alpha=1.0)
        images = tf.random.stateless_normal([6, 16, 16, 3], [1, 2])
        targets = tf.one_hot([0, 1, 2, 3, 4, 5], 10)
        for i in range(4):
            mixed, t = data.mix_batch(images, targets, tf.constant([i, 9], tf.int64), cfg)
            assert mixed.shape == images.shape
            np.testing.assert_allclose(t.numpy().sum(-1), 1.0, rtol=1e-5)

    def test_eval_transform_size(self):
        image = tf.constant(_image(2, 300, 400))
        out = data.eval_transform(image, 224, 0.875, "bicubic")
        assert out.shape == (224, 224, 3)


PfTinyImages = tiny_tfds.builder(
    "PfTinyImages", num_classes=3, encoding="jpeg", sizes={"train": 24, "validation": 9},
    image=lambda split, i: np.random.default_rng([split, i]).integers(0, 255, (36, 40, 3), dtype=np.uint8))


class TestSources:
    def test_tfds_source_partial_decode_resume_and_eval(self, tmp_path):
        PfTinyImages(data_dir=str(tmp_path)).download_and_prepare()
        cfg = recipes.DataConfig(dataset="pf_tiny_images", data_dir=str(tmp_path), global_batch_size=4,
                                 image_size=32, shuffle_buffer=16)
        source = data.resolve_source(cfg)
        assert (source.kind, source.num_classes, source.train_examples, source.eval_examples) == ("tfds", 3, 24, 9)

        def train(skip):
            return list(data.make_train_dataset_fn(source, cfg, seed=0, epoch=0, steps_per_epoch=6, skip_steps=skip,
                                                   label_smoothing=0.0, interpolation="bilinear")(CTX))

        full, resumed = train(0), train(2)
        assert len(full) == 6 and len(resumed) == 4
        for a, b in zip(full[2:], resumed, strict=True):
            np.testing.assert_array_equal(a["images"].numpy(), b["images"].numpy())
        batches = list(data.make_eval_dataset_fn(source, cfg, interpolation="bilinear")(CTX))
        assert len(batches) == 3 and sum(float(tf.reduce_sum(b["weights"])) for b in batches) == 9.0

    def test_missing_tfds_dataset_explains_manual_download(self, tmp_path):
        cfg = recipes.DataConfig(dataset="imagenet2012", data_dir=str(tmp_path))
        with pytest.raises(ValueError, match=r"ILSVRC2012_img_train.tar.*downloads/manual.*tfds build imagenet2012"):
            data.resolve_source(cfg)

    def test_missing_folder(self, tmp_path):
        with pytest.raises(ValueError, match=r"train/<class>.*Received: dataset='folder:"):
            data.resolve_source(recipes.DataConfig(dataset=f"folder:{tmp_path}"))

    def test_builtin_is_generated(self, tmp_path, monkeypatch):
        monkeypatch.setenv("PF_KERAS_CACHE", str(tmp_path))
        from pf_keras_training import builtin_data

        root = builtin_data.generate(os.path.join(str(tmp_path), "b"), train_per_class=2, val_per_class=1)
        assert sorted(os.listdir(os.path.join(root, "train"))) == sorted(builtin_data.CLASSES)

    def test_a_full_disk_while_generating_builtin_is_one_error_and_leaves_nothing(self, small_disk):
        from pf_keras import fileio
        from pf_keras_training import builtin_data

        with pytest.raises(fileio.WriteError, match=rf"cannot write the builtin dataset under {small_disk} "
                                                     r"\(ENOSPC: No space left on device\)"):
            builtin_data.generate(os.path.join(str(small_disk), "b"))
        assert os.listdir(small_disk) == []  # no half-written temporary folder


    def test_a_cache_that_cannot_be_created_names_the_variable(self, tmp_path):
        from pf_keras import fileio
        from pf_keras_training import builtin_data

        (tmp_path / "afile").write_text("a file where the cache folder would go")
        with pytest.raises(fileio.WriteError, match=r"cannot write the builtin dataset under .*afile/cache "
                                                     r"\((EEXIST|ENOTDIR): .*point PF_KERAS_CACHE elsewhere"):
            builtin_data.generate(str(tmp_path / "afile" / "cache" / "builtin"))

# ---------------------------------------------------------------- limits: pixels, skips, empty splits


def _huge_png(side: int = 20000) -> bytes:
    """A valid greyscale PNG of side x side pixels (~0.4 MB: all zeros compress ~1000:1)."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    deflate = zlib.compressobj(1)
    row = b"\0" * (side + 1)
    body = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _encoded(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kwargs)
    return buf.getvalue()


class TestLimits:
    @pytest.mark.parametrize("fmt, kwargs", [("JPEG", {}), ("PNG", {}), ("GIF", {}), ("BMP", {}),
                                             ("WEBP", {"lossless": False}), ("WEBP", {"lossless": True}),
                                             ("WEBP", {"exif": b"Exif\0\0MM\0*\0\0\0\x08\0\0"})],
                             ids=["jpeg", "png", "gif", "bmp", "webp_lossy", "webp_lossless", "webp_extended"])
    def test_header_pixels(self, fmt, kwargs):
        encoded = _encoded(_image(5, 37, 53), fmt, **kwargs)
        assert int(data.header_pixels(tf.constant(encoded))) == 37 * 53
        decoded = data.decode_full(data.checked(tf.constant(encoded), 37 * 53))
        assert decoded.shape == (37, 53, 3)
        with pytest.raises(tf.errors.InvalidArgumentError, match="too large or of unknown format"):
            data.checked(tf.constant(encoded), 37 * 53 - 1)

    def test_a_jpeg_of_many_empty_scans_is_refused_before_decoding(self):
        # libjpeg decodes every scan over the whole image: 3,000 empty scans of 10 bytes each (a 30 KB file,
        # 9459x9459, under the pixel limit) took 20 s to decode, and the time grows with the file's size
        limit = data.MAX_JPEG_SCANS
        assert int(data.header_pixels(tf.constant(scan_bomb_jpeg(limit, 64)))) == 64 * 64
        assert data.decode_full(data.checked(tf.constant(scan_bomb_jpeg(limit, 64)), 10**6)).shape == (64, 64, 3)
        for scans, side in ((limit + 1, 64), (3000, 9459)):
            bomb = tf.constant(scan_bomb_jpeg(scans, side))
            assert int(data.header_pixels(bomb)) == -1
            with pytest.raises(tf.errors.InvalidArgumentError, match="too large or of unknown format"):
                data.checked(bomb, data.MAX_IMAGE_PIXELS)
        photo = _encoded(_image(3, 64, 48), "JPEG", progressive=True, optimize=True)  # Pillow's script
        assert int(data.header_pixels(tf.constant(photo))) == 64 * 48

    def test_a_bmp_declaring_a_core_header_counts_the_pixels_tensorflow_decodes(self):
        # TensorFlow reads a BMP's 32-bit width and height whatever the header size says; counting the 16-bit
        # sizes of a 12-byte core header gave 0 pixels, and such a file passed any pixel limit
        bmp = bytearray(_encoded(_image(2, 23, 37), "BMP"))
        bmp[14:18] = struct.pack("<I", 12)
        assert int(data.header_pixels(tf.constant(bytes(bmp)))) == 23 * 37
        assert data.decode_full(tf.constant(bytes(bmp))).shape == (23, 37, 3)
        with pytest.raises(tf.errors.InvalidArgumentError, match="too large or of unknown format"):
            data.checked(tf.constant(bytes(bmp)), 23 * 37 - 1)

    def test_unknown_format_and_short_files_are_refused(self):
        for raw in (b"", b"\x89PN", b"II*\0" + b"\0" * 40, b"RIFF\0\0\0\0WEBPXXXX" + b"\0" * 20):
            assert int(data.header_pixels(tf.constant(raw))) == -1

    def test_a_huge_png_is_skipped_before_decoding_within_bounded_memory(self, tmp_path, images):
        root = tmp_path / "huge"
        for split in ("train", "val"):
            folder = root / split / "a"
            folder.mkdir(parents=True)
            for i in range(3):
                (folder / f"good_{i}.JPEG").write_bytes(images.jpeg(_image(i)))
            (folder / "zz_huge.png").write_bytes(_huge_png())
        script = f"""
import resource, sys
import tensorflow as tf
from pf_keras_training import data, recipes
cfg = recipes.DataConfig(dataset="folder:{root}", global_batch_size=2, image_size=32)
source = data.resolve_source(cfg)
ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1)
batches = list(data.make_eval_dataset_fn(source, cfg, interpolation="bilinear")(ctx))
train = list(data.make_train_dataset_fn(source, cfg, seed=0, epoch=0, steps_per_epoch=3, skip_steps=0,
                                        label_smoothing=0.0, interpolation="bilinear")(ctx))
print(sum(float(tf.reduce_sum(b["weights"])) for b in batches), sum(int(tf.reduce_sum(b["skipped"])) for b in batches),
      sum(int(tf.reduce_sum(b["skipped"])) for b in train) > 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        weights, skipped, train_skipped, peak_kib = done.stdout.split()
        assert (float(weights), int(skipped), train_skipped) == (3.0, 1, "True")
        # TensorFlow alone peaks at ~0.9-1.5 GB here; decoding the PNG would add 1.2 GB (uint8) + 4.8 GB (float).
        assert int(peak_kib) < 2_500_000

    def test_fifos_devices_and_files_over_the_byte_limit_are_not_read(self, tmp_path, images, monkeypatch):
        from pf_keras_training import sources

        root = tmp_path / "special"
        small = images.jpeg(_image(0, 24, 24))
        big = images.png(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
        assert len(big) > 4 * len(small)
        for split in ("train", "val"):
            folder = root / split / "a"
            folder.mkdir(parents=True)
            for i in range(3):
                (folder / f"good_{i}.JPEG").write_bytes(images.jpeg(_image(i, 24, 24)))
            (folder / "big.png").write_bytes(big)  # decodable, but over the limit set below: skipped, counted
            os.mkfifo(folder / "fifo.JPEG")  # reading it would block: not listed
            os.symlink("/dev/zero", folder / "zero.JPEG")  # reading it would never end: not listed
            os.symlink(folder / "missing", folder / "dangling.JPEG")
        monkeypatch.setattr(sources, "MAX_IMAGE_FILE_BYTES", 2 * len(small))
        cfg = recipes.DataConfig(dataset=f"folder:{root}", global_batch_size=2, image_size=32)
        source = data.resolve_source(cfg)
        assert (source.train_examples, source.eval_examples) == (4, 4)
        batches = list(data.make_eval_dataset_fn(source, cfg, interpolation="bilinear")(CTX))
        weights = sum(float(tf.reduce_sum(b["weights"])) for b in batches)
        skipped = sum(int(tf.reduce_sum(b["skipped"])) for b in batches)
        assert (weights, skipped) == (3.0, 1)
        train = list(data.make_train_dataset_fn(source, cfg, seed=0, epoch=0, steps_per_epoch=4, skip_steps=0,
                                                label_smoothing=0.0, interpolation="bilinear")(CTX))
        assert len(train) == 4 and sum(int(tf.reduce_sum(b["skipped"])) for b in train) >= 1

    def test_hidden_folders_empty_classes_and_undecodable_names(self, tmp_path, images):
        root = tmp_path / "names"
        for split in ("train", "val"):
            for name in ("a", "b"):
                (root / split / name).mkdir(parents=True)
                for i in range(2):
                    (root / split / name / f"good_{i}.JPEG").write_bytes(images.jpeg(_image(i, 24, 24)))
            (root / split / ".ipynb_checkpoints").mkdir()  # hidden: no class
            with open(os.path.join(os.fsencode(root / split / "b"), b"bad\xff.JPEG"), "wb") as f:
                f.write(images.jpeg(_image(9, 24, 24)))  # a name that is not UTF-8: skipped and counted
        cfg = recipes.DataConfig(dataset=f"folder:{root}", global_batch_size=2, image_size=32)
        source = data.resolve_source(cfg)
        assert source.class_names == ("a", "b") and source.eval_examples == 5
        batches = list(data.make_eval_dataset_fn(source, cfg, interpolation="bilinear")(CTX))
        assert sum(int(tf.reduce_sum(b["skipped"])) for b in batches) == 1
        assert sum(float(tf.reduce_sum(b["weights"])) for b in batches) == 4.0
        (root / "train" / "c").mkdir()
        (root / "val" / "c").mkdir()
        with pytest.raises(ValueError, match=r"The class folder .*train/c holds no files"):
            data.resolve_source(cfg)
        os.rmdir(root / "train" / "c")
        os.rmdir(root / "val" / "c")
        for split in ("train", "val"):
            os.mkdir(os.path.join(os.fsencode(root / split), b"cl\xff"))
        with pytest.raises(ValueError, match=r"A class folder name is not valid UTF-8"):
            data.resolve_source(cfg)

    def test_images_in_sub_folders_of_a_class_are_its_examples_as_in_torchvision(self, tmp_path, images):
        # torchvision's ImageFolder (DeiT's loader) walks a class folder at any depth, following links: images
        # in class/sub/... were silently left out. Each folder is listed once, so a link cycle ends.
        root = tmp_path / "nested"
        for split in ("train", "val"):
            for name in ("a", "b"):
                (root / split / name / "sub" / "deeper").mkdir(parents=True)
                (root / split / name / "x.jpg").write_bytes(images.jpeg(_image(0, 24, 24)))
                (root / split / name / "sub" / "y.jpg").write_bytes(images.jpeg(_image(1, 24, 24)))
                (root / split / name / "sub" / "deeper" / "z.jpg").write_bytes(images.jpeg(_image(2, 24, 24)))
                (root / split / name / ".cache").mkdir()  # hidden: not read, as hidden files
                (root / split / name / ".cache" / "w.jpg").write_bytes(images.jpeg(_image(3, 24, 24)))
                os.symlink(root / split / name, root / split / name / "sub" / "deeper" / "loop")
            only_nested = root / split / "c" / "2024"
            only_nested.mkdir(parents=True)  # a class whose images are all one level down
            (only_nested / "p.jpg").write_bytes(images.jpeg(_image(4, 24, 24)))
        cfg = recipes.DataConfig(dataset=f"folder:{root}", global_batch_size=2, image_size=32)
        source = data.resolve_source(cfg)
        assert source.class_names == ("a", "b", "c")
        paths, labels = source.eval_files
        assert [os.path.relpath(p, root / "val") for p in paths] == [
            "a/sub/deeper/z.jpg", "a/sub/y.jpg", "a/x.jpg", "b/sub/deeper/z.jpg", "b/sub/y.jpg", "b/x.jpg",
            "c/2024/p.jpg"]
        assert list(labels) == [0, 0, 0, 1, 1, 1, 2] and source.train_examples == 7
        batches = list(data.make_eval_dataset_fn(source, cfg, interpolation="bilinear")(CTX))
        assert sum(float(tf.reduce_sum(b["weights"])) for b in batches) == 7.0

    def test_non_ascii_names_are_the_same_examples_in_every_locale(self, tmp_path, images):
        # Under LC_ALL=C with PYTHONUTF8=0 Python decodes file names as ASCII (é becomes two surrogates): the
        # listing must still see valid UTF-8 names as such (the same classes, files, order and skips).
        root = tmp_path / "données"
        for split in ("train", "val"):
            for name in ("café", "b", "日本"):
                (root / split / name).mkdir(parents=True)
                for i, stem in enumerate(("x", "é_1", "z😀")):
                    (root / split / name / f"{stem}.jpg").write_bytes(images.jpeg(_image(i, 24, 24)))
            with open(os.path.join(os.fsencode(root / split / "b"), b"bad\xff.jpg"), "wb") as f:
                f.write(images.jpeg(_image(9, 24, 24)))  # not UTF-8 in any locale: skipped and counted
        script = (
            "import json, sys\n"
            "import tensorflow as tf\n"
            "from pf_keras_training import data, recipes\n"
            "source = data.resolve_source(recipes.DataConfig(dataset='folder:' + sys.argv[1]))\n"
            "paths, labels = source.eval_files\n"
            "read = [bool(p) and len(tf.io.read_file(p).numpy()) > 0 for p in paths]\n"
            "print(json.dumps([sys.getfilesystemencoding(), source.class_names, paths, labels, read]))\n"
        )
        results = []
        for env in ({"LC_ALL": "C.UTF-8"}, {"LC_ALL": "C", "PYTHONUTF8": "0"}):
            out = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, timeout=300,
                                 env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})
            assert out.returncode == 0, out.stderr[-2000:]
            results.append(json.loads(out.stdout.decode().strip().splitlines()[-1]))
        (utf8_encoding, *utf8), (c_encoding, *c_locale) = results
        assert (utf8_encoding, c_encoding) == ("utf-8", "ascii")  # the second really lists names as ASCII
        assert c_locale == utf8
        names, paths, labels, read = utf8
        assert names == ["b", "café", "日本"]
        assert sum(read) == 9 and paths.count("") == 1 and len(paths) == 10
        assert [os.path.basename(p) for p in paths if p][:3] == ["x.jpg", "z😀.jpg", "é_1.jpg"]

    def test_a_stalled_stream_of_a_vanished_folder_says_so(self, tmp_path, images):
        import shutil

        root = tmp_path / "gone"
        for split in ("train", "val"):
            (root / split / "a").mkdir(parents=True)
            (root / split / "a" / "x.JPEG").write_bytes(images.jpeg(_image(0, 24, 24)))
        source = data.resolve_source(recipes.DataConfig(dataset=f"folder:{root}"))
        stalled = tf.errors.InvalidArgumentError(None, None, f"{data._STALL_MARK} 7")
        assert "are not images of a supported format" in str(data.explain_data_error(stalled, source, "train", 7))
        shutil.rmtree(root / "train")  # deleted while the run reads it
        message = str(data.explain_data_error(stalled, source, "train", 7))
        assert f"its folder {root}/train no longer exists" in message and "in 7 consecutive files" in message

    def test_undecodable_files_at_the_end_of_the_val_list_are_counted(self, tmp_path, images):
        root = tmp_path / "tail"
        for split in ("train", "val"):
            for name in ("a", "b"):
                folder = root / split / name
                folder.mkdir(parents=True)
                for i in range(2):
                    (folder / f"good_{i}.JPEG").write_bytes(images.jpeg(_image(i)))
            (root / split / "b" / "zz_empty.JPEG").write_bytes(b"")
            (root / split / "b" / "zz_text.JPEG").write_bytes(b"not an image")
        cfg = recipes.DataConfig(dataset=f"folder:{root}", global_batch_size=4, image_size=32)
        source = data.resolve_source(cfg)
        batches = list(data.make_eval_dataset_fn(source, cfg, interpolation="bilinear")(CTX))
        weights = sum(float(tf.reduce_sum(b["weights"])) for b in batches)
        skipped = sum(int(tf.reduce_sum(b["skipped"])) for b in batches)
        assert (weights, skipped) == (4.0, 2)

    def test_a_training_stream_without_decodable_images_stops_with_one_error(self, tmp_path, images):
        root = tmp_path / "bad"
        for split in ("train", "val"):
            folder = root / split / "a"
            folder.mkdir(parents=True)
            for i in range(5):
                (folder / f"bad_{i}.JPEG").write_bytes(b"" if split == "train" else images.jpeg(_image(i)))
        cfg = recipes.DataConfig(dataset=f"folder:{root}", global_batch_size=2, image_size=32)
        source = data.resolve_source(cfg)
        fn = data.make_train_dataset_fn(source, cfg, seed=0, epoch=0, steps_per_epoch=2, skip_steps=0,
                                        label_smoothing=0.0, interpolation="bilinear", max_consecutive_skips=1000)
        outcome: dict = {}

        def consume():  # in a thread: a regression (the old endless loop) fails the test instead of hanging it
            try:
                outcome["batches"] = list(fn(CTX))
            except tf.errors.InvalidArgumentError as e:  # kept without its frames (they hold the iterator)
                outcome["error"] = tf.errors.InvalidArgumentError(e.node_def, e.op, e.message)

        worker = threading.Thread(target=consume, daemon=True)
        worker.start()
        worker.join(120)
        assert "error" in outcome, f"the stream did not stop with an error: {outcome or 'it hangs'}"
        explained = data.explain_data_error(outcome["error"], source, "train", 1000)
        assert str(explained).startswith(f"The train data yielded no decodable image in 5 consecutive files of "
                                         f"{root}/train (5 files listed)")
        assert str(explained).endswith("Received: max_consecutive_skips=1000")

    def test_an_empty_val_split_is_an_error_at_start(self, tmp_path, images):
        (tmp_path / "d" / "train" / "a").mkdir(parents=True)
        (tmp_path / "d" / "val" / "a").mkdir(parents=True)
        (tmp_path / "d" / "train" / "a" / "x.JPEG").write_bytes(images.jpeg(_image(1)))
        with pytest.raises(ValueError, match=r"The val split has no files: .*/val/<class>/ folders are empty"):
            data.resolve_source(recipes.DataConfig(dataset=f"folder:{tmp_path / 'd'}"))

    def test_tfds_typo_suggests_at_most_five_close_names(self, tmp_path):
        with pytest.raises(ValueError) as error:
            data.resolve_source(recipes.DataConfig(dataset="imagenet2021", data_dir=str(tmp_path)))
        message = str(error.value)
        names = message.split("close TFDS names: [", 1)[1].split("]", 1)[0].split(", ")
        assert "'imagenet2012'" in names and len(names) <= 5
        assert len(message) < 400 and "\n" not in message
