"""ImageNet preprocessing and label decoding, as in ``keras.applications``.

The official PfLayer checkpoints (timm/DeiT defaults) take RGB scaled to [0, 1] and
normalised with the ImageNet mean and standard deviation below.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 1000  # TFDS imagenet2012 labels, no background class.
CLASSES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "imagenet_classes.json")


def preprocess_input(x, data_format: str | None = None):
    """Turns RGB in [0, 255] into the normalised input the models take.

    Args:
        x: array-like or tensor, (..., 3) RGB in [0, 255].
        data_format: str or None. Only "channels_last" (or None) is supported.

    Returns:
        ``(x / 255 - mean) / std`` as float32, same type family as the input
        (NumPy in, NumPy out; tensor in, tensor out); see :func:`pf_keras.normalize`.

    Raises:
        ValueError: for another ``data_format`` or a last axis that is not 3.

    Example:
        >>> preprocess_input(np.full((1, 2, 2, 3), 255.0))[0, 0, 0].round(3)
        array([2.249, 2.429, 2.64 ], dtype=float32)
    """
    from pf_keras.preprocessing import normalize  # noqa: PLC0415 (preprocessing imports this module)

    if data_format not in (None, "channels_last"):
        raise ValueError(f"pf_keras models are channels_last only. Received: data_format={data_format!r}")
    if np.shape(x)[-1] != 3:
        raise ValueError(f"preprocess_input expects RGB with 3 channels last. Received: shape={tuple(np.shape(x))}")
    return normalize(x)


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1000 ``(wnid, name)`` pairs in label order (sorted wnids: TFDS, torchvision and the checkpoints).

    Read from ``pf_keras/data/imagenet_classes.json`` (made by ``scripts/make_imagenet_classes.py``
    from timm's package data; the name is the first WordNet lemma).
    """
    with open(CLASSES_FILE, encoding="utf-8") as f:
        pairs = tuple((str(wnid), str(name)) for wnid, name in json.load(f)["classes"])
    if len(pairs) != NUM_CLASSES:
        raise RuntimeError(f"Expected {NUM_CLASSES} ImageNet classes in {CLASSES_FILE}, found {len(pairs)}")
    return pairs


def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 WordNet ids in label order."""
    return tuple(wnid for wnid, _ in imagenet_classes())


def decode_predictions(preds, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Decodes a batch of ImageNet predictions into ``(wnid, name, score)`` tuples, best first.

    Args:
        preds: array-like, (batch, 1000) scores (probabilities or logits).
        top: int. How many classes per sample. Defaults to 5.

    Returns:
        One list of ``top`` tuples per sample, e.g. ``("n01440764", "tench", 0.9)``.

    Raises:
        ValueError: if ``preds`` is not (batch, 1000) or ``top`` is not in [1, 1000].

    Example:
        >>> scores = np.zeros((1, 1000)); scores[0, 281] = 1.0
        >>> decode_predictions(scores, top=1)
        [[('n02123045', 'tabby', 1.0)]]
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != NUM_CLASSES:
        raise ValueError(
            f"decode_predictions expects a batch of {NUM_CLASSES} ImageNet scores, shape (batch, 1000). "
            f"Received: shape={preds.shape}"
        )
    if not isinstance(top, int) or not 1 <= top <= NUM_CLASSES:
        raise ValueError(f"`top` must be an int in [1, {NUM_CLASSES}]. Received: top={top!r}")
    classes = imagenet_classes()
    results = []
    for row in preds:
        order = np.argsort(-row, kind="stable")[:top]
        results.append([(*classes[i], float(row[i])) for i in order])
    return results
