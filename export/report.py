"""Reading an export's ``report.json`` back: the fields the benchmarks and validation rely on, checked.

A report is written by :mod:`pf_keras_export.validate_lib`, but it is a text file in a folder a
user may have edited, copied or replaced. :func:`read_report` reads it without blocking, at most
:data:`MAX_REPORT_BYTES` (:mod:`pf_keras.safe_open`), and refuses, with one line, every field of the
wrong type before anything is timed: a model name that is not a plain file-name stem, an
``input_shape`` that is not positive ints, ``params``/``macs`` that are not finite non-negative
numbers, file entries without a format or with a digest of the wrong type.
:func:`file_mismatch` says whether a file still holds the bytes its entry was validated on.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable

from pf_keras import safe_open
from pf_keras.values import is_positive_int, is_real
from pf_keras_export import litert

MAX_REPORT_BYTES = 4 << 20  # a report of six formats is ~10 KB


def plain_name(name: object) -> bool:
    """True for a file-name stem: a non-empty str without path separators or NUL, not ``.`` or ``..``."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name)


def _count(value: object) -> bool:
    return is_real(value, finite=True) and value >= 0


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _problem(report: object) -> str | None:
    """What makes ``report`` unusable, or None."""
    if not isinstance(report, dict):
        return "not a JSON object"
    if not plain_name(report.get("model")):
        return f"`model` must be a plain name (no folders). Received: model={_shown(report.get('model'))}"
    shape = report.get("input_shape")
    if not (isinstance(shape, list) and shape and all(is_positive_int(s) for s in shape)):
        return f"`input_shape` must be a list of positive ints. Received: input_shape={_shown(shape)}"
    for key in ("params", "macs"):
        if report.get(key) is not None and not _count(report[key]):
            return f"`{key}` must be a finite non-negative number. Received: {key}={_shown(report[key])}"
    files = report.get("files")
    if not isinstance(files, list) or not all(isinstance(e, dict) and isinstance(e.get("format"), str) for e in files):
        return "`files` must be a list of entries with a `format`"
    twice = sorted(name for name, count in Counter(e["format"] for e in files).items() if count > 1)
    if twice:
        return f"`files` names a format twice. Received: {_shown(twice)}"
    for entry in files:
        size = entry.get("size_bytes")
        for key, ok, what in (("sha256", isinstance(entry.get("sha256"), str), "a hex string"),
                              ("size_bytes", isinstance(size, int) and _count(size), "a non-negative int")):
            if key in entry and not ok:
                return f"the {entry['format'][:40]} entry's `{key}` must be {what}. Received: {_shown(entry[key])}"
    return None


def read_report(path: str) -> dict:
    """The export report at ``path``, its fields checked (module docstring).

    Raises:
        ValueError: one line for a report that cannot be read (missing, a FIFO, too large, not
            JSON) or has a field of the wrong type.
    """
    try:
        report = safe_open.read_json(path, MAX_REPORT_BYTES)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the export report {path} ({type(error).__name__}: {error})") from None
    problem = _problem(report)
    if problem:
        raise ValueError(f"{path} is not a usable export report: {problem}")
    return report


def entry_for(report: dict, fmt: str) -> dict | None:
    """The report's entry of format ``fmt``, or None."""
    return next((entry for entry in report["files"] if entry["format"] == fmt), None)


def file_mismatch(path: str, entry: dict) -> str | None:
    """None when ``path`` holds the bytes ``entry`` was validated on (its SHA-256; reports written before the
    digest was recorded: its size); else why not. An unreadable file (a FIFO, a device) is a mismatch."""
    try:
        return _mismatch(entry, lambda: litert.content_sha256(path), lambda: litert.file_size(path))
    except OSError as error:
        return f"it cannot be read ({type(error).__name__}: {error.strerror or error})"


def content_mismatch(content: bytes, entry: dict) -> str | None:
    """:func:`file_mismatch` for a file's bytes already read (one ``.tflite`` file; a SavedModel is a folder)."""
    return _mismatch(entry, lambda: hashlib.sha256(content).hexdigest(), lambda: len(content))


def _mismatch(entry: dict, sha256: Callable[[], str], size: Callable[[], int]) -> str | None:
    if "sha256" in entry:
        return None if sha256() == entry["sha256"] else "its SHA-256 differs"
    if "size_bytes" in entry:
        return None if size() == entry["size_bytes"] else "its size differs"
    return "its report entry records neither a SHA-256 nor a size"
