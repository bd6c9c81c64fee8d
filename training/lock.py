"""One run per ``model_dir``: an advisory lock on ``model_dir/.lock``.

The lock is ``fcntl.flock`` on an open file, so the operating system releases it when the
holder exits or dies (SIGKILL, OOM kill, power loss of a local disk): a stale lock file never
blocks the next run. The file holds the holder's PID and host name, for the error message of
a second run. ``flock`` is local to one machine on many network file systems: on a shared
folder it protects against two runs on the same host only.

Files a run writes in place (the lock, ``metrics.jsonl``) are opened by :func:`open_own_file`:
with ``O_NOFOLLOW``, without blocking, only a regular file without other hard links. A ``.lock``
that is a symlink or a hard link (whose other file would be truncated), a FIFO or a folder is
refused with one line naming it (:class:`LockFileError`); nothing is removed or written: the user
deletes it, and the next run creates a regular file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket

from pf_keras import safe_open

LOCK_NAME = ".lock"
# What a refused open found, by errno: O_NOFOLLOW, O_RDWR on a folder, O_WRONLY | O_NONBLOCK on a FIFO without reader.
_KINDS = {errno.ELOOP: "a symbolic link", errno.EISDIR: "a folder", errno.ENXIO: "a FIFO or a device"}


class LockHeld(ValueError):
    """Another process holds the lock; ``holder`` names it ("PID 1234 on host")."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class LockFileError(ValueError):
    """The lock path is not a regular file of the run alone (a symlink, a hard link, a FIFO, a folder)."""


class NotOwnFileError(OSError):
    """A file the run writes in place is a symlink, a hard link, a FIFO, a folder, ...: ``strerror`` says which."""


def open_own_file(path: str, flags: int) -> int:
    """A descriptor of ``path`` (created if missing), a file the run writes in place (its lock, ``metrics.jsonl``).

    Never through a symlink, never blocking, only a regular file without other hard links: no file outside the
    run's folder can change through it.

    Raises:
        NotOwnFileError: (an OSError) ``path`` is something else; its ``strerror`` says what.
        OSError: any other failure (permissions, a full disk).
    """
    try:
        fd = safe_open.open_fd(path, flags | os.O_CREAT, follow=False)
    except safe_open.NotRegularFileError as error:
        raise NotOwnFileError(error.errno, error.strerror, path) from None
    except OSError as error:
        if error.errno in _KINDS:
            raise NotOwnFileError(error.errno, _KINDS[error.errno], path) from None
        raise
    links = os.fstat(fd).st_nlink
    if links > 1:
        os.close(fd)
        raise NotOwnFileError(errno.EMLINK, f"a file with {links} hard links", path)
    return fd


class RunLock:
    """Holds ``model_dir/.lock`` until :meth:`release` (or the end of a ``with`` block).

    Args:
        model_dir: str. The run's folder (created if missing).

    Raises:
        LockHeld: (a ValueError) another process holds the lock (the message names its PID).
        LockFileError: (a ValueError) the lock path is a symlink, a FIFO, a folder, ...; nothing was changed.
    """

    def __init__(self, model_dir: str) -> None:
        self.path = os.path.join(model_dir, LOCK_NAME)
        os.makedirs(model_dir, exist_ok=True)
        try:
            self._fd: int | None = open_own_file(self.path, os.O_RDWR)
        except NotOwnFileError as error:
            raise LockFileError(f"{self.path} cannot be used as the lock file ({error.strerror}); remove it (the next "
                                f"run creates a regular file). Received: model_dir={model_dir!r}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_holder()
            os.close(self._fd)
            self._fd = None
            raise LockHeld(
                f"{model_dir} is in use by another run ({holder}); one run per model_dir. Wait for it to end, "
                f"stop it, or use another --model_dir. Received: model_dir={model_dir!r}", holder
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)

    def _read_holder(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            text = os.pread(self._fd, 200, 0).decode(errors="replace").split()
            if text:
                return f"PID {int(text[0])}" + (f" on {text[1]}" if len(text) > 1 else "")
        return "PID unknown"

    def release(self) -> None:
        """Unlocks (the file stays: deleting it would let two runs lock different files)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class FolderLock:
    """An exclusive ``flock`` on a folder itself, held until :meth:`release` (or the end of a ``with`` block).

    For folders whose listing belongs to the user (an export's ``OUT/NAME/``): no lock file is added. The
    operating system releases it when the holder exits or dies, like :class:`RunLock`; the holder's PID is not
    recorded (there is no file to hold it).

    Args:
        folder: str. An existing folder.
        busy: str. The message when another process holds it.

    Raises:
        LockHeld: (a ValueError) another process holds it.
    """

    def __init__(self, folder: str, *, busy: str) -> None:
        self._fd: int | None = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise LockHeld(busy, "another process") from None

    def release(self) -> None:
        """Unlocks and closes the folder."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
