"""The one error type of the weight readers and converters."""

from __future__ import annotations

from typing import Any

from pf_keras.values import is_int

_MAX_SHOWN = 80  # characters of a value taken from a file that an error message may quote


class CheckpointError(ValueError):
    """A weights file is malformed, hostile, over a limit or does not fit the model.

    The message is one line naming the file, the part of it (zip member, tensor key,
    pickle position) and what is wrong. Raised instead of the assorted low-level errors
    (``KeyError``, ``BadZipFile``, ``UnpicklingError``, ``MemoryError``, ...) that a
    damaged file would otherwise surface, which are chained as ``__cause__``.
    """


def quote(value: Any, limit: int = _MAX_SHOWN) -> str:
    """``repr(value)`` on one line and at most ``limit`` characters (values from a file may be huge).

    Example:
        >>> quote("x" * 100, limit=10), quote(2**100), quote(object())
        ("'xxxxxx...", '<int of 101 bits>', 'object')
    """
    if is_int(value) and value.bit_length() > 64:
        return f"<int of {value.bit_length()} bits>"
    scalars = (str, bytes, int, float, bool, type(None))
    small = isinstance(value, (tuple, list)) and len(value) <= 8 and all(isinstance(v, scalars) for v in value)
    try:
        text = repr(value) if small or isinstance(value, scalars) else type(value).__name__
    except Exception:  # noqa: BLE001 - repr of a value from a hostile file must never fail the message
        text = type(value).__name__
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(error: BaseException, limit: int = 200) -> str:
    """``TypeName: message`` of a low-level error, on one line and at most ``limit`` characters."""
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
