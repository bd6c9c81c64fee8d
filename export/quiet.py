"""Keeps TensorFlow's and LiteRT's C++ start-up lines off the terminal of the export commands.

TensorFlow prints a dozen lines before any output of ours: at import, through absl before its
logging is initialised (``All log messages before absl::InitializeLog() ...``, the oneDNN
notice, ``cudart_stub``, ``cpu_feature_guard``), which no environment variable turns off;
later through TSL logging (``cuInit`` errors, converter notes), which ``TF_CPP_MIN_LOG_LEVEL=3``
hides; and LiteRT prints ``INFO: Created TensorFlow Lite XNNPACK delegate`` at the first
interpreter. :func:`quiet_tensorflow` sets the variable and imports TensorFlow with file
descriptor 2 pointed at ``/dev/null``; :func:`silenced` does the same around the first
LiteRT interpreter. Python exceptions are unaffected (they are raised after stderr is back).

This module imports only the standard library, so a command can call it before anything
imports TensorFlow (``pf_keras`` does: its ``__init__`` imports Keras).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

_state = {"quiet": False}


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Points file descriptor 2 at /dev/null inside the block, when :func:`quiet_tensorflow` asked for quiet."""
    if not _state["quiet"]:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quiet_tensorflow(verbose: bool = False) -> None:
    """Silences TensorFlow's C++ logging, then imports TensorFlow. Call it before anything imports TensorFlow.

    Args:
        verbose: bool. Leave every log line on (nothing is changed). Defaults to False.
    """
    if verbose:
        return
    _state["quiet"] = True
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # TSL logging: INFO, WARNING and ERROR off
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    with silenced():
        import tensorflow as tf  # noqa: F401  (the import is what prints; it happens here, silenced)
    import absl.logging  # TensorFlow's Python warnings ("WARNING:absl:...") go through absl

    absl.logging.set_verbosity(absl.logging.ERROR)
