"""Proof that every exported file computes what the Keras model computes.

Each file is loaded back (SavedModel with TensorFlow, ``.tflite`` with ``ai_edge_litert``), run on
a fixed seeded batch and compared with Keras on the same batch. Per file the report holds: max
and mean absolute difference, top-1 agreement, the op list, custom/Flex ops, XNNPACK delegation
and file size. It is written to ``OUT/NAME/report.json`` and printed as a table.

Tolerances (:data:`TOLERANCES`) bound ``max|file - keras|`` and ``mean|file - keras|`` on the
model output, scaled by ``max(1, max|keras output|)`` so that they mean the same for softmax
probabilities (scale 1) and for logits. Why these values:

- ``saved_model`` 1e-5: the same TF kernels run the same graph; only op fusion differs.
- ``fp32`` 1e-4 (the issue's bound): XNNPACK reorders float sums and folds BatchNorm into the
  convolutions; observed errors are ~1e-6.
- ``fp16`` 1e-2 max / 2e-3 mean: weights rounded to 11 significant bits (relative 2^-11 per
  weight), accumulated over ~50 layers; observed ~1e-3.
- ``dynamic`` 0.1 / 0.02: int8 weights (per-channel) and activations quantized per inference.
- ``int8`` 0.2 / 0.04: int8 weights and activations with calibrated (static) ranges; errors of
  5-10 % of the output scale are normal for an untuned post-training quantization, and random
  (untrained) weights are the hardest case. Top-1 agreement is reported, not gated: with a
  bounded max difference a top-1 flip needs a Keras margin below twice that bound.

XNNPACK delegation: the LiteRT interpreter applies XNNPACK by default and replaces each
delegated partition by one ``DELEGATE`` node; the original nodes stay listed but leave the
execution plan. :func:`xnnpack_delegation` walks back from every ``DELEGATE`` node's outputs
through the original producers, stopping at the node's inputs: every node reached belongs to a
partition; the others run on LiteRT's CPU kernels. "Fully delegated" means one partition and
no node left. (Cross-checked against the node counts with and without delegates: a fully
delegated graph has exactly one node more with XNNPACK, the ``DELEGATE`` node.)

A file fails when it does not load or run, contains Flex or custom ops, or exceeds its
tolerance; :func:`validate_files` then raises :class:`ValidationError` after writing the report.

CLI (validates the files export.py wrote; same model flags)::

    python export/validate.py --model resnet50_hybrid --output_dir out
"""

from __future__ import annotations

if __package__ in (None, ""):  # Run as a script: make ``export`` importable from the repository root.
    import os as _os
    import sys as _sys

    _here = _os.path.dirname(_os.path.abspath(__file__))
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _here]
    _sys.path.insert(0, _os.path.dirname(_here))
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
from collections import Counter  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from export import saved_model as saved_model_lib  # noqa: E402
from export.images import model_inputs, procedural_images  # noqa: E402

