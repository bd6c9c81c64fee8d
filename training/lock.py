"""One run per ``model_dir``: an advisory lock on ``model_dir/.lock``.

The lock is ``fcntl.flock`` on an open file, so the operating system releases it when the
holder exits or dies (SIGKILL, OOM kill, power loss of a local disk): a stale lock file never
blocks the next run. The file holds the holder's PID and host name, for the error message of
a second run. ``flock`` is local to one machine on many network file systems: on a shared
folder it protects against two runs on the same host only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket

LOCK_NAME = ".lock"


class RunLock:
    """Holds ``model_dir/.lock`` until :meth:`release` (or the end of a ``with`` block).

    Args:
        model_dir: str. The run's folder (created if missing).

    Raises:
        ValueError: if another process holds the lock (the message names its PID).
    """

    def __init__(self, model_dir: str) -> None:
        self.path = os.path.join(model_dir, LOCK_NAME)
        os.makedirs(model_dir, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_holder()
            os.close(self._fd)
            self._fd = None
            raise ValueError(
                f"{model_dir} is in use by another run ({holder}); one run per model_dir. Wait for it to end, "
                f"stop it, or use another --model_dir. Received: model_dir={model_dir!r}"
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
