"""LiteRT helpers: the op list of a ``.tflite`` flatbuffer, XNNPACK coverage, and running a file.

Only public LiteRT API is used: ``ai_edge_litert.schema_py_generated`` (the flatbuffer schema)
to read the ops, and ``ai_edge_litert.interpreter.Interpreter`` to run.

XNNPACK coverage (:func:`xnnpack_coverage`). The LiteRT ``Interpreter`` applies XNNPACK by
default but its public API has no view of the execution plan (the node list is the private
``_get_ops_details``), and ``CompiledModel.is_fully_accelerated`` answers only yes/no and
prints ~20 lines of accelerator registration per model. So coverage is read from the file:
every operator's builtin name and the type of its data input, checked against
:data:`XNNPACK_OPS`, the builtin ops the XNNPACK delegate of ai-edge-litert 2.3 takes for
float (fp32 / fp16 weights / dynamic range) and for int8/uint8 tensors, plus the one parameter
limit pf_keras graphs meet: quantized ADD/SUB with an input/output scale ratio outside
[2^-10, 2^8) (the LayerNorm epsilon in int8 transformers). The tests compare the result with
the runtime's actual delegation on every format of the test models, node for node.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from collections import Counter
from typing import NamedTuple

import numpy as np

from pf_keras_export import quiet

MAX_FLATBUFFER_BYTES = 2 << 30  # a flatbuffer addresses at most 2 GiB
# Builtin ops the XNNPACK delegate takes, by the type of the op's data input. Read off the
# delegate's op switch (ai-edge-litert 2.3.0) for the ops pf_keras graphs contain, and checked
# against the runtime's own delegation in tests/export/litert_test.py. Not here (always on
# LiteRT's kernels): CAST, and in int8 GELU, RSQRT, SOFTMAX, SQUARED_DIFFERENCE, QUANTIZE from
# uint8. An int8 BATCH_MATMUL is taken only when its second input's zero point is 0 (see
# _quantization_ok): whether it is depends on the calibration data.
_COMMON = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE", "DEQUANTIZE",
    "ELU", "FULLY_CONNECTED", "HARD_SWISH", "LEAKY_RELU", "LOGISTIC", "MAX_POOL_2D", "MAXIMUM", "MEAN", "MINIMUM",
    "MUL", "PAD", "PRELU", "QUANTIZE", "RESHAPE", "RESIZE_BILINEAR", "SLICE", "SPACE_TO_DEPTH", "SPLIT",
    "STRIDED_SLICE", "SUB", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
}
XNNPACK_OPS = {
    "float": frozenset(_COMMON | {
        "ABS", "BATCH_MATMUL", "CEIL", "DIV", "FLOOR", "GELU", "NEG", "RELU", "RELU6", "RELU_N1_TO_1", "ROUND",
        "RSQRT", "SOFTMAX", "SQRT", "SQUARE", "SQUARED_DIFFERENCE",
    }),
    "int8": frozenset(_COMMON - {"AVERAGE_POOL_2D"} | {"BATCH_MATMUL"}),  # no int8 average pool: rewritten (tflite.py)
    "uint8": frozenset(_COMMON - {"AVERAGE_POOL_2D", "QUANTIZE"}),  # uint8 -> int8 input QUANTIZE stays on CPU
}
_FLOAT_TYPES = {"FLOAT32", "FLOAT16"}
# int8 ops XNNPACK takes only for some quantization parameters (which calibration decides): int8_mixed keeps them
# float, so that its full delegation does not depend on the calibration images.
XNNPACK_INT8_CONDITIONAL = frozenset({"BATCH_MATMUL"})


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def read_model(content: bytes):
    """The flatbuffer's root ``Model`` object.

    Raises:
        ValueError: when ``content`` is not a ``.tflite`` flatbuffer.
    """
    schema = _schema()
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise ValueError(f"not a .tflite flatbuffer (no TFL3 identifier; {len(content)} bytes)")
    try:
        model = schema.Model.GetRootAs(content, 0)
        model.SubgraphsLength()
    except (struct.error, IndexError, TypeError) as error:  # flatbuffers: offsets outside the buffer, bad numbers
        raise ValueError(f"damaged .tflite flatbuffer ({type(error).__name__}: {error})") from None
    return model


class _Operator(NamedTuple):
    name: str
    input_type: str | None  # type name of the data input (see _data_input_type)
    custom: bool
    scales_ok: bool  # False: XNNPACK refuses its quantization (ADD/SUB scales, BATCH_MATMUL zero point)
    output: str | None  # name of the first output tensor


def _operators(content: bytes) -> list[_Operator]:
    """Every operator of every subgraph, with what the coverage needs to know of it."""
    schema = _schema()
    builtin_names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    type_names = {value: key for key, value in vars(schema.TensorType).items() if not key.startswith("_")}
    model = read_model(content)
    try:
        codes = []
        for i in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(i)
            custom = code.CustomCode()
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = custom.decode() if custom else builtin_names.get(builtin, f"BUILTIN_{builtin}")
            codes.append((name, bool(custom)))
        ops = []
        for s in range(model.SubgraphsLength()):
            subgraph = model.Subgraphs(s)
            for o in range(subgraph.OperatorsLength()):
                op = subgraph.Operators(o)
                name, custom = codes[op.OpcodeIndex()]
                input_type = _data_input_type(subgraph, op, model, type_names)
                scales_ok = input_type not in ("INT8", "UINT8") or _quantization_ok(name, subgraph, op)
                output = subgraph.Tensors(int(op.Outputs(0))).Name().decode() if op.OutputsLength() else None
                ops.append(_Operator(name, input_type, custom, scales_ok, output))
    except (struct.error, IndexError, TypeError, UnicodeDecodeError) as error:  # as above, and bad names
        raise ValueError(f"damaged .tflite flatbuffer ({type(error).__name__}: {error})") from None
    return ops


# XNNPACK's quantized ADD/SUB take each input only when input scale / output scale is in
# [2^-10, 2^8) (its operator-creation check); outside it the node stays on LiteRT's kernels. In
# pf_keras graphs this is LayerNorm's ``variance + epsilon`` (epsilon's scale is ~1e-6 of the sum's).
_SCALE_BOUND_OPS = frozenset({"ADD", "SUB"})
_SCALE_RATIO_RANGE = (2.0**-10, 2.0**8)


def _quantization_ok(name: str, subgraph, op) -> bool:
    """Whether XNNPACK accepts the quantization of a quantized ``op``: ADD/SUB by their scales (above); int8
    BATCH_MATMUL only with a zero point of 0 on its second input (XNNPACK's qs8 right-hand operand is symmetric;
    seen on both sides in tests/export/litert_test.py, where calibration gives one or the other)."""
    if name in _SCALE_BOUND_OPS:
        return _scales_in_range(subgraph, op)
    if name == "BATCH_MATMUL":
        inputs = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() > 1 else []
        return bool(inputs) and inputs[1] >= 0 and _zero_point(subgraph, inputs[1]) == 0
    return True


def _zero_point(subgraph, index: int) -> int | None:
    params = subgraph.Tensors(index).Quantization()
    values = params.ZeroPointAsNumpy() if params is not None and params.ZeroPointLength() else None
    return int(values[0]) if values is not None and len(values) else None


def _scale(subgraph, index: int) -> float:
    params = subgraph.Tensors(index).Quantization()
    values = params.ScaleAsNumpy() if params is not None and params.ScaleLength() else None
    return float(values[0]) if values is not None and len(values) else 0.0


def _scales_in_range(subgraph, op) -> bool:
    def scale(index: int) -> float:
        return _scale(subgraph, index)

    outputs = [int(i) for i in op.OutputsAsNumpy()] if op.OutputsLength() else []
    inputs = [int(i) for i in op.InputsAsNumpy() if i >= 0] if op.InputsLength() else []
    if not outputs or not inputs or scale(outputs[0]) <= 0.0:
        return False
    low, high = _SCALE_RATIO_RANGE
    return all(low <= scale(i) / scale(outputs[0]) < high for i in inputs)


def scale_refused_outputs(content: bytes) -> list[str]:
    """Output tensor names of the quantized ADD/SUB nodes XNNPACK refuses for their scales (see above).

    Raises:
        ValueError: when ``content`` is not a readable ``.tflite`` flatbuffer.
    """
    return [op.output for op in _operators(content)
            if op.name in _SCALE_BOUND_OPS and not op.scales_ok and op.output is not None]


def _data_input_type(subgraph, op, model, type_names) -> str | None:
    """Type of the op's first input that is not a constant (a weight or an axis), else of its first input."""
    inputs = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
    inputs = [i for i in inputs if i >= 0]
    if not inputs:
        return None
    for index in inputs:
        tensor = subgraph.Tensors(index)
        if model.Buffers(tensor.Buffer()).DataLength() == 0:  # no stored data: an activation
            return type_names.get(tensor.Type())
    return type_names.get(subgraph.Tensors(inputs[0]).Type())


