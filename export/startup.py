"""The first thing every pf-keras command does, before anything imports TensorFlow.

- **Standard streams.** A command started with a standard stream closed (``2>&-``, a daemon
  without a terminal) would fail at its first print (``sys.stdout`` is None) or, worse, have the
  first file it opens take descriptor 1 or 2, so that its output lands inside that file. Closed
  descriptors 0-2 are opened on ``/dev/null`` and Python's streams made to match. Output that the
  terminal's encoding cannot show (``PYTHONIOENCODING=ascii`` and a path with ``é``) is escaped
  (``\\xe9``) instead of failing the command after its results were written.
- **Backend.** The commands are TensorFlow programs (tf.distribute, SavedModel, the TFLite
  converter); a ``KERAS_BACKEND`` set in the user's environment for other work would make Keras
  build the models on JAX or torch and, e.g., export a TFLite file of variable ops. It is set to
  ``tensorflow`` for the command's process, with one note when it said otherwise.
- **Quiet start.** :func:`pf_keras_export.quiet.quiet_tensorflow` (unless ``--verbose``).

Standard library only (``pf_keras`` imports Keras, hence TensorFlow).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from pf_keras_export import quiet

BACKEND = "tensorflow"


def _open_closed_descriptors() -> None:
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: ``fd`` itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _standard_streams() -> None:
    _open_closed_descriptors()
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        stream = getattr(sys, name)
        if stream is None:  # the descriptor was closed when Python started
            setattr(sys, name, open(fd, mode, encoding="utf-8", errors="backslashreplace", closefd=False))  # noqa: SIM115
        elif mode == "w" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def _tensorflow_backend(prog: str) -> None:
    chosen = os.environ.get("KERAS_BACKEND")
    if chosen is not None and chosen != BACKEND:
        print(f"{prog}: note: KERAS_BACKEND={chosen} ignored: this command runs on TensorFlow", file=sys.stderr)
    os.environ["KERAS_BACKEND"] = BACKEND


def start(argv: Sequence[str], prog: str) -> None:
    """Prepares the process of command ``prog`` (streams, backend, quiet TensorFlow). Call it before anything
    imports Keras or TensorFlow."""
    _standard_streams()
    _tensorflow_backend(prog)
    quiet.quiet_tensorflow(verbose="--verbose" in argv)
