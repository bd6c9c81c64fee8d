"""Proof that every exported file computes what the Keras model computes.

Each file is loaded back by its format's runner (SavedModel with TensorFlow, ``.tflite`` with
``ai_edge_litert``), run on a fixed seeded batch and compared with Keras on the same batch.
Per file the report holds: max and mean absolute difference, top-1 agreement, the format's
static facts (for TFLite: op list, custom/Flex ops and XNNPACK coverage, read from the
flatbuffer) and file size. It is written atomically to ``OUT/NAME/report.json`` and printed as
a table.

Tolerances are the formats' own (:mod:`pf_keras_export.formats`). Top-1 agreement is reported,
not gated: with a bounded max difference a top-1 flip needs a Keras margin below twice that bound.

A file fails when it is unreadable, does not load or run, contains Flex or custom ops, or
exceeds its tolerance; :func:`validate_files` then raises :class:`ValidationError` after
writing the report.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform

import keras
import numpy as np
import tensorflow as tf

from pf_keras import fileio
from pf_keras_export import formats, litert
from pf_keras_export import saved_model as saved_model_lib
from pf_keras_export.images import model_inputs, procedural_images
from pf_keras_export.report import read_report

VALIDATION_SEED = 1234  # Different from the calibration seed (0): int8 is checked on unseen images.
VALIDATION_BATCH = 8
# The report fields validate_files computes; the export's other fields (build, params, ...) come in ``extra``.
VALIDATION_FIELDS = ("model", "input_shape", "input_type", "batch", "created", "versions", "tolerances", "files",
                     "passed")


class ValidationError(RuntimeError):
    """An exported file failed to load, used Flex/custom ops, or disagreed with Keras (a failed check: exit 1).

    Attributes:
        report_path: str or None. The report that holds the details.
    """

    def __init__(self, message: str, report_path: str | None = None):
        super().__init__(message)
        self.report_path = report_path


# ----------------------------------------------------------------------------- comparisons


def _compare(output: np.ndarray, reference: np.ndarray, tolerance: formats.Tolerance) -> dict:
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


def check_file(fmt: formats.Format, path: str, inputs: np.ndarray, reference: np.ndarray, *,
               input_type: str = "float") -> dict:
    """Inspects, loads and runs one exported file and compares its outputs with ``reference``.

    Returns:
        The report entry: ``format``, ``path``, ``size_bytes``, ``sha256`` (of the bytes checked:
        :func:`litert.content_sha256`; both absent when the file cannot be read), ``passed``,
        ``failures``, the format's own fields and, when the file ran, the comparison (``max_abs_diff``, ...).
    """
    entry = {"format": fmt.name, "path": path, "passed": False, "failures": []}
    try:
        entry["size_bytes"], entry["sha256"] = litert.file_size(path), litert.content_sha256(path)
        info, failures = fmt.inspect(path)
    except (OSError, ValueError) as error:  # missing, a FIFO or device (in a SavedModel too), not of this format
        entry["error"] = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        entry["failures"] = ["not a readable file"]
        return entry
    entry.update(info)
    entry["failures"] += failures
    try:
        output, details = fmt.run(path, inputs, input_type=input_type)
    except ValueError as error:  # the runtime cannot load or run it
        entry["error"] = str(error)
        entry["failures"].append("does not load or run")
        return entry
    entry.update(details)
    entry.update(_compare(output, reference, fmt.tolerance))
    if not entry["within_tolerance"]:
        entry["failures"].append("outside tolerance")
    entry["passed"] = not entry["failures"]
    return entry


def previous_fields(report_path: str, model: keras.Model) -> dict:
    """The fields of an existing report of ``model`` that validation does not compute (the export's ``build``,
    ``params``, ``macs``, ``int8``), to keep when :func:`validate_files` rewrites it; {} when there is no
    usable report of this model and input shape."""
    try:
        previous = read_report(report_path)
    except ValueError:  # none, or damaged: it is rewritten whole
        return {}
    if previous["model"] != model.name or previous["input_shape"] != list(model.input_shape[1:]):
        return {}
    return {key: value for key, value in previous.items() if key not in VALIDATION_FIELDS}


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
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"`batch_size` (validation images) must be a positive int. Received: batch_size={num!r}")
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
    batch_size: int = VALIDATION_BATCH,
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
        batch_size: int. Number of validation images. Defaults to 8.

    Returns:
        The report dict (``passed``, ``files``, ...).

    Raises:
        ValueError: for an unknown format key or a bad batch size.
        pf_keras.fileio.WriteError: when the report cannot be written (the previous one is intact).
        ValidationError: when a file fails and ``raise_on_failure``.
    """
    selected = formats.parse(list(files), key="files")  # ValueError for an unknown format key
    inputs = validation_batch(model, num=batch_size)
    reference = np.asarray(model(inputs, training=False))
    entries = []
    for fmt in selected:
        entry = check_file(fmt, files[fmt.name], inputs, reference, input_type=input_type)
        if require_full_delegation and "xnnpack" in entry and not entry["xnnpack"]["fully_delegated"]:
            entry["failures"].append("not fully delegated to XNNPACK")
            entry["passed"] = False
        entries.append(entry)
    report = {
        "model": model.name,
        "input_shape": list(model.input_shape[1:]),
        "input_type": input_type,
        "batch": {"size": len(inputs), "seed": VALIDATION_SEED, "source": "pf_keras_export.images.procedural_images"},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        **(extra or {}),
        "tolerances": {fmt.name: dataclasses.asdict(fmt.tolerance) for fmt in selected},
        "files": entries,
        "passed": all(entry["passed"] for entry in entries),
    }
    if report_path is not None:
        fileio.write_json(report_path, report)
    if raise_on_failure and not report["passed"]:
        raise ValidationError(failure_message(report, report_path), report_path)
    return report


def find_files(folder: str, model_name: str) -> dict[str, str]:
    """``format name -> path`` of every registered format's file present in an export folder.

    Raises:
        ValueError: when the folder holds none.
    """
    files = {}
    for fmt in formats.FORMATS.values():
        path = fmt.path_in(folder, model_name)
        if os.path.exists(path):
            files[fmt.name] = path
    if not files:
        raise ValueError(f"No exported files of {model_name!r} found. Received: folder={folder!r}")
    return files


def failure_message(report: dict, report_path: str | None) -> str:
    """One line naming the failed files, why, and the report."""
    failed = [f"{e['format']} ({'; '.join(e['failures'])})" for e in report["files"] if not e["passed"]]
    return f"Exported files failed validation: {', '.join(failed)}. Report: {report_path}"


def _number(entry: dict, key: str, spec: str, scale: float = 1.0) -> str:
    return format(entry[key] * scale, spec) if key in entry else "-"


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
            delegation = f"CPU: {','.join(sorted(set(xnn['cpu_ops'])))}"
        ops = sum(e.get("ops", {}).values()) if "ops" in e else "-"
        tolerance = format(e["tolerance"]["max_abs"], ".0e") if "tolerance" in e else "-"
        status = "ok" if e["passed"] else "FAIL: " + "; ".join(e["failures"])
        lines.append(
            f"| {e['format']} | {_number(e, 'size_bytes', '.2f', 1e-6)} | {_number(e, 'max_abs_diff', '.2e')} | "
            f"{_number(e, 'mean_abs_diff', '.2e')} | {tolerance} | {_number(e, 'top1_agreement', '.2f')} | "
            f"{delegation} | {ops} | {status} |"
        )
    return "\n".join(lines)
