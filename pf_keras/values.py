"""Type tests for values read from files a user hands us (JSON configs, metadata, results).

``bool`` is an ``int`` in Python, so ``isinstance(True, int)`` holds; a ``true`` where a count or a
scale goes is a damaged or hostile file, never a number. Every check of such values uses these.
"""

from __future__ import annotations

import math
import numbers


def is_int(value) -> bool:
    """Whether ``value`` is a Python ``int`` and not a ``bool``.

    Example:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool)


def is_positive_int(value) -> bool:
    """Whether ``value`` is an ``int`` (not a ``bool``) of at least 1."""
    return is_int(value) and value >= 1


def is_real(value, *, finite: bool = False) -> bool:
    """Whether ``value`` is a real number (``numbers.Real``: ints, floats, NumPy scalars) and not a ``bool``;
    with ``finite``, also neither infinite nor NaN.

    Example:
        >>> is_real(0.5), is_real(False), is_real("1"), is_real(float("inf")), is_real(float("inf"), finite=True)
        (True, False, False, True, False)
    """
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    return not finite or math.isfinite(value)
