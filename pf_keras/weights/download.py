"""Official checkpoints on first use: download (Google Drive, through ``gdown``), verify, cache.

``weights="imagenet"`` looks for ``<weights_dir>/<name>.pth`` (``<name>_<tag>.pth`` for other
checkpoints of the same model) and downloads it there when it is missing:

- the folder is ``$PF_KERAS_WEIGHTS_DIR`` if set, else ``pf_keras`` in the Keras cache folder
  (``$KERAS_HOME``, default ``~/.keras``), as ``keras.utils.get_file`` uses;
- ``gdown`` fetches the file (it answers Google Drive's confirmation page for large files)
  into a temporary folder inside the cache folder, with a progress bar on stderr;
- the file is checked before it gets its final name: its state dict must have exactly the
  keys and shapes of the spec's manifest (``num_batches_tracked`` buffers aside), and its
  sha256 must equal the spec's when the spec records one. The computed sha256 is printed so
  that it can be recorded in :mod:`pf_keras.models.specs`;
- only then is it renamed into place (:mod:`pf_keras.fileio`); a failed, interrupted or
  refused download leaves nothing in the cache, so retrying starts afresh. A download that was
  killed (SIGKILL, power loss) leaves its temporary folder: the next download removes every such
  folder that no live download holds (each holds an ``flock`` on a lock file in its folder;
  one on the cache folder serialises the removal and the creation of such folders).

Whatever the server does, the download ends within bounded time, disk and memory, as one
:class:`DownloadError`: at most ``MAX_REQUESTS`` requests (a confirmation page that points back
to itself loops forever in gdown), each body counted as it is decoded (a page gdown reads into
memory at most ``MAX_PAGE_BYTES``; the file at most :func:`max_checkpoint_bytes`, so an endless
body or a gzip bomb stops there), and an average rate of at least ``MIN_RATE_BYTES_S`` once
``RATE_GRACE_S`` have passed (the socket timeout alone bounds only the gap between two bytes, so
a byte every minute would never end). The time is thus at most ``max(RATE_GRACE_S,
max_checkpoint_bytes / MIN_RATE_BYTES_S)``, plus the connect timeout.

A file put there by hand (no network) goes through the same checks. ``PF_KERAS_OFFLINE=1``
never downloads: the error says where to put the file.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import hashlib
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from pf_keras import fileio, safe_open
from pf_keras.models.specs import Checkpoint, ModelSpec, load_manifest
from pf_keras.weights.errors import describe
from pf_keras.weights.torch_reader import MiB, read_state_dict

OFFLINE_ENV = "PF_KERAS_OFFLINE"
WEIGHTS_DIR_ENV = "PF_KERAS_WEIGHTS_DIR"
IGNORED_SUFFIXES = ("num_batches_tracked",)  # BatchNorm step counters carry no weights
TIMEOUT_S = (30, 120)  # (connect, between bytes)
MAX_REQUESTS = 10  # per download; Drive's flow takes 2-4 (redirect, confirmation page, file)
MAX_PAGE_BYTES = 1 * MiB  # a page gdown reads into memory (Drive's confirmation page: ~3 KB)
# The file may hold at most SIZE_FACTOR x the float32 weights of its manifest + SIZE_SLACK_BYTES: a training
# checkpoint may also hold the optimizer's moments (AdamW: 2x) and an EMA copy (1x); the slack covers the pickle
# and the zip records. PiT-S-max, the largest published: 100 MB of weights, 469 MB allowed.
SIZE_FACTOR = 4
SIZE_SLACK_BYTES = 64 * MiB
# The average rate since the download began, from RATE_GRACE_S on (0.5 Mbit/s: PiT-S-max's weights in 26 min at
# worst); a server that trickles is cut after max(RATE_GRACE_S, max_checkpoint_bytes / MIN_RATE_BYTES_S) at most.
MIN_RATE_BYTES_S = 64 * 1024
RATE_GRACE_S = 60.0
WATCH_INTERVAL_S = 1.0  # how often the rate is checked
LOCK_NAME = "lock"  # in each temporary download folder, flock-ed while its download runs
_DOWNLOAD_MARK = f"{fileio.TEMP_MARK}download-"  # in the names of the temporary download folders


class DownloadError(ValueError):
    """A checkpoint could not be downloaded or was refused; nothing was cached."""


def weights_dir() -> str:
    """Folder of the official checkpoints and their converted Keras weights.

    ``$PF_KERAS_WEIGHTS_DIR`` if set, else ``$KERAS_HOME/pf_keras`` (``~/.keras/pf_keras``).
    """
    if os.environ.get(WEIGHTS_DIR_ENV):
        return os.environ[WEIGHTS_DIR_ENV]
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(keras_home, "pf_keras")


def _stem(spec: ModelSpec, checkpoint: Checkpoint) -> str:
    return spec.name if checkpoint.tag == "imagenet" else f"{spec.name}_{checkpoint.tag}"


def checkpoint_path(spec: ModelSpec, checkpoint: Checkpoint) -> str:
    """Where the official file of ``checkpoint`` is (or will be) kept."""
    return os.path.join(weights_dir(), f"{_stem(spec, checkpoint)}.pth")


def keras_weights_path(spec: ModelSpec, checkpoint: Checkpoint, *, include_top: bool) -> str:
    """Where the converted Keras weights are cached (``_notop`` without the classifier)."""
    return os.path.join(weights_dir(), f"{_stem(spec, checkpoint)}{'' if include_top else '_notop'}.weights.h5")


def sha256_of(path: str) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _keys(names) -> list[str]:
    names = sorted(names)
    return names[:5] + ([f"... {len(names) - 5} more"] if len(names) > 5 else [])


def check_state_dict(state_dict: dict[str, np.ndarray], manifest: dict, *, source: str, name: str) -> None:
    """Raises ValueError unless ``state_dict`` has exactly the manifest's keys and shapes.

    ``num_batches_tracked`` entries are ignored on both sides.
    """
    expected = {k: tuple(v) for k, v in manifest["state_dict"].items() if not k.endswith(IGNORED_SUFFIXES)}
    found = {k: tuple(np.shape(v)) for k, v in state_dict.items() if not k.endswith(IGNORED_SUFFIXES)}
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    misshaped = [k for k in expected.keys() & found.keys() if expected[k] != found[k]]
    if missing or unexpected or misshaped:
        raise ValueError(
            f"{source} is not the official {name} checkpoint: its state dict differs from the published manifest "
            f"(missing keys {_keys(missing)}, unexpected keys {_keys(unexpected)}, mis-shaped keys {_keys(misshaped)})"
        )


def verify_checkpoint(path: str, spec: ModelSpec, checkpoint: Checkpoint, *, quiet: bool = False) -> str:
    """Checks a checkpoint file against the spec's manifest (and sha256, when recorded); returns its sha256.

    Raises:
        ValueError: for a file that is not a PyTorch checkpoint, has other keys or shapes,
            or has another sha256 than the recorded one.
    """
    digest = sha256_of(path)
    if not quiet:
        print(f"pf_keras: sha256 of {os.path.basename(path)} ({spec.name}): {digest}", file=sys.stderr)
    if checkpoint.sha256 and digest != checkpoint.sha256.lower():
        raise ValueError(
            f"{path} is not the official {spec.name} checkpoint: sha256 {digest}, expected {checkpoint.sha256}"
        )
    try:
        state_dict = read_state_dict(path)
    except ValueError as error:
        raise ValueError(f"{path} is not the official {spec.name} checkpoint: {error}") from error
    check_state_dict(state_dict, load_manifest(spec), source=path, name=spec.name)
    return digest


def _by_hand(spec: ModelSpec, checkpoint: Checkpoint, path: str) -> str:
    return (
        f"download {checkpoint.url} in a browser and save it as {path} (or set {WEIGHTS_DIR_ENV} to the folder "
        f"holding {os.path.basename(path)}), or pass the file itself as weights=PATH"
    )


def _reason(error: BaseException) -> str:
    """gdown's multi-line message as one line, without its advice (we keep no partial file to resume)."""
    text = " ".join(str(error).split())
    for advice in (" You may still be able", " The received bytes are kept", ".The received bytes are kept"):
        text = text.split(advice)[0]
    return text.rstrip(" .:") or type(error).__name__


