"""The data sources behind ``--dataset``: one registry for training and export.

Grammar: ``KIND`` or ``KIND:ARGUMENT``; a string whose part before the first ``:`` is no
registered kind is a TFDS name (``imagenet2012``, ``imagenet2012:5.1.0``, ``cifar10``):

- ``builtin``: the builtin dataset (:mod:`builtin_data`, generated on first use);
- ``synthetic``: random tensors held in memory (throughput runs; export: uniform random pixels);
- ``folder:PATH``: ``PATH/train/<class>/...`` and ``PATH/val/<class>/...`` for training, any image
  file under ``PATH`` for export;
- ``tfds:NAME`` or just ``NAME``: a prepared TFDS dataset (``--data_dir``).

Each kind is one :class:`DataSource` subclass, registered with :func:`register`. A source
checks its argument (:func:`parse`, no I/O), resolves its classes, splits and counts
(:meth:`DataSource.resolve`), yields the encoded examples the training and evaluation
pipelines of :mod:`pf_keras_training.data` decode (:meth:`DataSource.encoded`,
:meth:`DataSource.read`), and ``num`` eval-transformed RGB images for export's calibration,
validation and benchmark inputs (:meth:`DataSource.images`). Adding a source is its class and
one ``register`` call; ``resolve`` and ``encoded`` are all it must write (``images`` then
decodes the first examples of its eval split)::

    @sources.register
    @dataclasses.dataclass(frozen=True)
    class Shards(sources.DataSource):
        kind = "shards"
        form = "shards:PATTERN"
        argument_usage = "a file pattern, as in shards:/data/*.tfrecord"

        def resolve(self, cfg): ...
        def encoded(self, split, ctx, *, seed, epoch, cfg, training): ...
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import stat
from collections.abc import Callable, Iterable
from typing import ClassVar

import numpy as np
import tensorflow as tf

import pf_keras
from pf_keras import safe_open
from pf_keras.preprocessing import resize_and_crop
from pf_keras_training import builtin_data
from pf_keras_training.recipes import DataConfig

EXPORT_CROP_FRACTION = 0.875  # export's images: the reference eval transform (resize 256, centre crop 224), bilinear
EXPORT_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# A folder's image files larger than this are skipped (counted like undecodable ones) without being read: 8
# bytes per pixel of the default 40 MP limit (16-bit RGBA stored uncompressed) is 320 MB. Reading is whole-file,
# so a 20 GB file (or a sparse one) would otherwise be allocated in memory.
MAX_IMAGE_FILE_BYTES = 512 << 20

_REGISTRY: dict[str, type[DataSource]] = {}
FALLBACK = "tfds"  # the kind of a string that names no registered kind


@dataclasses.dataclass(frozen=True)
class DataSource:
    """One kind of dataset. Parsed (``name``, ``argument``), then resolved (classes and counts filled in).

    Attributes:
        name: str. The ``--dataset`` string.
        argument: str. Its part after ``KIND:`` (the whole string for a bare TFDS name).
        data_dir: str or None. ``--data_dir`` (TFDS's data folder).
        num_classes, train_examples, eval_examples: int. Filled in by :meth:`resolve`.
        class_names: tuple of str. Filled in by :meth:`resolve` where the source has names.
    """

    kind: ClassVar[str] = ""
    form: ClassVar[str] = ""  # how error lines spell it, e.g. "folder:PATH"; defaults to ``kind``
    argument_usage: ClassVar[str] = ""  # "" = takes no argument; else what it needs, as in "a path, as in folder:/x"

    name: str = ""
    argument: str = ""
    data_dir: str | None = None
    num_classes: int = 0
    train_examples: int = 0
    eval_examples: int = 0
    class_names: tuple[str, ...] = ()

    # ------------------------------------------------------------ training and evaluation

    def resolve(self, cfg: DataConfig) -> DataSource:
        """This source with its classes, split sizes (capped by ``cfg.train_examples``/``eval_examples``) and
        files; ValueError (one line, with instructions) when the data is missing or empty."""
        raise NotImplementedError

    def encoded(self, split: str, ctx: tf.distribute.InputContext, *, seed: int, epoch: int, cfg: DataConfig,
                training: bool) -> tf.data.Dataset:
        """``(key, label)`` of this host's shard of ``split`` ("train" or "val") in the epoch's order, where
        :meth:`read` turns a key into the encoded image; training streams repeat forever and their order is a
        pure function of (``seed``, ``epoch``, host)."""
        raise NotImplementedError(f"The {self.kind!r} source has no encoded examples. Received: dataset={self.name!r}")

    def read(self, key: tf.Tensor) -> tf.Tensor:
        """The encoded image of ``key``; runs inside the pipeline's per-file error handling. Defaults to the key."""
        return key

    def train_files_per_host(self, ctx: tf.distribute.InputContext) -> int:
        """Training files one host passes through per epoch (bounds the run of skipped files); 0 = unknown."""
        del ctx
        return 0

    def location(self, split: str) -> str:
        """Where ``split`` is read from and how big it is, for error lines."""
        return f"{self.name} ({self.train_examples if split == 'train' else self.eval_examples} examples)"

    def in_memory(self, split: str, ctx: tf.distribute.InputContext, cfg: DataConfig, *, seed: int,
                  count: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``count`` (normalised images, labels) held in memory that stand in for decoded examples, or None
        (the default): the pipeline decodes :meth:`encoded`."""
        del split, ctx, cfg, seed, count
        return None

    # ------------------------------------------------------------ export

    def images(self, num: int, size: int, *, seed: int = 0) -> np.ndarray:
        """``num`` RGB ``uint8`` images ``(num, size, size, 3)``, eval-transformed (:func:`eval_pixels`).

        Defaults to the first decodable images of the eval split, repeated when there are fewer.
        """
        del seed
        source = self.resolve(DataConfig(dataset=self.name, data_dir=self.data_dir))
        ctx = tf.distribute.InputContext()
        keys = source.encoded("val", ctx, seed=0, epoch=0, cfg=DataConfig(dataset=self.name), training=False)
        images = _first_decodable((lambda key=key: source.read(key) for key, _ in keys), num, size)
        return _repeat_to(images, num, self.name)


# ---------------------------------------------------------------- registry


def register(cls: type[DataSource]) -> type[DataSource]:
    """Adds a source class under its ``kind`` (usable as a class decorator); ValueError if the kind is taken."""
    if not cls.kind or ":" in cls.kind:
        raise ValueError(f"A source needs a `kind` without ':'. Received: kind={cls.kind!r}")
    if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
        raise ValueError(f"The source kind is taken by {_REGISTRY[cls.kind].__name__}. Received: kind={cls.kind!r}")
    _REGISTRY[cls.kind] = cls
    return cls


def unregister(kind: str) -> None:
    """Removes a registered kind (tests that register their own)."""
    if kind == FALLBACK:
        raise ValueError(f"The fallback kind cannot be removed. Received: kind={kind!r}")
    _REGISTRY.pop(kind, None)


def kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order."""
    return tuple(_REGISTRY)


def forms() -> list[str]:
    """The ``--dataset`` forms of the registered kinds other than the fallback, for error lines.

    Example:
        >>> forms()[:3]
        ['builtin', 'synthetic', 'folder:PATH']
    """
    return [c.form or k for k, c in _REGISTRY.items() if k != FALLBACK]


def parse(dataset: str | None, *, data_dir: str | None = None) -> DataSource:
    """The (unresolved) source a ``--dataset`` string names; None is ``builtin``. Checks the form only.

    Example:
        >>> parse("folder:/data/x").kind, parse("imagenet2012:5.1.0").argument
        ('folder', 'imagenet2012:5.1.0')
    """
    dataset = "builtin" if dataset is None else dataset
    kind, colon, argument = dataset.partition(":")
    cls = _REGISTRY.get(kind)
    if cls is None:
        cls, argument = _REGISTRY[FALLBACK], dataset
    elif cls.argument_usage and not argument:
        raise ValueError(f"`{kind}:` needs {cls.argument_usage}. Received: dataset={dataset!r}")
    elif not cls.argument_usage and colon:
        raise ValueError(f"`{kind}` takes no argument. Received: dataset={dataset!r}")
    return cls(name=dataset, argument=argument, data_dir=data_dir)


def resolve(cfg: DataConfig) -> DataSource:
    """The resolved source of ``cfg.dataset`` (and ``cfg.data_dir``)."""
    return parse(cfg.dataset, data_dir=cfg.data_dir).resolve(cfg)


# ---------------------------------------------------------------- helpers


def eval_pixels(image, size: int) -> np.ndarray:
    """One decoded image (H, W, 1|3|4) -> export's ``uint8`` (size, size, 3): shorter side to
    ``size / 0.875`` (bilinear), centre crop, rounded."""
    image = tf.convert_to_tensor(image)
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    image = image[..., :3]
    image = resize_and_crop(image, size=size, crop_fraction=EXPORT_CROP_FRACTION, interpolation="bilinear")
    return np.clip(np.rint(image.numpy()), 0, 255).astype(np.uint8)


def _export_pixels(encoded, size: int) -> np.ndarray | None:
    """:func:`eval_pixels` of one encoded image; None for bytes that are not a decodable image or whose header
    declares more pixels than the training pipeline takes (``data.MAX_IMAGE_PIXELS``; checked before decoding)."""
    from pf_keras_training import data  # noqa: PLC0415 (data imports this module)

    try:
        encoded = tf.convert_to_tensor(encoded, tf.string)
        if not 0 <= int(data.header_pixels(encoded)) <= data.MAX_IMAGE_PIXELS:
            return None
        image = data.decode_full(encoded)
    except tf.errors.OpError:  # truncated, empty, not an image, unreadable
        return None
    return eval_pixels(image, size)


def _first_decodable(reads: Iterable[Callable[[], object]], num: int, size: int) -> list[np.ndarray]:
    """:func:`_export_pixels` of the images returned by ``reads`` (each a call giving encoded bytes), in order,
    until ``num`` were decodable; a read that fails (``OSError``, a TensorFlow error) is skipped."""
    images = []
    for read in reads:
        try:
            image = _export_pixels(read(), size)
        except (OSError, tf.errors.OpError):  # a file that cannot be read
            continue
        if image is not None:
            images.append(image)
            if len(images) == num:
                break
    return images


def _listed_image(path: str) -> str | None:
    """How :func:`_list_folder` lists ``path``: None if it is not a regular file (after symlinks: FIFOs, devices,
    folders and broken links are left out), ``""`` if it exceeds :data:`MAX_IMAGE_FILE_BYTES` (an empty key, whose
    read fails: skipped and counted in the pipeline, never read), else ``path``."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return path if info.st_size <= MAX_IMAGE_FILE_BYTES else ""


def _repeat_to(images: list, num: int, name: str) -> np.ndarray:
    if not images:
        raise ValueError(f"`dataset` has no decodable images. Received: dataset={name!r}")
    found = len(images)
    return np.stack([images[i % found] for i in range(num)])  # fewer than requested: repeated, in order


# ---------------------------------------------------------------- folder and builtin


def _list_folder(root: str, split: str, class_names: tuple[str, ...] | None) -> tuple[tuple, tuple, tuple]:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise ValueError(
            f"A folder dataset needs PATH/train/<class>/... and PATH/val/<class>/...; {split_dir} is missing. "
            f"Received: dataset='folder:{root}'"
        )
    # hidden folders (.ipynb_checkpoints, .git) are no classes, as hidden files are no examples
    # Sorted by their UTF-8 bytes (code point order) whatever the locale: the same classes, labels and names
    # whether Python decodes file names as UTF-8 or (LC_ALL=C with PYTHONUTF8=0) as ASCII with surrogates.
    listed_names = sorted((d for d in os.listdir(split_dir)
                           if not d.startswith(".") and os.path.isdir(os.path.join(split_dir, d))), key=os.fsencode)
    for name in listed_names:
        if utf8_text(name) is None:
            raise ValueError(f"A class folder name is not valid UTF-8 (class names go into the model's metadata): "
                             f"{os.path.join(split_dir, name)!r}. Rename it. Received: dataset='folder:{root}'")
    names = tuple(utf8_text(name) for name in listed_names)
    if class_names is not None and names != class_names:
        raise ValueError(
            f"The train and val class folders must be the same. Train classes: {list(class_names)}. "
            f"Received: val classes={list(names)}"
        )
    if not names:
        raise ValueError(f"No class folders found in {split_dir}. Received: dataset='folder:{root}'")
    paths, labels = [], []
    for label, name in enumerate(listed_names):
        folder = os.path.join(split_dir, name)
        found = len(paths)
        for file in _class_files(folder):
            listed = _listed_image(file)
            if listed is not None:
                paths.append(utf8_text(listed) or "")  # tf.data takes UTF-8 paths: others skipped, counted
                labels.append(label)
        if split == "train" and len(paths) == found:
            raise ValueError(f"The class folder {folder} holds no files: a class without training images would "
                             f"still get an output. Remove it (from val too) or add images. "
                             f"Received: dataset='folder:{root}'")
    return tuple(paths), tuple(labels), names


def _class_files(folder: str) -> list[str]:
    """The paths of the non-hidden entries that are no folders in ``folder`` and, as torchvision's
    ``ImageFolder`` reads them, in its sub-folders at any depth (symlinked ones included, each folder listed
    once: a link cycle ends); sorted by their path below ``folder`` as UTF-8 bytes (a flat class folder: by
    name, as before). Hidden sub-folders are skipped as hidden files are."""
    found: list[tuple[bytes, str]] = []
    seen: set[tuple[int, int]] = set()
    pending = [(folder, b"")]
    while pending:
        current, relative = pending.pop()
        try:
            info = os.stat(current)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(current) as entries:  # the entry types from the listing: no stat per file
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    key = relative + os.fsencode(entry.name)
                    try:
                        folder_entry = entry.is_dir()  # follows a link
                    except OSError:
                        folder_entry = False
                    if folder_entry:
                        pending.append((entry.path, key + b"/"))
                    else:
                        found.append((key, entry.path))
        except (OSError, ValueError):  # vanished, unreadable, a name too long: nothing (more) listed there
            continue
    return [path for _, path in sorted(found)]


def utf8_text(name: str) -> str | None:
    """``name`` (a path or name from ``os.listdir``) as the text its bytes spell in UTF-8; None if they are not
    UTF-8. The bytes decide, not the locale: under ``LC_ALL=C`` with ``PYTHONUTF8=0`` Python lists ``é`` as two
    surrogates, which are valid UTF-8 bytes (the path TensorFlow needs is the UTF-8 text)."""
    try:
        return os.fsencode(name).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _subset(paths: tuple, labels: tuple, count: int) -> tuple[tuple, tuple]:
    """A fixed pseudo-random subset of ``count`` files (all classes represented), in listing order."""
    if not count or count >= len(paths):
        return paths, labels
    keep = np.sort(np.random.default_rng(1234).permutation(len(paths))[:count])
    return tuple(paths[i] for i in keep), tuple(labels[i] for i in keep)


@dataclasses.dataclass(frozen=True)
class FolderSource(DataSource):
    """``folder:PATH``: one class per sub-folder of ``PATH/train`` and ``PATH/val`` (its files at any depth);
    any format ``tf.io.decode_image`` reads. Files are read inside the pipeline, so one that vanished is skipped."""

    kind: ClassVar[str] = "folder"
    form: ClassVar[str] = "folder:PATH"
    argument_usage: ClassVar[str] = "a path, as in folder:/data/my_images"

    root: str = ""
    train_files: tuple[tuple[str, ...], tuple[int, ...]] = ((), ())
    eval_files: tuple[tuple[str, ...], tuple[int, ...]] = ((), ())

    def _root(self) -> str:
        return self.argument

    def _export_folder(self) -> str:
        return self.argument

    def resolve(self, cfg: DataConfig) -> FolderSource:
        root = self._root()
        train_paths, train_labels, names = _list_folder(root, "train", None)
        eval_paths, eval_labels, _ = _list_folder(root, "val", names)
        train_paths, train_labels = _subset(train_paths, train_labels, cfg.train_examples)
        eval_paths, eval_labels = _subset(eval_paths, eval_labels, cfg.eval_examples)
        if not train_paths or not eval_paths:
            split = "train" if not train_paths else "val"
            raise ValueError(
                f"The {split} split has no files: {os.path.join(root, split)}/<class>/ folders are empty. "
                f"Received: dataset={self.name!r}"
            )
        return dataclasses.replace(self, num_classes=len(names), train_examples=len(train_paths),
                                   eval_examples=len(eval_paths), class_names=names, root=root,
                                   train_files=(train_paths, train_labels), eval_files=(eval_paths, eval_labels))

    def encoded(self, split, ctx, *, seed, epoch, cfg, training):
        paths, labels = self.train_files if split == "train" else self.eval_files
        order = np.arange(len(paths))
        if training:
            order = np.random.default_rng([seed, epoch, 77]).permutation(len(paths))
        order = order[ctx.input_pipeline_id::ctx.num_input_pipelines]
        ds = tf.data.Dataset.from_tensor_slices(
            (np.asarray(paths, dtype=object)[order].astype(str), np.asarray(labels, np.int64)[order]))
        return ds.repeat() if training else ds

    def read(self, key):
        return tf.io.read_file(key)

    def train_files_per_host(self, ctx):
        return max(1, len(self.train_files[0]) // ctx.num_input_pipelines)

    def location(self, split):
        files = len((self.train_files if split == "train" else self.eval_files)[0])
        return f"{self.root}/{split} ({files} files listed)"

    def images(self, num, size, *, seed=0):
        """``num`` images picked (seeded) from the image files anywhere under the folder, repeated if fewer."""
        path = self._export_folder()
        if not os.path.isdir(path):
            raise ValueError(f"`dataset` folder must be an existing directory. Received: dataset='folder:{path}'")
        files = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                       if name.lower().endswith(EXPORT_IMAGE_SUFFIXES))
        if not files:
            raise ValueError(f"`dataset` folder holds no image files ({', '.join(EXPORT_IMAGE_SUFFIXES)}). "
                             f"Received: dataset='folder:{path}'")
        # in a seeded order, skipping what is not a decodable image of at most MAX_IMAGE_PIXELS
        order = np.random.default_rng(seed).permutation(len(files))
        # regular files of at most MAX_IMAGE_FILE_BYTES, never blocking (a FIFO, a device: OSError, skipped)
        images = _first_decodable((lambda i=i: safe_open.read_bytes(files[i], MAX_IMAGE_FILE_BYTES) for i in order),
                                  num, size)
        if not images:
            raise ValueError(f"`dataset` folder holds no decodable image ({len(files)} image files, none decodable "
                             f"within the pixel limit). Received: dataset='folder:{path}'")
        return _repeat_to(images, num, self.name)


@dataclasses.dataclass(frozen=True)
class BuiltinSource(FolderSource):
    """``builtin``: the builtin dataset, a folder dataset generated on first use (export: its train split)."""

    kind: ClassVar[str] = "builtin"
    form: ClassVar[str] = "builtin"
    argument_usage: ClassVar[str] = ""

    def _root(self) -> str:
        return builtin_data.ensure()

    def _export_folder(self) -> str:
        return os.path.join(builtin_data.ensure(), "train")


# ---------------------------------------------------------------- synthetic


@dataclasses.dataclass(frozen=True)
class SyntheticSource(DataSource):
    """``synthetic``: normalised random tensors held in memory, ImageNet-sized (no decoding; throughput only)."""

    kind: ClassVar[str] = "synthetic"

    def resolve(self, cfg):
        if cfg.eval_examples < 0 or cfg.train_examples < 0:
            raise ValueError(f"Example counts must be >= 0. Received: train_examples={cfg.train_examples}, "
                             f"eval_examples={cfg.eval_examples}")
        return dataclasses.replace(self, num_classes=pf_keras.imagenet.NUM_CLASSES,
                                   train_examples=cfg.train_examples or 1_281_167,
                                   eval_examples=cfg.eval_examples or 50_000)

    def in_memory(self, split, ctx, cfg, *, seed, count):
        rng = np.random.default_rng([seed, ctx.input_pipeline_id])
        images = rng.standard_normal((count, cfg.image_size, cfg.image_size, 3), np.float32)
        return images, rng.integers(0, self.num_classes, count).astype(np.int64)

    def images(self, num, size, *, seed=0):
        """Uniform random pixels (seeded): a poor calibration set, but dependency-free."""
        return np.random.default_rng(seed).integers(0, 256, (num, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------- TFDS


def tfds_builder(name: str, data_dir: str | None):
    """The TFDS builder of a prepared dataset; ValueError naming close TFDS names or the manual-download steps."""
    import tensorflow_datasets as tfds

    _check_regular_files(os.path.join(data_dir or os.path.expanduser("~/tensorflow_datasets"),
                                      re.split(r"[/:]", name, maxsplit=1)[0]), name)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 (an unknown name, or a builder that cannot load: one line either way)
        base = re.split(r"[/:]", name, maxsplit=1)[0]
        close = difflib.get_close_matches(base, tfds.list_builders(), n=5, cutoff=0.6)
        if isinstance(e, tfds.core.registered.DatasetNotFoundError):
            reason = f"close TFDS names: {close}" if close else "no TFDS name is close"
        else:
            reason = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
        raise ValueError(
            f"Unknown dataset ({reason}). Use a TFDS name (e.g. imagenet2012), {', '.join(forms()[:-1])} or "
            f"{forms()[-1]}. Received: dataset={name!r}"
        ) from None
    if not tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        manual = os.path.join(data_dir or os.path.expanduser("~/tensorflow_datasets"), "downloads", "manual")
        raise ValueError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir}. ImageNet needs a manual download: put "
            f"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org) into {manual}, then run "
            f"`tfds build {name} --data_dir {data_dir or '~/tensorflow_datasets'}` (README: 'Preparing ImageNet'). "
            f"Received: dataset={name!r}, data_dir={data_dir!r}"
        )
    return builder


def _check_regular_files(folder: str, name: str) -> None:
    """ValueError naming the first FIFO, device or socket under a local dataset ``folder`` (TFDS opens its JSON
    and record files with blocking reads: a FIFO hangs it). A remote path (``gs://``) or no folder: nothing."""
    if "://" in folder or not os.path.isdir(folder):
        return
    for root, dirs, files in os.walk(folder):
        for entry in files + dirs:
            path = os.path.join(root, entry)
            try:
                mode = os.stat(path).st_mode
            except OSError:  # a broken link: TFDS reports what it cannot find
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ValueError(f"The TFDS folder holds something that is not a file or a folder (a FIFO or a "
                                 f"device would block the reader): {path}. Received: dataset={name!r}")


@dataclasses.dataclass(frozen=True)
class TfdsSource(DataSource):
    """A prepared TFDS dataset (``tfds:NAME`` or just ``NAME``) with ``image`` and ``label`` features; images are
    read as raw encoded bytes (``SkipDecoding``) so the train crop is decoded partially."""

    kind: ClassVar[str] = "tfds"
    argument_usage: ClassVar[str] = "a TFDS name, as in tfds:imagenet2012"

    def _eval_split(self, splits) -> str:
        return "validation" if "validation" in splits else "test"

    def resolve(self, cfg):
        builder = tfds_builder(self.argument, self.data_dir)
        splits = builder.info.splits
        eval_split = self._eval_split(splits)
        train_n = cfg.train_examples or splits["train"].num_examples
        eval_n = cfg.eval_examples or splits[eval_split].num_examples
        if not train_n or not eval_n:
            raise ValueError(f"The TFDS dataset has an empty {'train' if not train_n else eval_split} split. "
                             f"Received: dataset={self.name!r}")
        return dataclasses.replace(self, num_classes=builder.info.features["label"].num_classes,
                                   train_examples=train_n, eval_examples=eval_n)

    def encoded(self, split, ctx, *, seed, epoch, cfg, training):
        import tensorflow_datasets as tfds

        builder = tfds_builder(self.argument, self.data_dir)
        tfds_split = "train" if split == "train" else self._eval_split(builder.info.splits)
        if split == "train" and cfg.train_examples:
            tfds_split = f"train[:{cfg.train_examples}]"
        if split != "train" and cfg.eval_examples:
            tfds_split = f"{tfds_split}[:{cfg.eval_examples}]"
        read_config = tfds.ReadConfig(input_context=ctx, shuffle_seed=int(seed * 100_003 + epoch),
                                      try_autocache=False)
        ds = builder.as_dataset(split=tfds_split, shuffle_files=training, read_config=read_config,
                                decoders={"image": tfds.decode.SkipDecoding()})
        ds = ds.map(lambda e: (e["image"], tf.cast(e["label"], tf.int64)))
        if training:
            ds = ds.shuffle(cfg.shuffle_buffer, seed=int(seed * 7919 + epoch), reshuffle_each_iteration=False).repeat()
        return ds

    def location(self, split):
        return (f"TFDS {self.name} ({self.data_dir}) "
                f"({self.train_examples if split == 'train' else self.eval_examples} examples)")

    def images(self, num, size, *, seed=0):
        """The first ``num`` decodable images of the validation split (else ``train``), TFDS's own order: the
        encoded bytes through the pipelines' decoder and pixel limit (TFDS's own decoding has neither)."""
        import tensorflow_datasets as tfds

        del seed  # TFDS order is already deterministic with shuffle_files=False
        try:
            builder = tfds.builder(self.argument, data_dir=self.data_dir)
            split = "validation" if "validation" in builder.info.splits else "train"
            dataset = tfds.load(self.argument, split=split, shuffle_files=False, data_dir=self.data_dir,
                                decoders={"image": tfds.decode.SkipDecoding()})
        except Exception as error:  # noqa: BLE001 (TFDS raises many types: unknown name, not prepared, no network)
            raise ValueError(
                f"`dataset` must be {', '.join(repr(f) for f in forms())} or a TFDS dataset that is available here "
                f"({type(error).__name__}: {error}). Received: dataset={self.name!r}"
            ) from error
        images = _first_decodable((lambda example=example: example["image"] for example in dataset), num, size)
        if not images:
            raise ValueError(f"`dataset` has no images in split {split!r}. Received: dataset={self.name!r}")
        return _repeat_to(images, num, self.name)


for _cls in (BuiltinSource, SyntheticSource, FolderSource, TfdsSource):
    register(_cls)
