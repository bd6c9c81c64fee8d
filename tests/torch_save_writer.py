"""Writes files in the ``torch.save`` zip format without PyTorch (test-only).

Two levels:

- :func:`save_state_dict` writes a state dict the way ``torch.save`` does (protocol 2, zip
  format; compare ``pickletools.dis`` of ``tests/fixtures/pth/resnet_max_small.pth``, which
  real torch wrote): ``<root>/data.pkl`` with ``torch._utils._rebuild_tensor_v2`` calls whose
  storages are persistent ids ``("storage", torch.FloatStorage, key, "cpu", numel)``, one
  ``<root>/data/<key>`` file per storage, ``byteorder`` and ``version``. The transformer
  tests feed these to ``weights="*.pth"`` and ``pf_keras.convert``.
- :func:`encode` and :func:`write_archive` build any pickle and archive, well-formed or
  not, from a small tree of Python values, :class:`Global`, :class:`Call`,
  :class:`Persistent` and :class:`Raw`; ``tests/hostile_checkpoints.py`` writes its corpus
  with them.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zipfile
from typing import Any

import numpy as np

STORAGE_TYPES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


@dataclasses.dataclass(frozen=True)
class Global:
    """A pickled reference to ``module.name`` (GLOBAL)."""

    module: str
    name: str


@dataclasses.dataclass(frozen=True)
class Call:
    """``func(*args)`` (REDUCE); ``func`` is any encodable value, usually a :class:`Global`."""

    func: Any
    args: tuple


@dataclasses.dataclass(frozen=True)
class Persistent:
    """A persistent id (BINPERSID) whose value is ``pid``."""

    pid: Any


@dataclasses.dataclass(frozen=True)
class Raw:
    """Pickle bytes inserted as they are."""

    data: bytes


def encode(value: Any) -> bytes:
    """The pickle opcodes (protocol 2, no PROTO/STOP) that push ``value``."""
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, Global):
        return b"c" + f"{value.module}\n{value.name}\n".encode()
    if isinstance(value, Call):
        return encode(value.func) + encode(tuple(value.args)) + b"R"
    if isinstance(value, Persistent):
        return encode(value.pid) + b"Q"
    if value is None:
        return b"N"
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"J" + struct.pack("<i", value)
        data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(data)]) + data if len(data) < 256 else b"\x8b" + struct.pack("<I", len(data)) + data
    if isinstance(value, float):
        return b"G" + struct.pack(">d", value)
    if isinstance(value, str):
        data = value.encode()
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(value, bytes):
        return b"B" + struct.pack("<I", len(value)) + value
    if isinstance(value, tuple):
        return b"(" + b"".join(encode(v) for v in value) + b"t"
    if isinstance(value, list):
        return b"](" + b"".join(encode(v) for v in value) + b"e"
    if isinstance(value, dict):
        return b"}(" + b"".join(encode(k) + encode(v) for k, v in value.items()) + b"u"
    raise TypeError(f"cannot encode {type(value).__name__}")


def pickle_of(value: Any) -> bytes:
    """A complete protocol-2 pickle of ``value``."""
    return b"\x80\x02" + encode(value) + b"."


def tensor(storage_type: str, key: str, numel: int, offset: Any, size: Any, stride: Any, *extra: Any) -> Call:
    """A ``_rebuild_tensor_v2`` call as torch.save writes it (``extra`` replaces requires_grad/hooks)."""
    storage = Persistent(("storage", Global("torch", storage_type), key, "cpu", numel))
    tail = extra or (False, Call(Global("collections", "OrderedDict"), ()))
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), (storage, offset, size, stride, *tail))


def write_archive(
    path: str,
    pickled: bytes,
    storages: dict[str, bytes],
    *,
    byteorder: str | None = "little",
    root: str | None = None,
    compression: int = zipfile.ZIP_STORED,
) -> None:
    """Writes the zip: ``<root>/data.pkl``, ``<root>/data/<key>`` per storage, byteorder, version."""
    root = os.path.basename(path).split(".")[0] if root is None else root
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr(f"{root}/data.pkl", pickled)
        if byteorder is not None:
            archive.writestr(f"{root}/byteorder", byteorder)
        for key, data in storages.items():
            archive.writestr(f"{root}/data/{key}", data)
        archive.writestr(f"{root}/version", "3\n")


def save_state_dict(
    path: str,
    state_dict: dict[str, np.ndarray],
    *,
    wrap_key: str | None = None,
    keep_dtypes: bool = False,
    byteorder: str = "little",
) -> None:
    """Writes ``state_dict`` like ``torch.save``, optionally as ``{wrap_key: state_dict}``.

    Integer arrays are stored as int64, everything else as float32, unless ``keep_dtypes``
    (then every dtype of :data:`STORAGE_TYPES` keeps its own storage type).
    """
    arrays = {}
    for key, value in state_dict.items():
        array = np.asarray(value)
        if not keep_dtypes:
            array = array.astype("int64" if np.issubdtype(array.dtype, np.integer) else "float32")
        arrays[key] = np.array(array, order="C")  # (ascontiguousarray would make scalars 1-d)
    order = "<" if byteorder == "little" else ">"
    tree = {
        key: tensor(STORAGE_TYPES[a.dtype], str(i), a.size, 0, a.shape, tuple(s // a.itemsize for s in a.strides))
        for i, (key, a) in enumerate(arrays.items())
    }
    storages = {str(i): a.astype(a.dtype.newbyteorder(order)).tobytes() for i, a in enumerate(arrays.values())}
    write_archive(path, pickle_of({wrap_key: tree} if wrap_key is not None else tree), storages, byteorder=byteorder)