def fetch_checkpoint(spec: ModelSpec, tag: str = "imagenet", *, quiet: bool = False) -> str:
    """Path of the verified official checkpoint of ``spec``, downloading it on first use.

    Args:
        spec: ModelSpec. A published model with a checkpoint.
        tag: str. Which checkpoint (``spec.checkpoints``). Defaults to "imagenet".
        quiet: bool. No progress bar and no sha256 line. Defaults to False.

    Returns:
        The local path, ``<weights_dir>/<name>.pth``.

    Raises:
        ValueError: no checkpoint with that tag; a local file that fails the checks.
        DownloadError: offline, a failed or interrupted transfer, or a downloaded file that
            fails the checks (then nothing is kept).
    """
    checkpoint = spec.checkpoint(tag)
    path = checkpoint_path(spec, checkpoint)
    if os.path.isfile(path):
        try:
            verify_checkpoint(path, spec, checkpoint, quiet=True)
        except ValueError as error:
            raise ValueError(f"{error}; replace or delete that file (it is downloaded again when missing)") from error
        return path
    if os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes"):
        raise DownloadError(f"{path} is missing and {OFFLINE_ENV} is set: {_by_hand(spec, checkpoint, path)}.")
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        with _folder_locked(folder):
            _remove_stale_downloads(folder)
            temp_dir = tempfile.mkdtemp(prefix=f".{spec.name}{_DOWNLOAD_MARK}", dir=folder)
            lock = _open_lock(temp_dir)
            with contextlib.suppress(OSError):  # a file system without locks: no remover can lock it either
                fcntl.flock(lock, fcntl.LOCK_EX)
    except OSError as error:
        message = f"cannot write to {folder} ({error}); set {WEIGHTS_DIR_ENV} to a writable folder"
        raise DownloadError(message) from error
    try:
        part = os.path.join(temp_dir, os.path.basename(path))
        _download(checkpoint, part, spec=spec, path=path, quiet=quiet)
        try:
            verify_checkpoint(part, spec, checkpoint, quiet=quiet)
        except ValueError as error:
            reason = " ".join(str(error).split()).replace(part, "it")
            message = f"refused the file downloaded from {checkpoint.url}: {reason}; nothing was cached"
            raise DownloadError(message) from error
        with fileio.atomic_path(path) as temp:
            os.replace(part, temp)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
        os.close(lock)  # after the removal: until then, no other download takes the folder for stale
    return path