VALIDATION_SEED = 1234  # Different from the calibration seed (0): int8 is checked on unseen images.
VALIDATION_BATCH = 8


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Bounds on ``max|file - keras|`` and ``mean|file - keras|``, in units of ``max(1, max|keras|)``."""

    max_abs: float
    mean_abs: float


TOLERANCES = {
    "saved_model": Tolerance(1e-5, 1e-6),
    "fp32": Tolerance(1e-4, 1e-5),
    "fp16": Tolerance(1e-2, 2e-3),
    "dynamic": Tolerance(0.1, 0.02),
    "int8": Tolerance(0.2, 0.04),
}


class ValidationError(RuntimeError):
    """An exported file failed to load, used Flex/custom ops, or disagreed with Keras."""


# ----------------------------------------------------------------------------- TFLite inspection


def tflite_ops(content: bytes) -> tuple[dict[str, int], list[str]]:
    """Op counts of a ``.tflite`` flatbuffer (all subgraphs) and its custom/Flex op names.

    Read from the file itself, so it works even when the runtime cannot load the ops.
    """
    from ai_edge_litert import schema_py_generated as schema

    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    model = schema.Model.GetRootAs(content, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        codes.append(custom.decode() if custom else names.get(builtin, f"BUILTIN_{builtin}"))
    counts: Counter = Counter()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            counts[codes[subgraph.Operators(o).OpcodeIndex()]] += 1
    custom_ops = sorted({name for name in counts if name not in names.values()})
    return dict(sorted(counts.items())), custom_ops


def xnnpack_delegation(interpreter) -> dict:
    """Which nodes of an allocated LiteRT interpreter XNNPACK took (see the module docstring).

    Returns:
        dict with ``fully_delegated``, ``partitions``, ``delegated_nodes``, ``total_nodes`` and
        ``cpu_ops`` (op names of the nodes left to LiteRT's own kernels).
    """
    ops = interpreter._get_ops_details()  # The public API has no execution-plan view.
    original = [op for op in ops if op["op_name"] != "DELEGATE"]
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    producer = {int(t): op["index"] for op in original for t in op["outputs"]}
    by_index = {op["index"]: op for op in original}
    delegated: set[int] = set()
    for node in delegates:
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor not in producer:
                continue
            index = producer[tensor]
            if index in delegated:
                continue
            delegated.add(index)
            stack.extend(int(t) for t in by_index[index]["inputs"] if t >= 0)
    cpu_ops = [op["op_name"] for op in original if op["index"] not in delegated]
    return {
        "fully_delegated": len(delegates) == 1 and not cpu_ops,
        "partitions": len(delegates),
        "delegated_nodes": len(delegated),
        "total_nodes": len(original),
        "cpu_ops": cpu_ops,
    }


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero_point = detail["quantization"]
    if scale == 0.0:  # Not quantized (e.g. uint8 pixels into a float model's CAST).
        return np.clip(np.rint(x), np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if y.dtype == np.float32 or scale == 0.0:
        return y.astype(np.float32)
    return (y.astype(np.float32) - zero_point) * scale


def run_tflite(interpreter, inputs: np.ndarray) -> np.ndarray:
    """Runs an allocated single-input interpreter sample by sample; (de)quantizes as its tensors say."""
    in_detail = interpreter.get_input_details()[0]
    out_detail = interpreter.get_output_details()[0]
    outputs = []
    for sample in inputs:
        interpreter.set_tensor(in_detail["index"], _quantize(sample[None], in_detail))
        interpreter.invoke()
        outputs.append(_dequantize(interpreter.get_tensor(out_detail["index"]), out_detail)[0])
    return np.stack(outputs)


def _tensor_summary(detail: dict) -> dict:
    scale, zero_point = detail["quantization"]
    return {
        "name": detail["name"],
        "dtype": np.dtype(detail["dtype"]).name,
        "shape": [int(s) for s in detail["shape_signature"]],
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


# ----------------------------------------------------------------------------- comparisons


def _compare(output: np.ndarray, reference: np.ndarray, fmt: str) -> dict:
    tolerance = TOLERANCES[fmt]
    scale = max(1.0, float(np.abs(reference).max()))
    diff = np.abs(output.astype(np.float64) - reference.astype(np.float64))
    max_abs, mean_abs = float(diff.max()), float(diff.mean())
    flat_out, flat_ref = output.reshape(len(output), -1), reference.reshape(len(reference), -1)
    return {
        "max_abs_diff": max_abs,
        "mean_abs_diff": mean_abs,
        "output_scale": scale,
        "top1_agreement": float(np.mean(flat_out.argmax(-1) == flat_ref.argmax(-1))),
        "tolerance": {"max_abs": tolerance.max_abs * scale, "mean_abs": tolerance.mean_abs * scale},
        "within_tolerance": max_abs <= tolerance.max_abs * scale and mean_abs <= tolerance.mean_abs * scale,
    }


def check_saved_model(path: str, inputs: np.ndarray, reference: np.ndarray, *, input_type: str) -> dict:
    """Loads a SavedModel with TensorFlow, runs ``serving_default`` and compares with ``reference``."""
    entry = {"format": "saved_model", "path": path, "size_bytes": _tree_size(path), "passed": False}
    try:
        function = saved_model_lib.load_serving_fn(path)
        feed = np.clip(np.rint(inputs), 0, 255).astype(np.uint8) if input_type == "uint8" else inputs
        output = function(**{saved_model_lib.INPUT_NAME: tf.constant(feed)})
        output = np.asarray(output[saved_model_lib.OUTPUT_NAME])
    except Exception as error:  # Any failure to load or run is a verdict, reported per file.
        entry["error"] = f"{type(error).__name__}: {error}"
        entry["failures"] = ["does not load or run"]
        return entry
    entry.update(_compare(output, reference, "saved_model"))
    entry["failures"] = [] if entry["within_tolerance"] else ["outside tolerance"]
    entry["passed"] = not entry["failures"]
    return entry


def check_tflite(path: str, fmt: str, inputs: np.ndarray, reference: np.ndarray) -> dict:
    """Loads a ``.tflite`` with ai_edge_litert (XNNPACK on), runs it and compares with ``reference``."""
    from ai_edge_litert.interpreter import Interpreter

    entry = {"format": fmt, "path": path, "size_bytes": os.path.getsize(path), "passed": False, "failures": []}
    with open(path, "rb") as f:
        content = f.read()
    try:
        entry["ops"], entry["custom_ops"] = tflite_ops(content)
    except Exception as error:  # A corrupt flatbuffer.
        entry["error"] = f"{type(error).__name__}: {error}"
        entry["failures"] = ["not a readable .tflite file"]
        return entry
    if entry["custom_ops"]:
        entry["failures"].append(f"Flex/custom ops: {entry['custom_ops']}")
    try:
        interpreter = Interpreter(model_content=content, num_threads=1)
        interpreter.allocate_tensors()
        entry["input"] = _tensor_summary(interpreter.get_input_details()[0])
        entry["output"] = _tensor_summary(interpreter.get_output_details()[0])
        entry["xnnpack"] = xnnpack_delegation(interpreter)
        output = run_tflite(interpreter, inputs)
    except Exception as error:  # Unresolved ops, failed XNNPACK reshape, bad shapes, ...
        entry["error"] = f"{type(error).__name__}: {error}"
        entry["failures"].append("does not load or run")
        return entry
    entry.update(_compare(output, reference, fmt))
    if not entry["within_tolerance"]:
        entry["failures"].append("outside tolerance")
    entry["passed"] = not entry["failures"]
    return entry


def _tree_size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def versions() -> dict:
    """Library versions recorded with every report and benchmark."""
    import ai_edge_litert

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "ai_edge_litert": getattr(ai_edge_litert, "__version__", _dist_version("ai-edge-litert")),
        "numpy": np.__version__,
    }


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def validation_batch(model: keras.Model, *, num: int = VALIDATION_BATCH, seed: int = VALIDATION_SEED) -> np.ndarray:
    """The fixed batch: seeded procedural images, as the model takes them (float)."""
    size = int(model.input_shape[1])
    return model_inputs(procedural_images(num, size, seed=seed), takes_pixels=saved_model_lib.takes_pixels(model))


def validate_files(
    model: keras.Model,
    files: dict[str, str],
    *,
    input_type: str = "float",
    report_path: str | None = None,
    extra: dict | None = None,
    raise_on_failure: bool = True,
    require_full_delegation: bool = False,
) -> dict:
    """Checks exported files against ``model`` and writes the report.

    Args:
        model: keras.Model the files were exported from.
        files: dict format -> path ("saved_model" or a TFLite format).
        input_type: str. "float" or "uint8": how the SavedModel is fed. Defaults to "float".
        report_path: str or None. Where to write the JSON report. Defaults to None (not written).
        extra: dict or None. More top-level report fields (model arguments, profile, ...).
        raise_on_failure: bool. Raise :class:`ValidationError` when a file fails. Defaults to True.
        require_full_delegation: bool. Also fail TFLite files XNNPACK does not take whole.
            Defaults to False (delegation is reported).

    Returns:
        The report dict (``passed``, ``files``, ...).

    Raises:
        ValueError: for an unknown format key.
        ValidationError: when a file fails and ``raise_on_failure``.
    """
    unknown = [fmt for fmt in files if fmt not in TOLERANCES]
    if unknown:
        raise ValueError(f"`files` keys must be in {tuple(TOLERANCES)}. Received: {unknown}")
    inputs = validation_batch(model)
    reference = np.asarray(model(inputs, training=False))
    entries = []
    for fmt, path in files.items():
        if fmt == "saved_model":
            entry = check_saved_model(path, inputs, reference, input_type=input_type)
        else:
            entry = check_tflite(path, fmt, inputs, reference)
            if require_full_delegation and not entry.get("xnnpack", {}).get("fully_delegated", False):
                entry["failures"].append("not fully delegated to XNNPACK")
                entry["passed"] = False
        entries.append(entry)
    report = {
        "model": model.name,
        "input_shape": list(model.input_shape[1:]),
        "input_type": input_type,
        "batch": {"size": len(inputs), "seed": VALIDATION_SEED, "source": "export.images.procedural_images"},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        **(extra or {}),
        "tolerances": {fmt: dataclasses.asdict(t) for fmt, t in TOLERANCES.items()},
        "files": entries,
        "passed": all(entry["passed"] for entry in entries),
    }
    if report_path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
        with open(report_path, "w") as f:
            json.dump(report, f, indent=2)
    if raise_on_failure and not report["passed"]:
        failed = [f"{e['format']} ({'; '.join(e['failures'])}{': ' + e['error'] if 'error' in e else ''})"
                  for e in entries if not e["passed"]]
        raise ValidationError(f"Exported files failed validation: {', '.join(failed)}. Report: {report_path}")
    return report


def _number(entry: dict, key: str, spec: str) -> str:
    return format(entry[key], spec) if key in entry else "-"


def format_table(report: dict) -> str:
    """The report as a Markdown table."""
    lines = [
        f"{report['model']} {'x'.join(str(s) for s in report['input_shape'])}, input {report['input_type']}",
        "| format | size (MB) | max abs diff | mean abs diff | tol. (max) | top-1 agree | XNNPACK | ops | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["files"]:
        xnn = e.get("xnnpack")
        if xnn is None:
            delegation = "n/a"
        elif xnn["fully_delegated"]:
            delegation = "full"
        else:
            delegation = f"{xnn['partitions']} part., CPU: {','.join(sorted(set(xnn['cpu_ops'])))}"
        ops = sum(e.get("ops", {}).values()) if "ops" in e else "-"
        tolerance = format(e["tolerance"]["max_abs"], ".0e") if "tolerance" in e else "-"
        status = "ok" if e["passed"] else "FAIL: " + "; ".join(e["failures"])
        lines.append(
            f"| {e['format']} | {e['size_bytes'] / 1e6:.2f} | {_number(e, 'max_abs_diff', '.2e')} | "
            f"{_number(e, 'mean_abs_diff', '.2e')} | {tolerance} | {_number(e, 'top1_agreement', '.2f')} | "
            f"{delegation} | {ops} | {status} |"
        )
    return "\n".join(lines)


def main(argv) -> None:
    from absl import flags

    from export import cli

    del argv
    flag_values = flags.FLAGS
    model = cli.model_from_flags(flag_values)
    folder = os.path.join(flag_values.output_dir, model.name)
    files = {}
    if os.path.isdir(os.path.join(folder, "saved_model")):
        files["saved_model"] = os.path.join(folder, "saved_model")
    for fmt in ("fp32", "fp16", "dynamic", "int8"):
        path = os.path.join(folder, f"{model.name}_{fmt}.tflite")
        if os.path.isfile(path):
            files[fmt] = path
    if not files:
        raise ValueError(f"No exported files found in {folder}. Received: output_dir={flag_values.output_dir!r}")
    report = validate_files(
        model, files, input_type=flag_values.input_type, report_path=os.path.join(folder, "report.json"),
        raise_on_failure=False,
    )
    print(format_table(report))
    if not report["passed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    from absl import app, logging

    from export import cli

    cli.define_model_flags()
    cli.define_output_flags()
    logging.set_verbosity(logging.WARNING)
    app.run(main)
