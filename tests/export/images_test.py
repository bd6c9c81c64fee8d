"""Tests of pf_keras_export.images: deterministic sources and the dataset forms."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pf_keras_export.images import load_images, model_inputs, procedural_images


class TestImages:
    def test_procedural_images_are_deterministic_and_natural(self):
        first, again = procedural_images(4, 48, seed=3), procedural_images(4, 48, seed=3)
        assert first.shape == (4, 48, 48, 3) and first.dtype == np.uint8
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, procedural_images(4, 48, seed=4))
        # Smooth: neighbouring pixels are far closer than random pairs.
        step = np.abs(np.diff(first.astype(np.int16), axis=2)).mean()
        assert step < 0.25 * np.abs(first[:, :, ::-1].astype(np.int16) - first).mean() + 8

    def test_folder_dataset(self, tmp_path):
        for i, side in enumerate((30, 80)):
            (tmp_path / "cls").mkdir(exist_ok=True)
            image = np.full((side, side + 10, 3), 40 * i, np.uint8)
            tf.io.write_file(str(tmp_path / "cls" / f"{i}.png"), tf.io.encode_png(image))
        images = load_images(f"folder:{tmp_path}", 3, 32)
        assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
        assert sorted({int(images[k, 0, 0, 0]) for k in range(3)}) == [0, 40]

    def test_a_folder_with_damaged_and_oversized_files_calibrates_on_the_good_ones(self, tmp_path):
        import struct
        import zlib

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        folder = tmp_path / "cls"
        folder.mkdir()
        good = np.full((40, 50, 3), 200, np.uint8)
        jpeg = tf.io.encode_jpeg(good).numpy()
        (folder / "good.jpg").write_bytes(jpeg)
        (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
        (folder / "empty.jpg").write_bytes(b"")
        (folder / "text.png").write_text("not an image")
        # 50000 x 50000 declared in the header (2.5 GP): refused before decoding, as in training
        header = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
        (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                          + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
        images = load_images(f"folder:{tmp_path}", 4, 16)
        assert images.shape == (4, 16, 16, 3) and (images == 200).all()  # the good file, repeated
        (folder / "good.jpg").unlink()
        with pytest.raises(ValueError, match=r"holds no decodable image \(4 image files, none decodable"):
            load_images(f"folder:{tmp_path}", 2, 16)

    def test_fifos_devices_and_files_over_the_byte_limit_are_never_read(self, tmp_path, monkeypatch):
        import os
        import threading

        from pf_keras_training import sources

        folder = tmp_path / "cls"
        folder.mkdir()
        small = tf.io.encode_jpeg(np.full((20, 20, 3), 200, np.uint8), quality=50).numpy()
        big = tf.io.encode_png(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).numpy()
        assert len(big) > 4 * len(small)
        (folder / "good.jpg").write_bytes(small)
        (folder / "big.png").write_bytes(big)  # decodable, but over the limit set below
        os.mkfifo(folder / "fifo.jpg")  # opening it for reading would block forever
        os.symlink("/dev/zero", folder / "zero.jpg")  # reading it would never end
        monkeypatch.setattr(sources, "MAX_IMAGE_FILE_BYTES", 2 * len(small))
        result = []
        for s in range(3):  # several seeded orders
            worker = threading.Thread(target=lambda s=s: result.append(load_images(f"folder:{tmp_path}", 6, 16,
                                                                                   seed=s)), daemon=True)
            worker.start()
            worker.join(120)
            assert not worker.is_alive(), "reading the export folder blocked"
        assert len(result) == 3 and all((images == 200).all() for images in result)  # only the small JPEG

    def test_synthetic_builtin_and_inputs(self):
        synthetic = load_images("synthetic", 2, 16, seed=1)
        np.testing.assert_array_equal(synthetic, load_images("synthetic", 2, 16, seed=1))
        assert load_images(None, 2, 24).shape == (2, 24, 24, 3)
        assert model_inputs(synthetic, takes_pixels=True).max() == synthetic.max()
        assert abs(float(model_inputs(np.full((1, 2, 2, 3), 124, np.uint8), takes_pixels=False)[0, 0, 0, 0])) < 0.01

    def test_bad_datasets(self, tmp_path):
        with pytest.raises(ValueError, match=r"must be an existing directory. Received: dataset='folder:/nonexistent'"):
            load_images("folder:/nonexistent", 2, 16)
        with pytest.raises(ValueError, match=r"holds no image files .*Received: dataset='folder:"):
            load_images(f"folder:{tmp_path}", 2, 16)
        with pytest.raises(ValueError, match=r"`dataset` must be 'builtin', 'synthetic', 'folder:PATH' or a TFDS"):
            load_images("no_such_tfds_dataset_name", 2, 16)
