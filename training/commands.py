"""Entry points of the installed training commands (``pf-keras-train``, ``pf-keras-evaluate``, ...).

Each prepares the process (:func:`pf_keras_export.startup.start`: standard streams, the TensorFlow
backend, TensorFlow's C++ start-up lines silenced unless ``--verbose``) before importing the tool's
module, which imports TensorFlow, then runs that tool's ``main(argv)``. This module imports only
the standard library and :mod:`pf_keras_export.startup` (stdlib only), the one place of that logic.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from pf_keras_export import startup


def _run(module: str, argv: Sequence[str] | None, entry: str = "main", *, prog: str) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    startup.start(argv, prog)
    return int(getattr(importlib.import_module(module), entry)(argv) or 0)


def train(argv: Sequence[str] | None = None) -> int:
    """``pf-keras-train``: :func:`pf_keras_training.train.main`."""
    return _run("pf_keras_training.train", argv, prog="pf-keras-train")


def evaluate(argv: Sequence[str] | None = None) -> int:
    """``pf-keras-evaluate``: :func:`pf_keras_training.evaluate.main`."""
    return _run("pf_keras_training.evaluate", argv, prog="pf-keras-evaluate")


def train_benchmark(argv: Sequence[str] | None = None) -> int:
    """``pf-keras-train-benchmark``: :func:`pf_keras_training.benchmark.main`."""
    return _run("pf_keras_training.benchmark", argv, prog="pf-keras-train-benchmark")


def study(argv: Sequence[str] | None = None) -> int:
    """``pf-keras-study``: :func:`pf_keras_training.study.cli`."""
    return _run("pf_keras_training.study", argv, "cli", prog="pf-keras-study")


def convert(argv: Sequence[str] | None = None) -> int:
    """``pf-keras-convert``: :func:`pf_keras.convert.main`."""
    return _run("pf_keras.convert", argv, prog="pf-keras-convert")


def profile(argv: Sequence[str] | None = None) -> int:
    """``pf-keras-profile``: :func:`pf_keras.profiling.main`."""
    return _run("pf_keras.profiling", argv, prog="pf-keras-profile")


def gradcam(argv: Sequence[str] | None = None) -> int:
    """``pf-keras-gradcam``: :func:`pf_keras.gradcam.cli`."""
    return _run("pf_keras.gradcam", argv, "cli", prog="pf-keras-gradcam")
