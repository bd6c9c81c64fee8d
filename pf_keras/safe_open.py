"""Opening files that may have been replaced by something else: a FIFO, a device, a symlink, a huge file.

A plain ``open`` of a FIFO blocks until a writer appears (a run folder with a FIFO named
``recipe.json`` hung ``train.py``, past SIGTERM), ``/dev/zero`` never ends, ``json.load`` of a
1 GB file takes gigabytes, and an ``O_CREAT`` write through a symlink changes a file outside
the folder. Every open here is non-blocking, checks on the open descriptor (no race with a
rename) that it is a regular file, and bounds what is read. Problems raise ``OSError``
subclasses with a standard ``strerror``, so callers that already turn an unreadable file
into one line keep doing so.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import Any

_NEVER_BLOCK = os.O_NONBLOCK | os.O_CLOEXEC
MAX_JSON_BYTES = 64 << 20  # a settings or config file; the largest we write (a ViT-B preset config) is ~10 KB


class NotRegularFileError(OSError):
    """The path is a FIFO, a device, a socket or a folder where a regular file is expected."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK,
                       "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def _checked(fd: int, path: str, limit: int | None) -> int:
    """``fd`` if it is a regular file of at most ``limit`` bytes; else closes it and raises."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFileError(errno.EINVAL, f"not a regular file ({_kind(info.st_mode)})", path)
        if limit is not None and info.st_size > limit:
            raise OSError(errno.EFBIG, f"file too large ({info.st_size} bytes, the limit is {limit})", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_fd(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o644, *, follow: bool = True,
            limit: int | None = None) -> int:
    """``os.open`` that never blocks and returns only a regular file's descriptor.

    Args:
        path: the file.
        flags: ``os.O_*`` flags (``O_NONBLOCK`` and ``O_CLOEXEC`` are added).
        mode: permissions of a file created by ``O_CREAT``.
        follow: False adds ``O_NOFOLLOW``: a symlink at ``path`` is refused (``ELOOP``), for files we write
            into a folder we own (a lock, a log), which must never change a file elsewhere.
        limit: largest size in bytes, or None.

    Raises:
        OSError: the open failed; :class:`NotRegularFileError` for a FIFO, device, socket or folder; ``EFBIG``
            over ``limit``.
    """
    flags |= _NEVER_BLOCK | (0 if follow else os.O_NOFOLLOW)
    return _checked(os.open(path, flags, mode), os.fspath(path), limit)


def read_bytes(path: str | os.PathLike, limit: int) -> bytes:
    """The contents of the regular file ``path``, at most ``limit`` bytes (``EFBIG`` beyond, also if it grew)."""
    with os.fdopen(open_fd(path, limit=limit), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"file too large (more than {limit} bytes)", os.fspath(path))
    return data


def read_text(path: str | os.PathLike, limit: int) -> str:
    """:func:`read_bytes` decoded as UTF-8 (``UnicodeDecodeError``, a ``ValueError``, if it is not)."""
    return read_bytes(path, limit).decode("utf-8")


def read_json(path: str | os.PathLike, limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in ``path`` (see :func:`read_bytes`).

    Raises:
        OSError: as :func:`read_bytes`.
        ValueError: not UTF-8, not JSON, or nested too deeply to parse (``RecursionError`` otherwise).
    """
    text = read_text(path, limit)
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
