"""Small LiteRT helpers for the model tests: SavedModel -> TFLite (builtin ops only) -> run."""

from __future__ import annotations

import os

import keras
import numpy as np


def convert_to_tflite(model: keras.Model, directory: str, *, batch_size: int | None = None) -> bytes:
    """Exports ``model`` as a SavedModel and converts it with TFLite builtin ops only (no Flex).

    ``batch_size`` fixes the batch dimension of the exported signature (None keeps it dynamic).
    """
    import tensorflow as tf

    path = os.path.join(directory, "saved_model")
    signature = None
    if batch_size is not None:
        signature = [keras.InputSpec(shape=(batch_size, *model.input_shape[1:]), dtype="float32")]
    model.export(path, format="tf_saved_model", verbose=False, input_signature=signature)
    converter = tf.lite.TFLiteConverter.from_saved_model(path)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def _interpreter(model_content: bytes):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=model_content)


def op_names(model_content: bytes) -> list[str]:
    """Operator names of the model's graph, before any delegate is applied."""
    return [op["op_name"] for op in _interpreter(model_content)._get_ops_details()]


def non_builtin_ops(model_content: bytes) -> list[str]:
    """Flex (TensorFlow) and custom operators; empty for a model the plain LiteRT runtime runs."""
    return [name for name in op_names(model_content) if name.startswith("Flex") or name.upper() == "CUSTOM"]


def run_tflite(model_content: bytes, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Runs the model on ``x`` with the default resolver (XNNPACK applied).

    Returns:
        (output, number of delegate nodes: 1 means XNNPACK took the graph in one partition).
    """
    interpreter = _interpreter(model_content)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    if tuple(inp["shape"]) != x.shape:
        interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    delegates = sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())
    return interpreter.get_tensor(out["index"]), delegates
