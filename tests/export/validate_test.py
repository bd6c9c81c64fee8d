"""Tests of export/validate.py: delegation check, op list and the failure verdicts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from export.build import build_model
from export.validate import ValidationError, check_tflite, tflite_ops, validate_files, xnnpack_delegation


def _entry(report: dict, fmt: str) -> dict:
    return next(e for e in report["files"] if e["format"] == fmt)


class TestXnnpackDelegation:
    def test_agrees_with_node_counts(self, hybrid_export, vit_export):
        for path in (_entry(hybrid_export, "fp32")["path"], _entry(vit_export, "int8")["path"]):
            no_delegates = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            plain = Interpreter(model_path=path, experimental_op_resolver_type=no_delegates)
            plain.allocate_tensors()
            delegated = Interpreter(model_path=path)
            delegated.allocate_tensors()
            summary = xnnpack_delegation(delegated)
            # XNNPACK adds one DELEGATE node per partition and keeps the original nodes listed.
            assert len(delegated._get_ops_details()) == len(plain._get_ops_details()) + summary["partitions"]
            assert summary["total_nodes"] == len(plain._get_ops_details())
            assert summary["delegated_nodes"] + len(summary["cpu_ops"]) == summary["total_nodes"]
        fp32 = xnnpack_delegation(_loaded(_entry(hybrid_export, "fp32")["path"]))
        assert fp32["fully_delegated"] and fp32["partitions"] == 1 and fp32["cpu_ops"] == []
        int8 = xnnpack_delegation(_loaded(_entry(vit_export, "int8")["path"]))
        # XNNPACK has no int8 LayerNorm pieces, GELU, softmax or batch matmul: many partitions.
        assert not int8["fully_delegated"] and int8["partitions"] > 2 and {"GELU", "SOFTMAX"} <= set(int8["cpu_ops"])

    def test_op_list_is_read_from_the_file(self, hybrid_export):
        entry = _entry(hybrid_export, "fp32")
        with open(entry["path"], "rb") as f:
            ops, custom = tflite_ops(f.read())
        assert custom == [] and ops == entry["ops"]
        assert {"CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "ADD", "MEAN", "FULLY_CONNECTED"} <= set(ops)


def _loaded(path: str) -> Interpreter:
    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    return interpreter


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
        entry = check_tflite(str(path), "fp32", inputs, np.zeros((1, 1), np.float32))
        assert not entry["passed"] and entry["custom_ops"] == ["FlexMatrixDeterminant"]
        assert "Flex/custom ops: ['FlexMatrixDeterminant']" in entry["failures"]

    def test_corrupt_file_fails(self, tmp_path):
        path = tmp_path / "broken.tflite"
        path.write_bytes(b"definitely not a flatbuffer" * 10)
        entry = check_tflite(str(path), "fp32", np.ones((1, 8, 8, 3), np.float32), np.zeros((1, 1), np.float32))
        assert not entry["passed"] and entry["failures"] and "error" in entry

    def test_unknown_format_key(self, small_resnet_kwargs):
        model = build_model("resnet50_max", model_kwargs=small_resnet_kwargs, image_size=64)
        with pytest.raises(ValueError, match=r"`files` keys must be in .*Received: \['onnx'\]"):
            validate_files(model, {"onnx": "m.onnx"})
