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
