"""Reads PyTorch ``torch.save`` checkpoints without PyTorch and without running pickled code.

A ``torch.save`` file (PyTorch >= 1.6) is a zip archive: ``<root>/data.pkl`` is a pickle of
the object tree whose tensors point, through pickle "persistent ids", at raw little-endian
buffers ``<root>/data/<key>``. This module unpickles ``data.pkl`` with an unpickler that
resolves exactly the handful of globals a state dict needs (tensor rebuild functions,
storage types, ``OrderedDict``) to local, side-effect-free stand-ins. Every other global
(``argparse.Namespace`` in a training checkpoint, or anything malicious) becomes an inert
placeholder that is never called with its real implementation, so no code from the file
ever runs.

Correctness is verified against files written by real ``torch.save`` (committed fixtures
in ``tests/fixtures/pth/`` made by ``tests/fixtures/make_pth.py``), including one whose pickle
would run a shell command if it were loaded with plain ``pickle``.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from typing import Any

import numpy as np

# torch storage class name -> NumPy dtype (little-endian, as torch.save writes on x86/ARM).
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class Placeholder:
    """Stands in for a global the reader does not need (a class or a function).

    Unpickling "calls" it (REDUCE) or instantiates it (NEWOBJ) with the pickled arguments;
    both only store them. Nothing of the original implementation is imported or run.
    """

    qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<unread {self.qualname}>"


def _placeholder_class(qualname: str) -> type:
    return type("Placeholder", (Placeholder,), {"qualname": qualname})


def _rebuild_tensor(storage, storage_offset, size, stride, *args, **kwargs) -> np.ndarray:
    flat = storage
    if not size:
        return np.array(flat[storage_offset])
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[storage_offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)  # own the memory; the storage buffer may be shared


def _rebuild_parameter(data, *args, **kwargs):
    return data


_SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._root = root
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        return _placeholder_class(f"{module}.{name}")

    def persistent_load(self, pid):
        # ("storage", storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"Unsupported persistent id in checkpoint: {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if key not in self._storages:
            if not isinstance(storage_type, _StorageType):
                raise pickle.UnpicklingError(f"Unsupported storage type {storage_type!r} for key {key}")
            raw = self._archive.read(f"{self._root}/data/{key}")
            dtype = _STORAGE_DTYPES[storage_type.name]
            if dtype == "bfloat16":
                # bfloat16 is the top half of a float32.
                halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                array = halves.view(np.float32)
            else:
                array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
            self._storages[key] = array
        return self._storages[key]


def read_torch_file(path: str) -> Any:
    """Loads the object tree of a ``torch.save`` zip file, tensors as NumPy arrays.

    Raises:
        ValueError: if the file is not a PyTorch zip checkpoint (e.g. the pre-1.6 legacy
            format), with what to do instead.
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a PyTorch zip checkpoint (torch.save of PyTorch >= 1.6). Legacy "
            "checkpoints: re-save them with `torch.save(torch.load(f), g)` in PyTorch >= 1.6 first."
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError(f"{path} has {len(pickles)} data.pkl entries; expected exactly one.")
        root = pickles[0][: -len("/data.pkl")] if "/" in pickles[0] else ""
        return _SafeUnpickler(archive.read(pickles[0]), archive, root).load()


def extract_state_dict(obj: Any, path: str = "<checkpoint>") -> dict[str, np.ndarray]:
    """Finds the state dict in a checkpoint object and strips a ``module.`` prefix.

    Accepts a bare state dict, ``{"model": sd}`` or ``{"state_dict": sd}`` (the official
    PfLayer, timm and DeiT layouts), with or without DataParallel's ``module.`` prefix.

    Raises:
        ValueError: when no mapping of names to arrays is found.
    """
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, np.ndarray) for v in obj.values()):
        keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"No state dict found in {path}: expected a mapping of parameter names to tensors, "
            f"bare or under 'model' or 'state_dict'. Found: {keys}"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads the state dict of an official (or timm/DeiT-style) PyTorch checkpoint file."""
    return extract_state_dict(read_torch_file(path), path)
