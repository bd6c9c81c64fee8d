"""Runs the docstring examples of the pf_keras_export modules that have any, so they cannot drift."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import pf_keras_export


def _modules_with_examples() -> list:
    modules = [importlib.import_module(f"pf_keras_export.{info.name}")
               for info in pkgutil.iter_modules(pf_keras_export.__path__)]
    return [m for m in modules if any(test.examples for test in doctest.DocTestFinder().find(m))]


@pytest.mark.parametrize("module", _modules_with_examples(), ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
