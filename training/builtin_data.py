"""The builtin dataset: procedurally drawn shapes, generated offline on first use.

What it is: 10 classes of simple drawings (filled circle, square, triangle, horizontal
stripes, vertical stripes, plus sign, ring, checkerboard, diagonal stripes, X), each with
random colours, size, position, line width and pixel noise, saved as 40x40 RGB JPEGs in the
folder layout ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg``. It is not
ImageNet and says nothing about ImageNet accuracy; it exists so that the training command
runs end to end with no download and visibly learns (chance is 10 %).

Every image is a pure function of (class, split, index) through a seeded NumPy generator,
so two machines generate the same images (JPEG bytes can differ across Pillow versions).
:func:`example` returns one image with the bounding box of its shape (the Grad-CAM test uses
it): the box of the drawn mask for the six shape classes (``LOCALISABLE``), None for the four
textures, which fill the whole image.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

import numpy as np

from pf_keras import fileio

CLASSES = (
    "circle", "square", "triangle", "hstripes", "vstripes", "plus", "ring", "checker", "diagonal", "cross",
)
IMAGE_SIZE = 40
VERSION = 1
DEFAULT_TRAIN_PER_CLASS = 300
DEFAULT_VAL_PER_CLASS = 50
LOCALISABLE = ("circle", "square", "triangle", "plus", "ring", "cross")  # one shape, not a texture
SPLITS = {"train": 0, "val": 1}


def default_root() -> str:
    """``$PF_KERAS_CACHE/builtin_v1`` (default cache: ``~/.cache/pf_keras``)."""
    cache = os.environ.get("PF_KERAS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pf_keras")
    return os.path.join(cache, f"builtin_v{VERSION}")


def _write_error(parent: str, error: OSError) -> fileio.WriteError:
    return fileio.WriteError(f"cannot write the builtin dataset under {parent} "
                             f"({errno.errorcode.get(error.errno or 0, 'OSError')}: {error.strerror or error}); "
                             f"free some space or point PF_KERAS_CACHE elsewhere")


def _draw(label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (IMAGE_SIZE, IMAGE_SIZE, 3) uint8 image of class ``label`` and its boolean shape mask."""
    n = IMAGE_SIZE
    bg = rng.uniform(0, 255, 3)
    fg = rng.uniform(0, 255, 3)
    while np.abs(fg - bg).sum() < 200:  # keep the shape visible
        fg = rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    cy, cx = rng.uniform(n * 0.35, n * 0.65, 2)
    r = rng.uniform(n * 0.2, n * 0.38)
    w = rng.uniform(n * 0.06, n * 0.12)  # line width
    period = rng.uniform(n * 0.15, n * 0.3)
    dy, dx = yy - cy, xx - cx
    name = CLASSES[label]
    if name == "circle":
        mask = dy**2 + dx**2 <= r**2
    elif name == "square":
        mask = (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    elif name == "triangle":
        mask = (dy <= r * 0.7) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    elif name == "hstripes":
        mask = ((yy + rng.uniform(0, period)) % period) < period / 2
    elif name == "vstripes":
        mask = ((xx + rng.uniform(0, period)) % period) < period / 2
    elif name == "plus":
        mask = ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))
    elif name == "ring":
        d = np.sqrt(dy**2 + dx**2)
        mask = (d <= r) & (d >= r - 1.5 * w)
    elif name == "checker":
        p = period * 0.8
        mask = (((yy // p) + (xx // p)) % 2) == 0
    elif name == "diagonal":
        sign = rng.choice([-1.0, 1.0])
        mask = ((xx + sign * yy + rng.uniform(0, period)) % period) < period / 2
    else:  # cross (X)
        mask = ((np.abs(dy - dx) <= w * 1.2) | (np.abs(dy + dx) <= w * 1.2)) & (np.abs(dy) <= r) & (np.abs(dx) <= r)
    image = np.where(mask[..., None], fg, bg)
    image = image + rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def example(label: int, *, split: str = "val", index: int = 0, seed: int = 0
            ) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """The image ``generate`` writes as ``<split>/<class>/<class>_<index>.jpg``, before JPEG coding.

    Args:
        label: int. Class index into ``CLASSES``.
        split: str. "train" or "val". Defaults to "val".
        index: int. Image number within the class. Defaults to 0.
        seed: int. Generator seed of the dataset. Defaults to 0.

    Returns:
        ``(image, box)``: (IMAGE_SIZE, IMAGE_SIZE, 3) uint8 RGB and the shape's inclusive pixel
        box ``(y0, x0, y1, x1)`` for the ``LOCALISABLE`` classes, None for the textures.

    Example:
        >>> image, box = example(CLASSES.index("square"), index=3)
        >>> image.shape, len(box)
        ((40, 40, 3), 4)
    """
    if split not in SPLITS or not 0 <= label < len(CLASSES):
        raise ValueError(f"split must be one of {list(SPLITS)} and label in [0, {len(CLASSES)}). "
                         f"Received: split={split!r}, label={label}")
    image, mask = _draw(label, np.random.default_rng([seed, SPLITS[split], label, index]))
    if CLASSES[label] not in LOCALISABLE:
        return image, None
    ys, xs = np.nonzero(mask)
    return image, (int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max()))


def generate(root: str, *, train_per_class: int = DEFAULT_TRAIN_PER_CLASS,
             val_per_class: int = DEFAULT_VAL_PER_CLASS, seed: int = 0) -> str:
    """Writes the dataset under ``root`` (atomically: a temp folder renamed at the end).

    Args:
        root: str. Target folder; left untouched if it already holds a complete dataset.
        train_per_class: int. Training images per class. Defaults to 300.
        val_per_class: int. Validation images per class. Defaults to 50.
        seed: int. Generator seed. Defaults to 0.

    Returns:
        ``root``.

    Example:
        >>> import tempfile
        >>> root = generate(tempfile.mkdtemp() + "/b", train_per_class=2, val_per_class=1)
        >>> sorted(os.listdir(root))
        ['COMPLETE', 'train', 'val']
    """
    from PIL import Image

    if os.path.exists(os.path.join(root, "COMPLETE")):
        return root
    parent = os.path.dirname(os.path.abspath(root))
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".builtin_tmp_", dir=parent)
    except OSError as error:  # HOME read-only or a file in the way: say where, and how to choose another place
        raise _write_error(parent, error) from None
    try:
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            for label, name in enumerate(CLASSES):
                folder = os.path.join(tmp, split, name)
                os.makedirs(folder)
                for i in range(count):
                    image, _ = example(label, split=split, index=i, seed=seed)
                    Image.fromarray(image).save(os.path.join(folder, f"{name}_{i:05d}.jpg"), quality=92)
        with open(os.path.join(tmp, "COMPLETE"), "w") as f:
            f.write(f"builtin v{VERSION}: {len(CLASSES)} classes, {train_per_class}/{val_per_class} per class\n")
    except OSError as error:  # a full or read-only disk: nothing half-written stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(parent, error) from None
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(os.path.join(root, "COMPLETE")):
            raise
    return root


def ensure(root: str | None = None, **kwargs) -> str:
    """The builtin dataset folder, generated on first use (a few seconds)."""
    return generate(root or default_root(), **kwargs)
