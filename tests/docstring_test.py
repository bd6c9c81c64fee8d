"""Every docstring example of pf_keras, pf_keras_export and pf_keras_training runs here, once.

Only the modules that have examples are collected, so each test runs at least one example
and a module that loses its examples drops out instead of passing with nothing checked.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import pf_keras
import pf_keras_export
import pf_keras_training


def _modules_with_examples() -> list:
    names = [info.name for info in pkgutil.walk_packages(pf_keras.__path__, "pf_keras.")]
    for package in (pf_keras_export, pf_keras_training):
        names += [f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules(package.__path__)]
    modules = [importlib.import_module(name) for name in names]
    return [m for m in modules if any(test.examples for test in doctest.DocTestFinder().find(m))]


@pytest.mark.parametrize("module", _modules_with_examples(), ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
