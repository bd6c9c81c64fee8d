"""BatchNormalization that trains with TensorFlow's fused kernel.

Keras 3 trains ``BatchNormalization`` on TensorFlow with unfused ops (``tf.nn.moments`` then
``tf.nn.batch_normalization``: about ten elementwise and reduction passes forward and more
backward). On CPU that was about a fifth of a ResNet-50 training step's op time (README
"Performance"). This :class:`BatchNormalization` computes the same training-mode batch
normalisation with one ``FusedBatchNormV3`` op (oneDNN on x86) and its fused gradient, and keeps
everything else of ``keras.layers.BatchNormalization``: the weights, the config and its
``class_name`` (code that edits model configs by class name, such as SyncBN, still finds it;
it is registered as ``pf_keras>BatchNormalization``), inference (``training=False``, export)
and every other backend use the Keras code unchanged.

Same outputs and gradients as Keras up to float rounding (the batch is normalised with its
biased variance). One deliberate difference: the moving variance averages the unbiased
(Bessel-corrected) batch variance, as PyTorch's ``BatchNorm2d`` does, so training statistics
follow the reference's training (``tests/training/step_parity_test.py``); Keras' own layer,
used on the fallback paths below, averages the biased one (a factor ``n / (n - 1)`` on the
update, ``n`` = batch x height x width).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="pf_keras")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose TensorFlow training step is one fused op.

    The fused path runs on the TensorFlow backend for rank-4 inputs normalised over the last
    axis in training mode, without a mask, renorm or synchronised statistics; anything else falls
    back to the Keras implementation. Arguments are those of ``keras.layers.BatchNormalization``.

    Example:
        >>> bn = BatchNormalization(momentum=0.9, epsilon=1e-5)
        >>> tuple(bn(keras.ops.ones((2, 4, 4, 3)), training=True).shape)
        (2, 4, 4, 3)
    """

    def _fused_applies(self, inputs, training, mask) -> bool:
        return (
            bool(training)
            and self.trainable
            and mask is None
            and not self.renorm
            and not self.synchronized
            and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused_applies(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = ops.cast(inputs, "float32")  # as Keras does: statistics in float32
        channels = x.shape[-1]
        gamma = ops.cast(self.gamma, "float32") if self.scale else tf.ones([channels])
        beta = ops.cast(self.beta, "float32") if self.center else tf.zeros([channels])
        y, mean, corrected_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=self.epsilon,
            data_format="NHWC", is_training=True)
        # The moving variance averages the unbiased batch variance, as PyTorch's BatchNorm2d does
        # (the reference's training); Keras' own layer averages the biased one. One value per channel:
        # fall back to the biased (zero) variance instead of dividing by zero.
        count = tf.cast(tf.size(x, out_type=tf.int64) // channels, tf.float32)
        variance = tf.where(count > 1.0, corrected_variance, tf.zeros_like(corrected_variance))
        momentum = self.momentum
        self.moving_mean.assign(ops.cast(self.moving_mean, "float32") * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(
            ops.cast(self.moving_variance, "float32") * momentum + variance * (1.0 - momentum))
        return ops.cast(y, self.compute_dtype)
