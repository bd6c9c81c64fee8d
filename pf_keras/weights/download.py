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
  refused download leaves nothing in the cache, so retrying starts afresh.

A file put there by hand (no network) goes through the same checks. ``PF_KERAS_OFFLINE=1``
never downloads: the error says where to put the file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile

import numpy as np

from pf_keras import fileio
from pf_keras.models.specs import Checkpoint, ModelSpec, load_manifest
from pf_keras.weights.torch_reader import read_state_dict

OFFLINE_ENV = "PF_KERAS_OFFLINE"
WEIGHTS_DIR_ENV = "PF_KERAS_WEIGHTS_DIR"
IGNORED_SUFFIXES = ("num_batches_tracked",)  # BatchNorm step counters carry no weights
TIMEOUT_S = (30, 120)  # (connect, between bytes)


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
        temp_dir = tempfile.mkdtemp(prefix=f".{spec.name}{fileio.TEMP_MARK}download-", dir=folder)
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
    return path


def _download(checkpoint: Checkpoint, output: str, *, spec: ModelSpec, path: str, quiet: bool) -> None:
    import gdown  # noqa: PLC0415 (only needed on a first download)
    import requests  # noqa: PLC0415

    if not quiet:
        print(f"pf_keras: downloading the {spec.name} checkpoint to {path}", file=sys.stderr)
    source = {"id": checkpoint.drive_id} if checkpoint.drive_id else {"url": checkpoint.url}
    try:
        gdown.download(**source, output=output, quiet=quiet, use_cookies=False, timeout=TIMEOUT_S)
    except (gdown.exceptions.DownloadError, gdown.exceptions.FileURLRetrievalError, requests.RequestException,
            OSError) as error:
        raise DownloadError(
            f"downloading the {spec.name} checkpoint from {checkpoint.url} failed ({_reason(error)}); nothing "
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
    "sha256_of",
    "verify_checkpoint",
    "weights_dir",
]
