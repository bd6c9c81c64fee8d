"""Tests of pf_keras_export.formats: the registry, and that the export tools iterate over it."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from pf_keras import fileio
from pf_keras_export import formats
from pf_keras_export.export_lib import export_model
from pf_keras_export.validate_lib import format_table


class TestRegistry:
    def test_every_format_is_complete(self):
        assert formats.names() == ["saved_model", "fp32", "fp16", "dynamic", "int8", "int8_mixed"]
        assert formats.names(timeable=True) == ["fp32", "fp16", "dynamic", "int8", "int8_mixed"]
        for name, fmt in formats.FORMATS.items():
            assert fmt.name == name and fmt.description
            assert 0 < fmt.tolerance.mean_abs <= fmt.tolerance.max_abs < 1
            assert all(callable(f) for f in (fmt.convert, fmt.inspect, fmt.run))
            assert fmt.path_in("out", "m").startswith("out/")
        # Looser formats get looser tolerances, in registration order of the TFLite files.
        bounds = [formats.FORMATS[n].tolerance.max_abs for n in formats.names(timeable=True)]
        assert bounds == sorted(bounds)

    def test_parse(self):
        assert [f.name for f in formats.parse("int8, fp32,int8")] == ["int8", "fp32"]
        assert [f.name for f in formats.parse(["saved_model"])] == ["saved_model"]
        with pytest.raises(ValueError, match=r"`formats` must be a non-empty subset of .*Received: formats=\[\]"):
            formats.parse(" , ")
        with pytest.raises(ValueError,
                           match=r"subset of \('fp32', 'fp16', 'dynamic', 'int8', 'int8_mixed'\)\. "
                                 r".*\['saved_model'\]"):
            formats.parse("saved_model", timeable=True)
        with pytest.raises(ValueError, match=r"already registered"):
            formats.register(formats.FORMATS["fp32"])

    def test_file_names_round_trip(self):
        for fmt in formats.FORMATS.values():
            if fmt.timeable:
                model, found = formats.by_file_name(fmt.file_name.format(model="resnet50_hybrid"))
                assert (model, found) == ("resnet50_hybrid", fmt)
        assert formats.by_file_name("saved_model") is None and formats.by_file_name("notes.txt") is None


def _save_keras(model, path, context):
    del context
    with fileio.atomic_path(path) as temp:
        model.save(temp)
    return path


def _run_keras(path, inputs, *, input_type):
    del input_type
    try:
        model = keras.saving.load_model(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"Keras cannot load {path}: {error}") from None
    return np.asarray(model(inputs, training=False)), {"layers": len(model.layers)}


class TestAddingAFormat:
    def test_one_register_call_is_enough(self, tmp_path, small_resnet_kwargs):
        """A new format (the native .keras file) needs one object; export and validation pick it up."""
        fmt = formats.Format(name="keras", description="Keras 3 .keras archive", file_name="{model}.keras",
                             tolerance=formats.Tolerance(1e-6, 1e-7), convert=_save_keras,
                             inspect=lambda path: ({}, []), run=_run_keras)
        formats.register(fmt)
        try:
            report = export_model("resnet50_max", output_dir=str(tmp_path), formats="keras", image_size=32,
                                  model_kwargs=small_resnet_kwargs, verbose=False)
        finally:
            del formats.FORMATS["keras"]
        (keras_entry,) = report["files"]
        assert keras_entry["format"] == "keras" and keras_entry["passed"] and keras_entry["max_abs_diff"] == 0.0
        assert keras_entry["path"] == str(tmp_path / "resnet50_max" / "resnet50_max.keras")
        assert report["tolerances"]["keras"] == dataclasses.asdict(fmt.tolerance)
        assert "| keras |" in format_table(report)
