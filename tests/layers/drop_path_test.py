"""Tests of pf_keras/layers/drop_path.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pf_keras.layers import DropPath


class TestDropPath:
    def test_identity_at_inference_and_unbiased_in_training(self):
        layer = DropPath(0.25, seed=3)
        x = np.ones((4000, 2, 2, 1), "float32")
        np.testing.assert_array_equal(layer(x, training=False), x)
        out = keras.ops.convert_to_numpy(layer(x, training=True))
        per_sample = out.reshape(4000, -1)
        np.testing.assert_allclose(np.unique(per_sample), [0.0, 1 / 0.75], rtol=1e-6)
        assert (per_sample == per_sample[:, :1]).all()  # whole samples are dropped
        assert abs(per_sample.mean() - 1.0) < 0.05

    def test_config_round_trip_and_saving(self, tmp_path):
        layer = DropPath(0.1, seed=7, name="dp")
        clone = DropPath.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
        inputs = keras.Input((4,))
        model = keras.Model(inputs, DropPath(0.1, name="dp")(keras.layers.Dense(3)(inputs)))
        x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
        model.save(tmp_path / "m.keras")
        restored = keras.saving.load_model(tmp_path / "m.keras")
        assert isinstance(restored.get_layer("dp"), DropPath) and restored.get_layer("dp").rate == 0.1
        np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
        model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
        loaded = tf.saved_model.load(str(tmp_path / "sm"))
        np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), model.predict(x, verbose=0), atol=1e-6)

    def test_invalid_rate(self):
        with pytest.raises(ValueError, match="Received: rate=1.0"):
            DropPath(1.0)
