"""Deterministic images for int8 calibration, the validation batch and benchmark inputs.

Every source returns RGB ``uint8`` arrays of shape ``(num, size, size, 3)``;
:func:`model_inputs` turns them into what a model takes (normalised float, or pixels when the
model has its ``preprocessing`` layer inside).

Datasets (the ``--dataset`` flag) are the training front end's source registry,
:mod:`pf_keras_training.sources` (each source's ``images``); :func:`load_images` is its entry here:

- ``None`` / ``"builtin"``: the training split of the builtin dataset (generated on first use;
  no downloads, same pixels on every machine).
- ``"synthetic"``: uniform random pixels (seeded); a poor calibration set, but dependency-free.
- ``"folder:PATH"``: image files under PATH (any depth; jpg, jpeg, png, bmp, gif), sorted, then a
  seeded pick.
- any other string: a TFDS dataset name (the ``validation`` split if the dataset has one, else ``train``).

Images from files are resized (shorter side to ``size / 0.875``, bilinear) and centre-cropped,
the evaluation transform of the reference (:func:`pf_keras_training.sources.eval_pixels`).
"""

from __future__ import annotations

import numpy as np

from pf_keras.preprocessing import normalize
from pf_keras_training import sources

INPUT_TYPES = ("float", "uint8")


def procedural_images(num: int, size: int, *, seed: int = 0) -> np.ndarray:
    """Natural-looking synthetic RGB images: smooth colour gradients, textured blobs and edges.

    They have the statistics calibration cares about (large smooth areas, sharp edges, colour
    correlation, the full [0, 255] range) without any file or download.

    Args:
        num: int. Number of images.
        size: int. Side in pixels.
        seed: int. Seed; the same seed gives the same pixels. Defaults to 0.

    Returns:
        ``uint8`` array of shape ``(num, size, size, 3)``.

    Example:
        >>> procedural_images(2, 32).shape
        (2, 32, 32, 3)
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0.0, 1.0, size), np.linspace(0.0, 1.0, size), indexing="ij")
    images = np.empty((num, size, size, 3), np.uint8)
    for i in range(num):
        # Background: a linear blend between two random colours along a random direction.
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip((np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) + 0.5, 0.0, 1.0)[..., None]
        image = (1 - t) * rng.uniform(0, 255, 3) + t * rng.uniform(0, 255, 3)
        # Objects: ellipses and rectangles with their own colour and a soft texture.
        for _ in range(rng.integers(2, 7)):
            cy, cx = rng.uniform(0.1, 0.9, 2)
            ry, rx = rng.uniform(0.05, 0.35, 2)
            if rng.random() < 0.5:
                mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            else:
                mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            freq = rng.uniform(2, 12)
            texture = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
            colour = rng.uniform(0, 255, 3)
            shade = (0.75 + 0.25 * texture)[..., None]
            image = np.where(mask[..., None], colour * shade, image)
        # Low-frequency lighting and sensor noise.
        coarse = rng.normal(0, 20, (4, 4, 1))
        light = np.kron(coarse, np.ones((size // 4 + 1, size // 4 + 1, 1)))[:size, :size]
        image = image + light + rng.normal(0, 4, image.shape)
        images[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return images


def load_images(
    dataset: str | None, num: int, size: int, *, seed: int = 0, data_dir: str | None = None
) -> np.ndarray:
    """RGB ``uint8`` images of shape ``(num, size, size, 3)`` from a ``--dataset`` source.

    Args:
        dataset: str or None. ``None``/"builtin", "synthetic", "folder:PATH", a TFDS name, or any
            other registered kind (:mod:`pf_keras_training.sources`).
        num: int. Number of images.
        size: int. Side in pixels.
        seed: int. Seed of the pick (and of the generated pixels). Defaults to 0.
        data_dir: str or None. TFDS data folder (TFDS names only). Defaults to None (TFDS's default).

    Returns:
        ``uint8`` array of shape ``(num, size, size, 3)``.

    Raises:
        ValueError: for an unusable dataset.
    """
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"`num` must be a positive int. Received: num={num!r}")
    return sources.parse(dataset, data_dir=data_dir).images(num, size, seed=seed)


def model_inputs(images: np.ndarray, *, takes_pixels: bool) -> np.ndarray:
    """What a Keras model takes: float pixels when it has preprocessing inside, else normalised floats."""
    return images.astype(np.float32) if takes_pixels else normalize(images)
