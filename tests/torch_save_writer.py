"""Writes state dicts (float32 / int64 arrays) in the ``torch.save`` zip format, without PyTorch.

Test-only: it lets the transformer tests feed ``weights="*.pth"`` and ``pf_keras.convert``
with checkpoints of the parity fixtures. The bytes follow what ``torch.save`` (protocol 2,
zip format) writes for a dict of contiguous CPU float tensors (compare
``pickletools.dis`` of ``tests/fixtures/pth/resnet_max_small.pth``, which real torch wrote):
``<root>/data.pkl`` with ``torch._utils._rebuild_tensor_v2`` calls whose storages are
persistent ids ``("storage", torch.FloatStorage, key, "cpu", numel)`` (``LongStorage`` for int64), one
``<root>/data/<key>`` file of little-endian bytes per storage, ``byteorder`` and ``version``.
"""

from __future__ import annotations

import os
import struct
import zipfile

import numpy as np

_STORAGES = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor(array: np.ndarray, key: str) -> bytes:
    strides = [s // array.itemsize for s in array.strides]
    storage_type = _global("torch", _STORAGES[array.dtype])
    storage = _tuple([_str("storage"), storage_type, _str(key), _str("cpu"), _int(array.size)])
    args = _tuple(
        [
            storage + b"Q",  # BINPERSID: the storage
            _int(0),  # storage offset
            _tuple([_int(s) for s in array.shape]),
            _tuple([_int(s) for s in strides]),
            b"\x89",  # requires_grad=False
            _global("collections", "OrderedDict") + b")R",  # backward hooks
        ]
    )
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def save_state_dict(path: str, state_dict: dict[str, np.ndarray], *, wrap_key: str | None = None) -> None:
    """Writes ``state_dict`` like ``torch.save``, optionally as ``{wrap_key: state_dict}``.

    Integer arrays are stored as int64, everything else as float32.
    """
    root = os.path.basename(path).split(".")[0]
    arrays = [
        np.array(a, dtype="<i8" if np.issubdtype(np.asarray(a).dtype, np.integer) else "<f4", order="C")
        for a in state_dict.values()
    ]
    body = b"".join(_str(k) + _tensor(a, str(i)) for i, (k, a) in enumerate(zip(state_dict, arrays, strict=True)))
    pickled = b"\x80\x02}(" + body + b"u"
    if wrap_key is not None:
        pickled = b"\x80\x02}" + _str(wrap_key) + pickled[2:] + b"s"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{root}/data.pkl", pickled + b".")
        archive.writestr(f"{root}/byteorder", "little")
        for i, array in enumerate(arrays):
            archive.writestr(f"{root}/data/{i}", array.tobytes())
        archive.writestr(f"{root}/version", "3\n")
