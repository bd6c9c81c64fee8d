"""Runs the docstring examples of the export modules, so they cannot drift."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from export import android, build, export, images, saved_model, tflite, validate


@pytest.mark.parametrize("module", [android, build, export, images, saved_model, tflite, validate],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, extraglobs={"np": np}, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
