"""Reads PyTorch ``torch.save`` checkpoints without PyTorch, safely, from any source.

A ``torch.save`` file (PyTorch >= 1.6) is a zip archive: ``<root>/data.pkl`` is a pickle of
the object tree whose tensors point, through pickle "persistent ids", at raw buffers
``<root>/data/<key>`` in the byte order named by ``<root>/byteorder``.

The file is treated as hostile. Everything malformed, refused or over a limit raises
:class:`CheckpointError` (a ``ValueError``) with one line naming the file, the member or
tensor key and the problem; no other exception type and no signal comes out. In order:

1. The zip's end record is parsed first and more than ``max_members`` entries, or a
   central directory larger than ``max_members`` x 128 bytes, are refused (``zipfile``
   holds the whole directory in memory, parsed by its size). Members must be unique, unencrypted,
   stored or deflated, with a compressed size inside the file. A deflated member may
   inflate to at most ``max_compression_ratio`` x its compressed size (+1 MiB), and all the
   deflated members read to at most that ratio x the file size (+1 MiB) together.
2. ``data.pkl`` (at most ``max_pickle_bytes`` inflated) is interpreted by
   :mod:`pf_keras.weights.safe_pickle`, which runs no code: only the tensor rebuild
   functions, the storage types and ``OrderedDict`` are resolved, every other global is
   an inert :class:`Placeholder`, and opcodes and nesting are limited.
3. A storage ``("storage", <type>, key, location, numel)`` must name a known storage type
   and an existing member whose size is exactly ``numel`` x item size. Members are read as
   bounded streams into a buffer of the declared size (so nothing inflates past it; the
   CRC is checked at the end), after charging the size to the data budget.
4. A tensor ``(storage, offset, size, stride)`` must have int offset, sizes and strides
   >= 0 and its furthest element ``offset + sum((size_i - 1) * stride_i)`` inside the
   storage, all computed with Python ints *before* NumPy sees them; only then is the view
   built with ``as_strided`` (safe, as every element it can reach is inside the buffer).
   A tensor that is exactly its whole storage uses the storage buffer; any other view is
   copied, and copies may total at most ``copy_ratio`` x the file size (+1 MiB), so a
   stride-0 broadcast cannot turn a small file into a large allocation.

With the default :class:`ReadLimits` any file is refused or read within about 1 GiB of
tensor data plus the pickle's objects (measured: well under 2 GB and 60 s, see
``tests/weights/hostile_test.py``). Pass larger limits to read bigger checkpoints.

Correctness is verified against files written by real ``torch.save`` (committed fixtures
in ``tests/fixtures/pth/`` made by ``tests/fixtures/make_pth.py``); the hostile corpus is
written at test time by ``tests/hostile_checkpoints.py``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import struct
import zipfile
from typing import Any

import numpy as np

from pf_keras.weights import safe_pickle
from pf_keras.weights.errors import CheckpointError, describe, quote
from pf_keras.weights.safe_pickle import Placeholder

MiB = 1 << 20
GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    """Resource limits of :func:`read_torch_file`; the defaults fit every published checkpoint.

    Attributes:
        max_members: int. Zip entries (a checkpoint has one per storage); the central
            directory may also be at most 128 bytes per entry allowed.
        max_pickle_bytes: int. Inflated size of ``data.pkl`` (PfLayer checkpoints: < 100 KiB).
        max_pickle_ops: int. Pickle opcodes (about 25 per tensor), which bounds the pickle's
            time and objects.
        max_depth: int. Nesting of the object tree (state dicts: < 10; Python's recursion
            limit: 1000).
        max_data_bytes: int. Tensor data held in memory: storages plus copied views.
        max_compression_ratio: int. Inflated / compressed size of a deflated member, and of
            all of them against the file size (torch.save stores members uncompressed;
            re-zipped weights compress about 1.1x).
        copy_ratio: int. Copied (non-whole-storage) views may total this many times the
            file size, plus 1 MiB.
    """

    max_members: int = 100_000
    max_pickle_bytes: int = 16 * MiB
    max_pickle_ops: int = 2_000_000
    max_depth: int = 100
    max_data_bytes: int = 1 * GiB
    max_compression_ratio: int = 10
    copy_ratio: int = 2


DEFAULT_LIMITS = ReadLimits()

_MAX_DIMS = 32  # NumPy 1.x's limit; state dicts have at most 5
_MAX_INDEX = 2**62  # any offset, size or stride at or above this is refused before arithmetic
_CHUNK = 1 * MiB  # read size of the bounded member streams
_SLACK = 1 * MiB
_DIRECTORY_ENTRY_BYTES = 128  # a torch.save directory entry: 46 bytes + name (~30) + zip64 extra (~28)

# torch storage class name -> (NumPy type code of the stored items, itemsize on disk).
_STORAGE_TYPES = {
    "FloatStorage": ("f4", 4),
    "DoubleStorage": ("f8", 8),
    "HalfStorage": ("f2", 2),
    "BFloat16Storage": ("u2", 2),  # bfloat16 is the top half of a float32; returned as float32
    "LongStorage": ("i8", 8),
    "IntStorage": ("i4", 4),
    "ShortStorage": ("i2", 2),
    "CharStorage": ("i1", 1),
    "ByteStorage": ("u1", 1),
    "BoolStorage": ("?", 1),
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str


class _Function(enum.Enum):
    REBUILD_TENSOR_V2 = "torch._utils._rebuild_tensor_v2"
    REBUILD_TENSOR = "torch._utils._rebuild_tensor"
    REBUILD_PARAMETER = "torch._utils._rebuild_parameter"
    REBUILD_PARAMETER_WITH_STATE = "torch._utils._rebuild_parameter_with_state"
    ORDERED_DICT = "collections.OrderedDict"


_FUNCTIONS = {f.value: f for f in _Function}
# Accepted argument counts: v2 has (storage, offset, size, stride, requires_grad, hooks[, metadata]).
_ARITY = {
    _Function.REBUILD_TENSOR_V2: (6, 7),
    _Function.REBUILD_TENSOR: (4,),
    _Function.REBUILD_PARAMETER: (3,),
    _Function.REBUILD_PARAMETER_WITH_STATE: (4,),
    _Function.ORDERED_DICT: (0,),
}


class _Storage:
    def __init__(self, member: str, type_name: str, numel: int, array: np.ndarray):
        self.member = member
        self.type_name = type_name
        self.numel = numel
        self.array = array  # 1-D, native byte order
        self.adopted = False  # a tensor took the buffer itself; later views copy


def read_torch_file(path: str | os.PathLike, *, limits: ReadLimits = DEFAULT_LIMITS) -> Any:
    """Loads the object tree of a ``torch.save`` zip file, tensors as NumPy arrays.

    Args:
        path: str. The checkpoint.
        limits: ReadLimits. Resource limits (see the module docstring).

    Returns:
        The object tree: dicts, lists, plain values, NumPy arrays for tensors (bfloat16 as
        float32) and :class:`Placeholder` for every other object.

    Raises:
        CheckpointError: one line naming the file, the member or key and the problem, for a
            file that is not a PyTorch zip checkpoint (e.g. the pre-1.6 legacy format),
            malformed, hostile or over a limit.
    """
    path = os.fspath(path)
    try:
        if not os.path.isfile(path):  # a FIFO or device would block or never end
            raise CheckpointError(f"{path}: not a regular file")
        size = os.path.getsize(path)
        _check_zip_directory(path, size, limits)
        with zipfile.ZipFile(path) as archive:
            return _Reader(path, size, archive, limits).load()
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - the trust boundary: every low-level error becomes one line
        raise CheckpointError(f"{path}: cannot read the checkpoint ({describe(error)})") from error


def _check_zip_directory(path: str, size: int, limits: ReadLimits) -> None:
    """Refuses non-zip files and archives with too many entries before ``zipfile`` loads the directory."""
    with open(path, "rb") as f:
        tail_size = min(size, 22 + 0xFFFF)
        f.seek(size - tail_size)
        tail = f.read(tail_size)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise CheckpointError(
                f"{path}: not a PyTorch zip checkpoint (torch.save of PyTorch >= 1.6). Legacy checkpoints: re-save "
                "them with `torch.save(torch.load(f), g)` in PyTorch >= 1.6 first."
            )
        entries, directory_size = struct.unpack_from("<HI", tail, at + 10)
        locator = tail.rfind(b"PK\x06\x07", 0, at)
        if locator >= 0 and at - locator == 20:  # zip64: the real numbers are in the zip64 record
            f.seek(struct.unpack_from("<Q", tail, locator + 8)[0])
            record = f.read(56)
            if len(record) == 56 and record[:4] == b"PK\x06\x06":
                entries, directory_size = struct.unpack_from("<QQ", record, 32)
    if entries > limits.max_members:
        raise CheckpointError(f"{path}: {entries} zip entries, more than the limit of {limits.max_members}")
    # zipfile parses the directory by its size, not by the count: bound the size too.
    if directory_size > limits.max_members * _DIRECTORY_ENTRY_BYTES:
        raise CheckpointError(
            f"{path}: zip central directory of {directory_size} bytes, more than {limits.max_members} entries of "
            f"{_DIRECTORY_ENTRY_BYTES} bytes"
        )


class _Reader:
    """One read of one archive; implements :class:`safe_pickle.Resolver`."""

    def __init__(self, path: str, size: int, archive: zipfile.ZipFile, limits: ReadLimits):
        self.path = path
        self.archive = archive
        self.limits = limits
        self.storages: dict[str, _Storage] = {}
        self.data_bytes = 0
        self.copied_bytes = 0
        self.copy_budget = limits.copy_ratio * size + _SLACK
        self.inflated_bytes = 0
        self.inflate_budget = limits.max_compression_ratio * size + _SLACK
        self.infos: dict[str, zipfile.ZipInfo] = {}
        for info in archive.infolist():
            if info.filename in self.infos:
                raise self.fail(f"member {quote(info.filename)}", "appears twice in the archive")
            self.infos[info.filename] = info
            self._check_info(info, size)
        pickles = [n for n in self.infos if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise self.fail("archive", f"has {len(pickles)} data.pkl members; a torch.save file has exactly one")
        self.pickle = pickles[0]
        self.root = self.pickle[: -len("data.pkl")]  # "" or "<root>/"
        self.byteorder = self._byteorder()

    def fail(self, where: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {where}: {problem}")

    # -- zip members ----------------------------------------------------------------------------
    def _check_info(self, info: zipfile.ZipInfo, size: int) -> None:
        where = f"member {quote(info.filename)}"
        if info.flag_bits & 0x1:
            raise self.fail(where, "is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise self.fail(where, f"uses compression method {info.compress_type}; only stored and deflated are read")
        if info.compress_size > size or info.header_offset > size:
            raise self.fail(
                where, f"claims {info.compress_size} bytes at offset {info.header_offset} of a {size}-byte file"
            )
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise self.fail(where, f"is stored but claims {info.file_size} bytes in {info.compress_size}")
        if info.file_size > self.limits.max_compression_ratio * info.compress_size + _SLACK:
            raise self.fail(
                where,
                f"inflates {info.compress_size} bytes to {info.file_size}, over the compression-ratio limit of "
                f"{self.limits.max_compression_ratio}",
            )

    def read_member(self, name: str, size: int, *, context: str = "") -> bytearray:
        """The member ``name``, which must hold exactly ``size`` bytes, read as a bounded stream."""
        where = f"{context}member {quote(name)}"
        info = self.infos.get(name)
        if info is None:
            raise self.fail(where, "is missing from the archive")
        if info.file_size != size:
            raise self.fail(where, f"holds {info.file_size} bytes; {size} expected")
        if info.compress_type != zipfile.ZIP_STORED:
            self.inflated_bytes += size
            if self.inflated_bytes > self.inflate_budget:
                raise self.fail(
                    where,
                    f"deflated members would inflate to {self.inflated_bytes} bytes, over "
                    f"{self.limits.max_compression_ratio} x the file size + 1 MiB",
                )
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        try:
            with self.archive.open(info) as stream:
                while got < size:
                    chunk = stream.read(min(_CHUNK, size - got))
                    if not chunk:
                        break
                    view[got : got + len(chunk)] = chunk
                    got += len(chunk)
                extra = stream.read(1)  # also makes zipfile check the CRC when the member is empty
        except Exception as error:  # noqa: BLE001 - CRC errors, truncation, bad headers, inflate errors
            raise self.fail(where, f"is damaged ({describe(error)})") from error
        if got != size or extra:
            raise self.fail(where, f"inflates to {'more' if extra else got} bytes, not the declared {size}")
        return buffer

    def _byteorder(self) -> str:
        name = self.root + "byteorder"
        if name not in self.infos:
            return "little"  # torch.save before 1.10 wrote no byteorder member, and only little-endian files
        if self.infos[name].file_size > 16:
            raise self.fail(f"member {quote(name)}", "is longer than 'little' or 'big'")
        value = bytes(self.read_member(name, self.infos[name].file_size)).strip()
        if value not in (b"little", b"big"):
            raise self.fail(f"member {quote(name)}", f"is {quote(value)}; only 'little' and 'big' are known")
        return value.decode()

    def charge(self, nbytes: int, what: str, *, copy: bool) -> None:
        """Counts ``nbytes`` of tensor data against the limits before they are allocated."""
        if copy and self.copied_bytes + nbytes > self.copy_budget:
            raise self.fail(
                what,
                f"would copy {nbytes} bytes out of a {self.copy_budget}-byte budget "
                f"({self.limits.copy_ratio} x the file size + 1 MiB; {self.copied_bytes} used): a view "
                "larger than the data in the file",
            )
        if self.data_bytes + nbytes > self.limits.max_data_bytes:
            raise self.fail(
                what,
                f"needs {nbytes} more bytes of tensor data; {self.data_bytes} held, limit "
                f"{self.limits.max_data_bytes} (ReadLimits.max_data_bytes)",
            )
        self.data_bytes += nbytes
        if copy:
            self.copied_bytes += nbytes

    # -- the pickle -----------------------------------------------------------------------------
    def load(self) -> Any:
        size = self.infos[self.pickle].file_size
        if size > self.limits.max_pickle_bytes:
            raise self.fail(
                f"member {quote(self.pickle)}", f"is {size} bytes, over the limit of {self.limits.max_pickle_bytes}"
            )
        data = bytes(self.read_member(self.pickle, size))
        return safe_pickle.load(
            data,
            self,
            where=f"{self.path}: member {quote(self.pickle)}",
            max_ops=self.limits.max_pickle_ops,
            max_depth=self.limits.max_depth,
        )

    def find_global(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_TYPES:
            return _StorageType(name)
        return _FUNCTIONS.get(f"{module}.{name}")

    def call(self, func: Any, args: tuple, kwargs: dict | None, key: str | None) -> Any:
        what = f"tensor {quote(key)}" if key is not None else "a tensor"
        if isinstance(func, _StorageType):
            raise self.fail(what, f"the storage type torch.{func.name} is used where a callable is expected")
        if not isinstance(func, _Function):
            raise self.fail(what, f"a {type(func).__name__} is called; only the tensor rebuild functions may be")
        if kwargs or len(args) not in _ARITY[func]:
            raise self.fail(
                what, f"{func.value} takes {' or '.join(map(str, _ARITY[func]))} arguments, got {len(args)}"
            )
        if func is _Function.ORDERED_DICT:
            return {}
        if func in (_Function.REBUILD_PARAMETER, _Function.REBUILD_PARAMETER_WITH_STATE):
            if not isinstance(args[0], np.ndarray):
                raise self.fail(what, f"{func.value} wraps a {type(args[0]).__name__}, not a tensor")
            return args[0]
        return self.rebuild_tensor(what, *args[:4])

    def persistent_load(self, pid: Any, tensor_key: str | None) -> _Storage:
        context = f"tensor {quote(tensor_key)}, " if tensor_key is not None else ""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            shape = f"a tuple of {len(pid)}" if isinstance(pid, tuple) else f"a {type(pid).__name__}"
            raise self.fail(f"{context}persistent id", f"is {shape}; ('storage', type, key, location, numel) expected")
        _, storage_type, key, _location, numel = pid
        if not isinstance(key, str) or len(key) > 256:
            raise self.fail(f"{context}persistent id", f"has storage key {quote(key)}; a short string expected")
        member = f"{self.root}data/{key}"
        where = f"{context}storage {quote(member)}"
        if not isinstance(storage_type, _StorageType):
            name = storage_type.qualname if isinstance(storage_type, Placeholder) else type(storage_type).__name__
            raise self.fail(where, f"has unknown storage type {quote(name)}; known: {', '.join(_STORAGE_TYPES)}")
        if type(numel) is not int or not 0 <= numel < _MAX_INDEX:
            raise self.fail(where, f"declares {quote(numel)} elements")
        if key in self.storages:
            known = self.storages[key]
            if (known.type_name, known.numel) != (storage_type.name, numel):
                raise self.fail(where, "is declared twice with different types or sizes")
            return known
        code, itemsize = _STORAGE_TYPES[storage_type.name]
        out_itemsize = 4 if storage_type.name == "BFloat16Storage" else itemsize
        self.charge(numel * out_itemsize, where, copy=False)
        raw = self.read_member(member, numel * itemsize, context=context)
        array = np.frombuffer(raw, dtype=np.dtype(code).newbyteorder("<" if self.byteorder == "little" else ">"))
        if not array.dtype.isnative:
            array = array.byteswap(inplace=True).view(array.dtype.newbyteorder("="))  # big-endian file: swap in place
        if storage_type.name == "BFloat16Storage":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        self.storages[key] = storage = _Storage(member, storage_type.name, numel, array)
        return storage

    def rebuild_tensor(self, what: str, storage: Any, offset: Any, size: Any, stride: Any) -> np.ndarray:
        """The tensor (storage, offset, size, stride), validated with Python ints before NumPy sees it."""
        if not isinstance(storage, _Storage):
            raise self.fail(what, f"is built from a {type(storage).__name__} where a storage is expected")
        what = f"{what} (storage {quote(storage.member)})"
        if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))):
            raise self.fail(what, f"has size {quote(size)} and stride {quote(stride)}; tuples expected")
        if len(size) != len(stride) or len(size) > _MAX_DIMS:
            raise self.fail(what, f"has {len(size)} sizes and {len(stride)} strides (at most {_MAX_DIMS}, equal)")
        for name, values in (("offset", (offset,)), ("size", size), ("stride", stride)):
            for value in values:
                if type(value) is not int or not 0 <= value < _MAX_INDEX:
                    why = "not an int" if type(value) is not int else "negative" if value < 0 else "2**62 or more"
                    raise self.fail(what, f"has {name} {quote(value)} ({why}); ints in [0, 2**62) expected")
        size, stride = tuple(size), tuple(stride)
        numel = math.prod(size)
        if math.prod(s for s in size if s) * storage.array.itemsize >= _MAX_INDEX:
            raise self.fail(what, f"has size {size}, over 2**62 bytes even without its zero dimensions")
        if numel == 0:
            if offset > storage.numel:
                raise self.fail(
                    what, f"starts at element {offset}, past the end of its {storage.numel}-element storage"
                )
            return np.zeros(size, storage.array.dtype)
        furthest = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if furthest >= storage.numel:
            raise self.fail(
                what,
                f"reaches element {furthest} (offset {offset}, size {size}, stride {stride}), past the end of its "
                f"{storage.numel}-element storage",
            )
        flat = storage.array
        if _is_contiguous(size, stride):
            if offset == 0 and numel == storage.numel and not storage.adopted:
                storage.adopted = True
                return flat.reshape(size)
            self.charge(numel * flat.itemsize, what, copy=True)
            return flat[offset : offset + numel].reshape(size).copy()
        self.charge(numel * flat.itemsize, what, copy=True)
        # Safe: every element this view can reach was checked to lie inside the buffer above.
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=tuple(s * flat.itemsize for s in stride), writeable=False
        )
        return np.array(view)  # own the memory; the storage buffer may be shared


def _is_contiguous(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, s in zip(reversed(size), reversed(stride), strict=True):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def extract_state_dict(obj: Any, path: str = "<checkpoint>") -> dict[str, np.ndarray]:
    """Finds the state dict in a checkpoint object and strips a ``module.`` prefix.

    Accepts a bare state dict, ``{"model": sd}`` or ``{"state_dict": sd}`` (the official
    PfLayer, timm and DeiT layouts), with or without DataParallel's ``module.`` prefix.

    Raises:
        CheckpointError: when no mapping of names to arrays is found.

    Example:
        >>> extract_state_dict({"epoch": 3, "state_dict": {"module.fc.bias": np.zeros(2, "float32")}})
        {'fc.bias': array([0., 0.], dtype=float32)}
    """
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())
    ):
        found = f"keys {[quote(k, 40) for k in list(obj)[:10]]}" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"No state dict found in {path}: expected a mapping of parameter names to tensors, "
            f"bare or under 'model' or 'state_dict'. Found: {found}"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def read_state_dict(path: str | os.PathLike, *, limits: ReadLimits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """Reads the state dict of an official (or timm/DeiT-style) PyTorch checkpoint file.

    Raises:
        CheckpointError: see :func:`read_torch_file` and :func:`extract_state_dict`.
    """
    return extract_state_dict(read_torch_file(path, limits=limits), os.fspath(path))
