"""Entry points of the installed training commands (``pf-keras-train``, ``pf-keras-evaluate``, ...).

Each silences TensorFlow's C++ start-up lines (unless ``--verbose``) before importing the tool's
module, which imports TensorFlow, then runs that tool's ``main(argv)``. This module imports only
the standard library and :mod:`pf_keras_export.quiet` (stdlib only), the one place of that logic.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from pf_keras_export.quiet import quiet_tensorflow


def _run(module: str, argv: Sequence[str] | None, entry: str = "main") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_tensorflow(verbose="--verbose" in argv)
    return int(getattr(importlib.import_module(module), entry)(argv) or 0)


def train(argv: Sequence[str] | None = None) -> int:
    """``pf-keras-train``: :func:`pf_keras_training.train.main`."""
    return _run("pf_keras_training.train", argv)


def evaluate(argv: Sequence[str] | None = None) -> int:
    """``pf-keras-evaluate``: :func:`pf_keras_training.evaluate.main`."""
    return _run("pf_keras_training.evaluate", argv)


def train_benchmark(argv: Sequence[str] | None = None) -> int:
    """``pf-keras-train-benchmark``: :func:`pf_keras_training.benchmark.main`."""
    return _run("pf_keras_training.benchmark", argv)


def study(argv: Sequence[str] | None = None) -> int:
    """``pf-keras-study``: :func:`pf_keras_training.study.cli`."""
    return _run("pf_keras_training.study", argv, "cli")


def convert(argv: Sequence[str] | None = None) -> int:
    """``pf-keras-convert``: :func:`pf_keras.convert.main`."""
    return _run("pf_keras.convert", argv)


def profile(argv: Sequence[str] | None = None) -> int:
    """``pf-keras-profile``: :func:`pf_keras.profiling.main`."""
    return _run("pf_keras.profiling", argv)


def gradcam(argv: Sequence[str] | None = None) -> int:
    """``pf-keras-gradcam``: :func:`pf_keras.gradcam.cli`."""
    return _run("pf_keras.gradcam", argv, "cli")
