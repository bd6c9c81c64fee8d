"""Tests of pf_keras_export.validate_lib: the verdicts (tolerance, Flex ops, unreadable files) and the report."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from pf_keras_export import formats
from pf_keras_export.build import build_model
from pf_keras_export.validate_lib import ValidationError, check_file, find_files, format_table, validate_files


def _entry(report: dict, fmt: str) -> dict:
    return next(e for e in report["files"] if e["format"] == fmt)


class TestVerdicts:
    def test_a_file_of_another_model_fails(self, hybrid_export, tmp_path, small_resnet_kwargs):
        other = build_model("resnet50_hybrid", model_kwargs=small_resnet_kwargs, image_size=64)  # new random weights
        report_path = str(tmp_path / "report.json")
        with pytest.raises(ValidationError, match=r"failed validation: fp32 \(outside tolerance\)"):
            validate_files(other, {"fp32": _entry(hybrid_export, "fp32")["path"]}, report_path=report_path)
        with open(report_path) as f:
            stored = json.load(f)
        assert stored["passed"] is False and stored["files"][0]["failures"] == ["outside tolerance"]

    def test_flex_ops_fail(self, tmp_path):
        @tf.function(input_signature=[tf.TensorSpec((1, 8, 8, 3), tf.float32)])
        def determinant(x):
            return tf.reshape(tf.linalg.det(tf.reshape(x[0, :3, :3, 0], (3, 3))), (1, 1))

        converter = tf.lite.TFLiteConverter.from_concrete_functions([determinant.get_concrete_function()], determinant)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        path = tmp_path / "flex.tflite"
        path.write_bytes(converter.convert())
        inputs = np.ones((1, 8, 8, 3), np.float32)
        entry = check_file(formats.FORMATS["fp32"], str(path), inputs, np.zeros((1, 1), np.float32))
        assert not entry["passed"] and entry["custom_ops"] == ["FlexMatrixDeterminant"]
        assert entry["failures"] == ["Flex/custom ops: ['FlexMatrixDeterminant']", "does not load or run"]
        assert "LiteRT cannot load" in entry["error"]

    def test_corrupt_file_fails(self, tmp_path):
        path = tmp_path / "broken.tflite"
        path.write_bytes(b"definitely not a flatbuffer" * 10)
        entry = check_file(formats.FORMATS["fp32"], str(path), np.ones((1, 8, 8, 3), np.float32),
                           np.zeros((1, 1), np.float32))
        assert not entry["passed"] and entry["failures"] == ["not a readable file"]
        assert entry["error"].startswith("not a .tflite flatbuffer")

    def test_damaged_saved_model_fails(self, tmp_path):
        (tmp_path / "saved_model").mkdir()
        (tmp_path / "saved_model" / "saved_model.pb").write_bytes(b"\x08garbage")
        entry = check_file(formats.FORMATS["saved_model"], str(tmp_path / "saved_model"),
                           np.ones((1, 8, 8, 3), np.float32), np.zeros((1, 1), np.float32))
        assert not entry["passed"] and entry["failures"] == ["does not load or run"]
        assert entry["error"].startswith("TensorFlow cannot load the SavedModel")

    def test_truncated_tflite_fails(self, hybrid_export, tmp_path):
        with open(_entry(hybrid_export, "fp32")["path"], "rb") as f:
            content = f.read()
        path = tmp_path / "cut.tflite"
        path.write_bytes(content[: len(content) // 2])
        entry = check_file(formats.FORMATS["fp32"], str(path), np.ones((1, 64, 64, 3), np.float32),
                           np.zeros((1, 10), np.float32))
        assert not entry["passed"] and entry["failures"][-1] in ("not a readable file", "does not load or run")

    def test_unknown_format_key(self, small_resnet_kwargs):
        model = build_model("resnet50_max", model_kwargs=small_resnet_kwargs, image_size=64)
        with pytest.raises(ValueError, match=r"`files` must be a non-empty subset of .*Received: files=\['onnx'\]"):
            validate_files(model, {"onnx": "m.onnx"})

    def test_find_files_uses_the_registry(self, hybrid_export, tmp_path):
        folder = os.path.dirname(_entry(hybrid_export, "fp32")["path"])
        assert find_files(folder, "resnet50_hybrid") == {e["format"]: e["path"] for e in hybrid_export["files"]}
        with pytest.raises(ValueError, match=r"No exported files of 'resnet50_hybrid' found"):
            find_files(str(tmp_path), "resnet50_hybrid")


def _patched(content: bytes, **subgraph_fields) -> bytes:
    """``content`` (a .tflite flatbuffer) with fields of its first subgraph replaced (``inputs=[]``, ...)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))
    for key, value in subgraph_fields.items():
        setattr(model.subgraphs[0], key, np.asarray(value, np.int32))
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class TestDamagedFiles:
    @pytest.mark.parametrize("field", ["inputs", "outputs"])
    def test_a_tflite_without_inputs_or_outputs_fails_and_is_not_timed(self, hybrid_export, tmp_path, field):
        from pf_keras_export.benchmark_lib import time_tflite

        with open(_entry(hybrid_export, "fp32")["path"], "rb") as f:
            path = tmp_path / "m_fp32.tflite"
            path.write_bytes(_patched(f.read(), **{field: []}))
        entry = check_file(formats.FORMATS["fp32"], str(path), np.ones((1, 64, 64, 3), np.float32),
                           np.zeros((1, 10), np.float32))
        assert not entry["passed"] and entry["failures"] == ["does not load or run"]
        assert "must have one input and one output tensor" in entry["error"]
        with pytest.raises(ValueError, match=r"m_fp32.tflite must have one input and one output tensor"):
            time_tflite(str(path), runs=1, warmup=0)

    def test_a_saved_model_with_truncated_variables_fails(self, hybrid_export, tmp_path):
        saved = tmp_path / "saved_model"
        shutil.copytree(_entry(hybrid_export, "saved_model")["path"], saved)
        (data,) = (saved / "variables").glob("variables.data-*")
        os.truncate(data, 100)
        entry = check_file(formats.FORMATS["saved_model"], str(saved), np.ones((1, 64, 64, 3), np.float32),
                           np.zeros((1, 10), np.float32))
        assert not entry["passed"] and entry["failures"] == ["does not load or run"]
        assert entry["error"].startswith("TensorFlow cannot load the SavedModel")
        assert "Read less bytes than requested" in entry["error"]

    def test_a_fifo_in_a_saved_model_fails_as_unreadable(self, hybrid_export, tmp_path):
        saved = tmp_path / "saved_model"
        shutil.copytree(_entry(hybrid_export, "saved_model")["path"], saved)
        os.mkfifo(saved / "assets.fifo")  # hashing it with a plain open() waited forever
        entry = check_file(formats.FORMATS["saved_model"], str(saved), np.ones((1, 64, 64, 3), np.float32),
                           np.zeros((1, 10), np.float32))
        assert not entry["passed"] and entry["failures"] == ["not a readable file"]
        assert "not a regular file (a FIFO)" in entry["error"] and "sha256" not in entry
        table = format_table({"model": "m", "input_shape": [64, 64, 3], "input_type": "float", "files": [entry]})
        assert "| saved_model | - | - |" in table and "FAIL: not a readable file" in table