def tflite_ops(content: bytes) -> tuple[dict[str, int], list[str]]:
    """Op counts of a ``.tflite`` flatbuffer (all subgraphs) and its custom/Flex op names.

    Read from the file itself, so it works even when the runtime cannot load the ops.

    Raises:
        ValueError: when ``content`` is not a readable ``.tflite`` flatbuffer.
    """
    ops = _operators(content)
    counts = Counter(op.name for op in ops)
    custom_ops = sorted({op.name for op in ops if op.custom})
    return dict(sorted(counts.items())), custom_ops


def xnnpack_coverage(content: bytes) -> dict:
    """Which ops of a ``.tflite`` file XNNPACK takes, from its op list and :data:`XNNPACK_OPS`.

    Returns:
        dict with ``fully_delegated`` (no op left to LiteRT's kernels), ``delegated_nodes``,
        ``total_nodes`` and ``cpu_ops`` (op names of the nodes left to LiteRT's kernels).

    Raises:
        ValueError: when ``content`` is not a readable ``.tflite`` flatbuffer.
    """
    cpu_ops = []
    ops = _operators(content)
    for op in ops:
        kind = "float" if op.input_type in _FLOAT_TYPES else {"INT8": "int8", "UINT8": "uint8"}.get(op.input_type,
                                                                                                  "float")
        if op.name not in XNNPACK_OPS[kind] or not op.scales_ok:
            cpu_ops.append(op.name)
    return {
        "fully_delegated": not cpu_ops,
        "delegated_nodes": len(ops) - len(cpu_ops),
        "total_nodes": len(ops),
        "cpu_ops": cpu_ops,
    }


