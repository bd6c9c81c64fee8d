"""ImageNet preprocessing and label decoding, as in ``keras.applications``.

The official PfLayer checkpoints (timm/DeiT defaults) take RGB scaled to [0, 1] and
normalised with the ImageNet mean and standard deviation below.
"""

from __future__ import annotations

import functools
import os

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 1000  # TFDS imagenet2012 labels, no background class.


def preprocess_input(x, data_format: str | None = None):
    """Turns RGB in [0, 255] into the normalised input the models take.

    Args:
        x: array-like or tensor, (..., 3) RGB in [0, 255].
        data_format: str or None. Only "channels_last" (or None) is supported.

    Returns:
        ``(x / 255 - mean) / std`` as float32, same type family as the input
        (NumPy in, NumPy out; tensor in, tensor out).

    Raises:
        ValueError: for another ``data_format`` or a last axis that is not 3.

    Example:
        >>> preprocess_input(np.full((1, 2, 2, 3), 255.0))[0, 0, 0].round(3)
        array([2.249, 2.429, 2.64 ], dtype=float32)
    """
    if data_format not in (None, "channels_last"):
        raise ValueError(f"pf_keras models are channels_last only. Received: data_format={data_format!r}")
    if x.shape[-1] != 3:
        raise ValueError(f"preprocess_input expects RGB with 3 channels last. Received: shape={tuple(x.shape)}")
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    if isinstance(x, np.ndarray) or not hasattr(x, "dtype") or isinstance(x, (list, tuple)):
        x = np.asarray(x, np.float32)
        return (x / 255.0 - mean) / std
    import keras

    x = keras.ops.cast(x, "float32")
    return (x / 255.0 - mean) / std


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 WordNet ids in TFDS ``imagenet2012`` label order (read from the TFDS package)."""
    import tensorflow_datasets as tfds

    path = os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012", "labels.txt")
    with open(path) as f:
        wnids = tuple(line.strip() for line in f if line.strip())
    if len(wnids) != NUM_CLASSES:
        raise RuntimeError(f"Expected {NUM_CLASSES} ImageNet labels in {path}, found {len(wnids)}")
    return wnids


def decode_predictions(preds, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Decodes a batch of ImageNet predictions into ``(wnid, label, score)`` tuples.

    The labels are the WordNet ids of the TFDS ``imagenet2012`` class order, which is the
    order the official checkpoints use; the package ships no human-readable class names, so
    ``label`` is the WordNet id too.

    Args:
        preds: array-like, (batch, 1000) scores.
        top: int. How many classes per sample, best first. Defaults to 5.

    Returns:
        One list of ``top`` tuples per sample.

    Raises:
        ValueError: if ``preds`` is not (batch, 1000).
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != NUM_CLASSES:
        raise ValueError(
            f"decode_predictions expects a batch of {NUM_CLASSES} ImageNet scores, shape (batch, 1000). "
            f"Received: shape={preds.shape}"
        )
    wnids = imagenet_wnids()
    results = []
    for row in preds:
        order = np.argsort(row)[::-1][:top]
        results.append([(wnids[i], wnids[i], float(row[i])) for i in order])
    return results
