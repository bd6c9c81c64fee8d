"""Deterministic images for int8 calibration and for the validation batch.

Every source returns RGB ``uint8`` arrays of shape ``(num, size, size, 3)``;
:func:`model_inputs` turns them into what a model takes (normalised float, or pixels when the
model has its ``preprocessing`` layer inside).

Dataset forms (the ``--dataset`` flag, the same strings the training front end accepts):

- ``None`` / ``"builtin"``: the built-in default data: the training split of the training front
  end's builtin dataset (``pf_keras_training.builtin_data.ensure()``, generated on first use; no
  downloads, same pixels on every machine).
- ``"synthetic"``: uniform random pixels (seeded); a poor calibration set, but dependency-free.
- ``"folder:PATH"``: image files under PATH (any depth; jpg, jpeg, png, bmp, gif), sorted, then a
  seeded pick.
- any other string: a TFDS dataset name (``tfds.load(name)``; the ``validation`` split if the
  dataset has one, else ``train``).

Images from files are resized (shorter side to ``size / 0.875``, bilinear) and centre-cropped,
the evaluation transform of the reference.
"""

from __future__ import annotations

import os

import numpy as np

from pf_keras.preprocessing import normalize, resize_and_crop
from pf_keras_training import builtin_data

CROP_FRACTION = 0.875  # Reference eval transform: resize to 256, centre crop 224.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
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


def _resize_and_crop(image, size: int) -> np.ndarray:
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    image = image[..., :3]
    image = resize_and_crop(image, size=size, crop_fraction=CROP_FRACTION, interpolation="bilinear")
    return np.clip(np.rint(image.numpy()), 0, 255).astype(np.uint8)


def folder_images(path: str, num: int, size: int, *, seed: int = 0) -> np.ndarray:
    """``num`` images picked (seeded) from the image files under ``path``, resized and centre-cropped.

    Raises:
        ValueError: when ``path`` is not a directory or holds no image files.
    """
    import tensorflow as tf

    if not os.path.isdir(path):
        raise ValueError(f"`dataset` folder must be an existing directory. Received: dataset='folder:{path}'")
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(path)
        for name in names
        if name.lower().endswith(IMAGE_SUFFIXES)
    )
    if not files:
        raise ValueError(
            f"`dataset` folder holds no image files ({', '.join(IMAGE_SUFFIXES)}). Received: dataset='folder:{path}'"
        )
    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(files))[:num]
    images = []
    for index in picks:
        data = tf.io.read_file(files[index])
        images.append(_resize_and_crop(tf.io.decode_image(data, channels=3, expand_animations=False), size))
    while len(images) < num:  # fewer files than requested: repeat them, in order.
        images.append(images[len(images) % len(picks)])
    return np.stack(images)


def tfds_images(name: str, num: int, size: int, *, seed: int = 0, data_dir: str | None = None) -> np.ndarray:
    """The first ``num`` images of a TFDS dataset (validation split if any), resized and centre-cropped.

    Raises:
        ValueError: when TFDS cannot load ``name``.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        split = "validation" if "validation" in builder.info.splits else "train"
        dataset = tfds.load(name, split=split, shuffle_files=False, data_dir=data_dir)
    except Exception as error:  # TFDS raises many types (unknown name, not prepared, no network).
        raise ValueError(
            "`dataset` must be 'builtin', 'synthetic', 'folder:PATH' or a TFDS dataset that is available "
            f"here ({type(error).__name__}: {error}). Received: dataset={name!r}"
        ) from error
    images = [_resize_and_crop(example["image"], size) for example in dataset.take(num)]
    if not images:
        raise ValueError(f"`dataset` has no images in split {split!r}. Received: dataset={name!r}")
    while len(images) < num:
        images.append(images[len(images) % len(images)])
    del seed  # TFDS order is already deterministic with shuffle_files=False.
    return np.stack(images)


def builtin_images(num: int, size: int, *, seed: int = 0) -> np.ndarray:
    """The built-in default images: the training split of the training front end's builtin dataset."""
    return folder_images(os.path.join(builtin_data.ensure(), "train"), num, size, seed=seed)


def load_images(
    dataset: str | None, num: int, size: int, *, seed: int = 0, data_dir: str | None = None
) -> np.ndarray:
    """RGB ``uint8`` images of shape ``(num, size, size, 3)`` from one of the dataset forms.

    Args:
        dataset: str or None. ``None``/"builtin", "synthetic", "folder:PATH" or a TFDS name.
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
    if dataset is None or dataset == "builtin":
        return builtin_images(num, size, seed=seed)
    if dataset == "synthetic":
        return np.random.default_rng(seed).integers(0, 256, (num, size, size, 3), dtype=np.uint8)
    if dataset.startswith("folder:"):
        return folder_images(dataset[len("folder:") :], num, size, seed=seed)
    return tfds_images(dataset, num, size, seed=seed, data_dir=data_dir)


def normalise(images: np.ndarray) -> np.ndarray:
    """RGB pixels in [0, 255] -> ``(x / 255 - mean) / std`` (float32), the models' float input."""
    return normalize(images)


def model_inputs(images: np.ndarray, *, takes_pixels: bool) -> np.ndarray:
    """What a Keras model takes: float pixels when it has preprocessing inside, else normalised floats."""
    return images.astype(np.float32) if takes_pixels else normalise(images)