def read_flatbuffer(path: str) -> bytes:
    """The bytes of a ``.tflite`` file: a regular file, read without blocking, at most
    :data:`MAX_FLATBUFFER_BYTES`.

    Raises:
        OSError: it cannot be read, is not a regular file (:class:`~pf_keras.safe_open.NotRegularFileError`) or is
            larger (EFBIG).
    """
    from pf_keras import safe_open  # as in _file_sha256

    return safe_open.read_bytes(path, MAX_FLATBUFFER_BYTES)


def interpreter(path_or_content: str | bytes, *, num_threads: int = 1):
    """An allocated LiteRT ``Interpreter`` (XNNPACK applied, as deployed) for a file or its bytes.

    Raises:
        ValueError: when the runtime cannot load or allocate the model (the message is LiteRT's).
    """
    from ai_edge_litert.interpreter import Interpreter

    content = path_or_content
    if isinstance(path_or_content, str):  # read here, not by LiteRT: its C++ takes a path only as valid UTF-8
        try:
            content = read_flatbuffer(path_or_content)
        except OSError as error:
            raise ValueError(f"LiteRT cannot load {path_or_content}: {error.strerror or error}") from None
    try:
        with quiet.silenced():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" line
            runner = Interpreter(model_content=content, num_threads=num_threads)
            runner.allocate_tensors()
    except (ValueError, RuntimeError) as error:  # the runtime's load/allocate failures (unresolved ops, ...)
        name = path_or_content if isinstance(path_or_content, str) else "model"
        raise ValueError(f"LiteRT cannot load {name}: {' '.join(str(error).split())}") from None
    return runner


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    if scale == 0.0:  # not quantized (e.g. uint8 pixels into a float model's CAST)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return np.clip(np.rint(x / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if y.dtype == np.float32 or scale == 0.0:
        return y.astype(np.float32)
    return (y.astype(np.float32) - zero_point) * scale


def io_details(runner, name: str = "model") -> tuple[dict, dict]:
    """The input and output details of an interpreter with one input and one output (every exported file).

    Raises:
        ValueError: for a file with another number of inputs or outputs (a hand-made or damaged file).
    """
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"{name} must have one input and one output tensor; it has {len(inputs)} input(s) and "
                         f"{len(outputs)} output(s)")
    return inputs[0], outputs[0]


def run_tflite(runner, inputs: np.ndarray) -> np.ndarray:
    """Runs an allocated single-input interpreter sample by sample; (de)quantizes as its tensors say."""
    in_detail, out_detail = io_details(runner)
    outputs = []
    for sample in inputs:
        runner.set_tensor(in_detail["index"], _quantize(sample[None], in_detail))
        runner.invoke()
        outputs.append(_dequantize(runner.get_tensor(out_detail["index"]), out_detail)[0])
    return np.stack(outputs)


def tensor_summary(detail: dict) -> dict:
    """Name, dtype, shape, scale and zero point of an interpreter input/output detail."""
    scale, zero_point = detail["quantization"]
    return {
        "name": detail["name"],
        "dtype": np.dtype(detail["dtype"]).name,
        "shape": [int(s) for s in detail["shape_signature"]],
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


def _file_sha256(path: str) -> str:
    """Hex SHA-256 of a regular file (:class:`~pf_keras.safe_open.NotRegularFileError` for a FIFO or a device)."""
    from pf_keras import safe_open  # not at the top: TensorFlow's import probes a module named litert

    digest = hashlib.sha256()
    with os.fdopen(safe_open.open_fd(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(path: str) -> str:
    """Hex SHA-256 of a file, or of a folder's files (a SavedModel): of each file's relative path and digest,
    in sorted order.

    Only regular files and real folders are read: a FIFO, a device or a symlinked folder in a SavedModel
    raises :class:`~pf_keras.safe_open.NotRegularFileError` instead of blocking or reading forever.

    Raises:
        OSError: when a file cannot be read or is not a regular file.
    """
    if not os.path.isdir(path):
        return _file_sha256(path)
    digest = hashlib.sha256()
    for root, dirs, names in os.walk(path, onerror=_raise):
        linked = [name for name in dirs if os.path.islink(os.path.join(root, name))]
        if linked:
            from pf_keras.safe_open import NotRegularFileError  # as in _file_sha256

            raise NotRegularFileError(errno.EINVAL, "a symlinked folder in a SavedModel", os.path.join(root, linked[0]))
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            digest.update(f"{os.path.relpath(full, path)}\0{_file_sha256(full)}\n".encode())
    return digest.hexdigest()


def _raise(error: OSError) -> None:
    raise error


def file_size(path: str) -> int:
    """Size of a file, or of every file under a folder (a SavedModel)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
