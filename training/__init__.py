"""ImageNet training of pf_keras models on tf.distribute (scripts: train.py, evaluate.py, benchmark.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable


def cli_main(main: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """Runs a script's absl ``main``; a ValueError (a user error that says what to change) exits 2 with its message."""
    try:
        return main(argv) or 0
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