def max_checkpoint_bytes(spec: ModelSpec) -> int:
    """Largest size accepted for the official checkpoint of ``spec`` (see ``SIZE_FACTOR``)."""
    numel = sum(math.prod(shape) for shape in load_manifest(spec)["state_dict"].values())
    return SIZE_FACTOR * 4 * numel + SIZE_SLACK_BYTES


@contextlib.contextmanager
def _folder_locked(folder: str) -> Iterator[None]:
    """An flock on ``folder`` itself, for the removal of stale temporary folders and the creation of a new one.

    Between processes, this keeps a new folder from being taken for stale before it is locked.
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):  # some network file systems lock no folder: go on unserialised
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open_lock(temp_dir: str) -> int:
    """Descriptor of the lock file of a temporary download folder (created if missing)."""
    return safe_open.open_fd(os.path.join(temp_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600, follow=False)


def _remove_stale_downloads(folder: str) -> None:
    """Removes the temporary download folders whose lock nobody holds: their download was killed.

    A folder without a lock file (an older version's download) gets one first.
    """
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if not name.startswith(".") or _DOWNLOAD_MARK not in name or os.path.islink(path) or not os.path.isdir(path):
            continue
        with contextlib.suppress(OSError):
            fd = _open_lock(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its download runs
                shutil.rmtree(path, ignore_errors=True)
            finally:
                os.close(fd)


class _Transfer:
    """The bounds of one download, applied to every request gdown makes (see :func:`_send`).

    Counts the requests, bounds each body as it is decoded (``limit`` bytes for the file, an
    attachment; ``page_limit`` for a page) and runs a watchdog thread that sets gdown's ``cancel``
    event when the average rate falls under ``MIN_RATE_BYTES_S``. ``reason`` says why it stopped.
    """

    def __init__(self, limit: int, page_limit: int) -> None:
        self.limit, self.page_limit = limit, page_limit
        self.requests = self.received = 0
        self.reason: str | None = None
        self.cancel = threading.Event()
        self._done = threading.Event()
        self._start = time.monotonic()
        self._watchdog = threading.Thread(target=self._watch, name="pf_keras-download-watchdog", daemon=True)

    def stop(self, reason: str) -> DownloadError:
        """Cancels gdown's reads and returns the error to raise; the first reason is the one kept."""
        self.reason = self.reason or reason
        self.cancel.set()
        return DownloadError(reason)

    def _watch(self) -> None:
        while not self._done.wait(WATCH_INTERVAL_S):
            elapsed = time.monotonic() - self._start
            if elapsed > RATE_GRACE_S and self.received < MIN_RATE_BYTES_S * elapsed:
                self.stop(f"{self.received} bytes in {elapsed:.0f} s, under the minimum average rate of "
                          f"{MIN_RATE_BYTES_S} bytes/s")
                return

    def on_request(self, url: str) -> None:
        self.requests += 1
        if self.requests > MAX_REQUESTS:
            raise self.stop(f"more than {MAX_REQUESTS} requests, the last to {url}")

    def on_response(self, response: Any) -> None:
        """Bounds the decoded body of ``response`` (a ``requests.Response``): a failure before the byte over."""
        attachment = "Content-Disposition" in response.headers
        limit = self.limit if attachment else self.page_limit
        what = f"the {'file' if attachment else 'page'} {response.url}"
        announced = response.headers.get("Content-Length", "")
        if announced.isdigit() and int(announced) > limit:
            raise self.stop(f"{what} announces {announced} bytes, more than the {limit} expected")
        stream = response.raw.stream

        def bounded(*args: Any, **kwargs: Any) -> Iterator[bytes]:
            size = 0
            for chunk in stream(*args, **kwargs):
                size += len(chunk)
                self.received += len(chunk)
                if size > limit:
                    raise self.stop(f"{what} sent more than the {limit} bytes expected")
                yield chunk

        response.raw.stream = bounded  # what requests' iter_content, .content and .text read

    def __enter__(self) -> _Transfer:
        self._watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._watchdog.join()


_ACTIVE: contextvars.ContextVar[_Transfer | None] = contextvars.ContextVar("pf_keras_download", default=None)
_HOOK_LOCK = threading.Lock()
_hook: dict[str, Any] = {"users": 0, "send": None}  # HTTPAdapter.send, replaced while downloads run


def _send(adapter: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
    """``requests.adapters.HTTPAdapter.send`` that applies the bounds of this thread's download, if any."""
    transfer = _ACTIVE.get()
    if transfer is not None:
        transfer.on_request(request.url)
    response = _hook["send"](adapter, request, *args, **kwargs)
    if transfer is not None:
        transfer.on_response(response)
    return response


@contextlib.contextmanager
def _bounded(transfer: _Transfer) -> Iterator[_Transfer]:
    """Applies ``transfer`` to the requests this thread makes in the block (gdown makes its own session)."""
    from requests.adapters import HTTPAdapter  # noqa: PLC0415

    with _HOOK_LOCK:
        if not _hook["users"]:
            _hook["send"], HTTPAdapter.send = HTTPAdapter.send, _send
        _hook["users"] += 1
    token = _ACTIVE.set(transfer)
    try:
        with transfer:
            yield transfer
    finally:
        _ACTIVE.reset(token)
        with _HOOK_LOCK:
            _hook["users"] -= 1
            if not _hook["users"]:
                HTTPAdapter.send = _hook["send"]


def _download(checkpoint: Checkpoint, output: str, *, spec: ModelSpec, path: str, quiet: bool) -> None:
    import gdown  # noqa: PLC0415 (only needed on a first download)
    import requests  # noqa: PLC0415

    if not quiet:
        print(f"pf_keras: downloading the {spec.name} checkpoint to {path}", file=sys.stderr)
    source = {"id": checkpoint.drive_id} if checkpoint.drive_id else {"url": checkpoint.url}
    limit = max_checkpoint_bytes(spec)
    transfer = _Transfer(limit, MAX_PAGE_BYTES if checkpoint.drive_id else limit)
    try:
        with _bounded(transfer):
            gdown.download(**source, output=output, quiet=quiet, use_cookies=False, timeout=TIMEOUT_S,
                           cancel=transfer.cancel)
    except Exception as error:  # noqa: BLE001 - gdown fails on malformed responses with KeyError, ValueError, ...
        known = (gdown.exceptions.DownloadError, requests.RequestException, OSError)
        reason = transfer.reason or (_reason(error) if isinstance(error, known) else f"bad response: {describe(error)}")
        raise DownloadError(
            f"downloading the {spec.name} checkpoint from {checkpoint.url} failed ({reason}); nothing "
            f"was cached. Retry, or {_by_hand(spec, checkpoint, path)}"
        ) from error
    if not os.path.isfile(output):
        raise DownloadError(f"downloading {checkpoint.url} produced no file; {_by_hand(spec, checkpoint, path)}")


__all__ = [
    "DownloadError",
    "check_state_dict",
    "checkpoint_path",
    "fetch_checkpoint",
    "keras_weights_path",
    "max_checkpoint_bytes",
    "sha256_of",
    "verify_checkpoint",
    "weights_dir",
]
