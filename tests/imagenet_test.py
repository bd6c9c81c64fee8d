"""Tests of pf_keras/imagenet.py."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import pf_keras
from pf_keras.imagenet import IMAGENET_MEAN, IMAGENET_STD


class TestPreprocessInput:
    def test_numpy_and_tensor(self):
        x = np.array([[[[0.0, 127.5, 255.0]]]], "float32")
        expected = (x / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        np.testing.assert_allclose(pf_keras.preprocess_input(x), expected, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(pf_keras.preprocess_input(tf.constant(x))), expected, rtol=1e-6)

    def test_errors(self):
        with pytest.raises(ValueError, match="channels_last only. Received: data_format='channels_first'"):
            pf_keras.preprocess_input(np.zeros((1, 2, 2, 3)), data_format="channels_first")
        with pytest.raises(ValueError, match="3 channels last"):
            pf_keras.preprocess_input(np.zeros((1, 3, 2, 2)))


class TestDecodePredictions:
    def test_top_classes_in_tfds_order(self):
        preds = np.zeros((2, 1000), "float32")
        preds[0, 0], preds[0, 999] = 0.9, 0.1
        preds[1, 1] = 1.0
        decoded = pf_keras.decode_predictions(preds, top=2)
        assert decoded[0][0] == ("n01440764", "n01440764", pytest.approx(0.9))  # tench, class 0
        assert decoded[0][1][0] == "n15075141"  # toilet tissue, class 999
        assert decoded[1][0][0] == "n01443537"
        assert len(decoded) == 2 and len(decoded[0]) == 2

    def test_wrong_shape(self):
        with pytest.raises(ValueError, match=r"Received: shape=\(2, 10\)"):
            pf_keras.decode_predictions(np.zeros((2, 10)))
