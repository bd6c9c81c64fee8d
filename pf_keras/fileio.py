"""Atomic result files: written to a temporary name in the same folder, flushed, then renamed.

Every result pf_keras and its front ends write (weights, converted checkpoints, exported
files, reports, summaries) goes through this module, so a crash, a kill or a full disk
never leaves a partial file under the final name and never damages the previous version:
the rename is the only step that touches the final name, and a rename within one folder is
atomic on POSIX file systems. The result gets the usual permissions of a new file (``0o666``,
folders ``0o777``, less the umask), not the ``0o600`` of a temporary file.

A failed write (ENOSPC, EIO, EROFS, a permission error, ...) raises :class:`WriteError`, a
``ValueError`` whose message is one line naming the file and the reason, after the
temporary file has been removed.

HDF5 (used by Keras weight files) can crash the process when the disk fills under it, so
:func:`save_weights` serialises the weights in memory and writes the bytes with plain
Python I/O, which reports a full disk as an ordinary error.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

TEMP_MARK = ".pf-tmp-"  # every temporary name contains this (cleanup tools look for it)


class WriteError(ValueError):
    """A result file could not be written; the previous version (if any) is intact."""


def _describe(error: OSError) -> str:
    name = errno.errorcode.get(error.errno or 0, type(error).__name__)
    return f"{name}: {error.strerror or error}"


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):  # not every file system can sync a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (briefly visible to other threads)
    os.umask(mask)
    return mask


def _temp_name(path: str, suffix: str) -> str:
    folder, base = os.path.split(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=f".{base}{TEMP_MARK}", suffix=suffix, dir=folder)
    os.close(fd)
    return temp


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None, directory: bool = False) -> Iterator[str]:
    """Yields a temporary path next to ``path``; renames it over ``path`` when the block succeeds.

    Args:
        path: str. The final file (or folder, with ``directory=True``).
        suffix: str or None. Ending of the temporary name (writers that check the extension,
            e.g. ``".weights.h5"``). Defaults to the final name's extension.
        directory: bool. The block writes a folder (e.g. a SavedModel); the previous folder is
            replaced only after the new one is complete, in one step where Linux can swap the two
            (``renameat2(RENAME_EXCHANGE)``: the folder is never missing, not even after a kill), else
            by two renames.

    Raises:
        WriteError: on any OS error while writing or renaming; the temporary file is removed.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if suffix is None:
        suffix = os.path.splitext(path)[1] if not directory else ""
    try:
        os.makedirs(folder, exist_ok=True)
        temp = _temp_name(path, suffix)
        if directory:
            os.remove(temp)
    except OSError as error:
        raise WriteError(f"cannot write {path} ({_describe(error)})") from error
    try:
        yield temp
        os.chmod(temp, (0o777 if directory else 0o666) & ~_umask())  # mkstemp made it 0o600
        if directory:
            _replace_dir(temp, path)
        else:
            with open(temp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(temp, path)
        _fsync_dir(folder)
    except OSError as error:
        _remove(temp)
        message = f"cannot write {path} ({_describe(error)}); the previous version, if any, is intact"
        raise WriteError(message) from error
    except BaseException:
        _remove(temp)
        raise


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system or file system
    cannot (the caller then renames twice)."""
    try:
        renameat2 = ctypes.CDLL(None).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 / not Linux
        return False
    # Any failure (ENOSYS, EINVAL on a file system without it, ...) leaves both paths as they were: the two
    # renames then run and report a real problem themselves.
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _replace_dir(temp: str, path: str) -> None:
    if not os.path.exists(path):
        os.replace(temp, path)
        return
    if _exchange(temp, path):  # ``path`` is never missing, not even for a moment or after a kill
        _remove(temp)  # now the previous folder
        return
    old = _temp_name(path, ".old")
    os.remove(old)
    os.replace(path, old)
    try:
        os.replace(temp, path)
    except OSError:
        os.replace(old, path)  # put the previous version back
        raise
    _remove(old)  # the previous folder, or a file that stood in its place


def remove_stale_temps(folder: str | os.PathLike) -> list[str]:
    """Removes the temporary files and folders of :func:`atomic_path` left in ``folder`` by a killed writer.

    Only for a caller that holds the folder's lock (:class:`pf_keras_training.lock.RunLock`): no other writer
    can be in the middle of a write there. Symlinks are removed, never followed. Returns the names removed.
    """
    removed = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return removed
    for name in names:
        if name.startswith(".") and TEMP_MARK in name:
            _remove(os.path.join(folder, name))
            removed.append(name)
    return removed


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as temp, open(temp, "wb") as f:
        f.write(data)
        f.flush()


def write_files(contents: dict[str, bytes]) -> None:
    """Writes several files as one set: every temporary file first, then the renames, one after another.

    A kill or a full disk while writing leaves every previous file as it was (not some files of the new set
    beside others of the old one); only a failure between two renames (microseconds) can split the set.

    Raises:
        WriteError: as :func:`atomic_path`; no temporary file is left.
    """
    with contextlib.ExitStack() as stack:
        for path, data in contents.items():
            with open(stack.enter_context(atomic_path(path)), "wb") as f:
                f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists and dict keys as strings: what ``json`` writes and reads back."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically (the file ends with a newline)."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def weights_bytes(model) -> bytes:
    """The Keras ``.weights.h5`` content of ``model``, serialised in memory."""
    from keras.src.saving import saving_lib  # noqa: PLC0415 (Keras' own writer; no public in-memory API)

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # Keras' own NumPy 2 DeprecationWarning (``__array__`` without ``copy``):
        warnings.simplefilter("ignore", DeprecationWarning)  # not ours to fix, fatal under ``python -W error``
        store = saving_lib.H5IOStore(buffer, mode="w")
        saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
        store.close()
    return buffer.getvalue()


def save_weights(model, path: str | os.PathLike) -> None:
    """``model.save_weights(path)``, atomic and safe on a full disk.

    Raises:
        ValueError: if ``path`` does not end in ``.weights.h5`` (Keras' rule).
        WriteError: if the file cannot be written; the previous file is intact.
    """
    path = os.fspath(path)
    if not path.endswith(".weights.h5"):
        raise ValueError(f"A Keras weights file name must end in '.weights.h5'. Received: path={path!r}")
    write_bytes(path, weights_bytes(model))
