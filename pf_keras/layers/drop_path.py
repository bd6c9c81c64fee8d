"""Stochastic depth (drop path) on a residual branch."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="pf_keras")
class DropPath(keras.layers.Layer):
    """Drops a whole residual branch per sample during training.

    Surviving samples are scaled by ``1 / (1 - rate)`` so the expectation is unchanged
    (the "scale by keep probability" form used by timm and the PfLayer reference). At
    inference it is the identity.

    Args:
        rate: float. Probability of dropping the branch of a sample. Defaults to 0.
        seed: int or None. Seed of the layer's random generator. Defaults to None.

    Example:
        >>> layer = DropPath(0.1)
        >>> tuple(layer(keras.ops.ones((2, 4)), training=False).shape)
        (2, 4)
    """

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1). Received: rate={rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        mask = keras.random.uniform(shape, seed=self.seed_generator, dtype=inputs.dtype)
        mask = ops.floor(mask + ops.cast(keep, inputs.dtype))
        return inputs * mask / ops.cast(keep, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
