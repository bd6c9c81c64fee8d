"""The PyTorch route as benchmark rows: official PfLayer models converted by litert-torch, cached.

"Keras port or PyTorch export?": :func:`pf_keras_export.benchmark_lib.benchmark` times the
official models, converted the way a PyTorch user would take them to the phone, beside the
port's files. torch and litert-torch live in another Python (``python``); this module runs
``litert_torch_convert.py`` (shipped beside it, importing neither pf_keras nor TensorFlow)
there as a program, once per (model, precision), and keeps each file in the benchmark's
``files/`` folder with a record of what it is, so a later run reuses it.

Official counterparts exist for the port's ``fp32``, ``int8`` and ``dynamic`` formats
(:data:`PRECISIONS`; see the converter's docstring for what each is). A cached file is reused only when its record
matches the request (model, precision, image size, calibration count, converter version) and
the file still has the recorded SHA-256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable

import numpy as np

from pf_keras import fileio
from pf_keras.weights.download import sha256_of
from pf_keras_export import litert

CONVERTER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "litert_torch_convert.py")
ROUTE = "litert-torch"  # the ``route`` of these rows; the port's rows have route "port"
PRECISIONS = ("fp32", "int8", "dynamic")  # port formats with an official counterpart
# Port formats compared with an official precision of another name: the official int8 files of the
# transformers keep LayerNorm/attention in float, which is what the port's int8_mixed does.
COUNTERPARTS = {"int8_mixed": "int8"}
# What the official int8 rows are (recorded in the benchmark's metadata; see litert_torch_convert.py).
INT8_DESCRIPTION = (
    "litert-torch PT2E static post-training quantization (PT2EQuantizer, symmetric per-channel int8 weights, "
    "per-tensor int8 activations from a histogram observer over the port's int8 calibration images)"
)
DYNAMIC_DESCRIPTION = (
    "litert-torch PT2E dynamic-range quantization (PT2EQuantizer, symmetric per-channel int8 weights, "
    "activations quantized per inference; no calibration)"
)
CHECK_TIMEOUT_S = 600
CONVERT_TIMEOUT_S = 3600


@dataclasses.dataclass(frozen=True)
class TorchRoute:
    """Where the PyTorch route runs.

    Attributes:
        python: str. A Python executable with torch and litert-torch.
        pflayer_dir: str. A checkout of github.com/naver-ai/PfLayer.
    """

    python: str
    pflayer_dir: str


@dataclasses.dataclass(frozen=True)
class OfficialFile:
    """One official model at one precision: a file to time, or why there is none."""

    model: str
    precision: str
    path: str | None
    failure: str | None = None
    record: dict | None = None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _run(route: TorchRoute, arguments: list[str], timeout: float) -> tuple[int, str, str]:
    try:
        proc = subprocess.run([route.python, CONVERTER, *arguments], capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return -1, "", f"no answer within {timeout:.0f} s"
    except OSError as error:  # not executable, not a program, gone
        return -1, "", f"{type(error).__name__}: {error.strerror or error}"
    return proc.returncode, proc.stdout, proc.stderr


def check(route: TorchRoute) -> dict:
    """Runs the converter's ``check``: versions and, per official model, "ok" or why not.

    Raises:
        ValueError: when ``python`` cannot run the converter (no torch or litert-torch) or
            ``pflayer_dir`` is not a PfLayer checkout (it defines none of the official models).
    """
    if not os.path.isdir(route.pflayer_dir):
        raise ValueError(f"`pflayer_dir` must be a PfLayer checkout. Received: pflayer_dir={route.pflayer_dir!r}")
    code, out, err = _run(route, ["check", "--pflayer_dir", route.pflayer_dir], CHECK_TIMEOUT_S)
    info = _json_line(out) if code == 0 else None
    if info is None or not isinstance(info.get("models"), dict):
        raise ValueError(f"`litert_torch_python` must be a Python with torch and litert-torch ({_last_line(err)}). "
                         f"Received: litert_torch_python={route.python!r}")
    if "ok" not in info["models"].values():
        reasons = sorted(set(info["models"].values()))
        raise ValueError(f"`pflayer_dir` must be a PfLayer checkout ({'; '.join(reasons)[:300]}). "
                         f"Received: pflayer_dir={route.pflayer_dir!r}")
    return info


def _json_line(text: str) -> dict | None:
    try:
        value = json.loads(_last_line(text))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _sha256(path: str) -> str | None:
    try:
        return sha256_of(path)
    except OSError:
        return None


def file_path(files_dir: str, model: str, precision: str) -> str:
    """Where the official ``model`` at ``precision`` is cached."""
    return os.path.join(files_dir, f"{model}_litert_torch_{precision}.tflite")


def _request(model: str, precision: str, image_size: int, num_calibration: int) -> dict:
    return {
        "model": model,
        "precision": precision,
        "image_size": image_size,
        "num_calibration": num_calibration if precision == "int8" else None,
        "converter_sha256": _sha256(CONVERTER),
    }


def _cached(path: str, request: dict) -> dict | None:
    """The record of a cached file that matches ``request`` and is intact, else None."""
    try:
        with open(path[: -len(".tflite")] + ".json", encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in request.items()):
        return None
    return record if record.get("sha256") == _sha256(path) else None


def official_file(
    route: TorchRoute,
    model: str,
    precision: str,
    *,
    files_dir: str,
    image_size: int,
    calibration: Callable[[int], np.ndarray],
    num_calibration: int,
) -> OfficialFile:
    """The official ``model`` at ``precision`` in ``files_dir``: reused when cached, else converted.

    Args:
        route: TorchRoute. The Python and checkout.
        model: str. An official model name.
        precision: str. One of :data:`PRECISIONS`.
        files_dir: str. The benchmark's file folder.
        image_size: int. Input side.
        calibration: callable ``size -> normalised float images (n, size, size, 3)``; called for int8 only.
        num_calibration: int. Recorded with an int8 file (part of its cache key).

    Returns:
        An :class:`OfficialFile`; ``failure`` holds one line when the conversion failed (nothing is cached).

    Raises:
        pf_keras.fileio.WriteError: when the file cannot be cached (disk full).
    """
    path = file_path(files_dir, model, precision)
    request = _request(model, precision, image_size, num_calibration)
    record = _cached(path, request)
    if record is not None:
        return OfficialFile(model, precision, path, record=record)
    with tempfile.TemporaryDirectory(prefix="pf_keras_litert_torch_") as scratch:
        output = os.path.join(scratch, "model.tflite")
        arguments = ["convert", "--pflayer_dir", route.pflayer_dir, "--model", model, "--precision", precision,
                     "--image_size", str(image_size), "--output", output]
        if precision == "int8":
            images = os.path.join(scratch, "calibration.npy")
            np.save(images, np.asarray(calibration(image_size), dtype=np.float32), allow_pickle=False)
            arguments += ["--calibration", images]
        code, out, err = _run(route, arguments, CONVERT_TIMEOUT_S)
        info = _json_line(out) if code == 0 else None
        if info is None:
            return OfficialFile(model, precision, None, failure=f"conversion failed (exit {code}): {_last_line(err)}")
        try:
            with open(output, "rb") as f:
                content = f.read()
            litert.read_model(content)
        except (OSError, ValueError) as error:
            return OfficialFile(model, precision, None, failure=f"conversion wrote no LiteRT file ({error})")
    record = {**request, "torch": info.get("torch"), "litert_torch": info.get("litert_torch"),
              "sha256": hashlib.sha256(content).hexdigest()}
    fileio.write_bytes(path, content)
    fileio.write_json(path[: -len(".tflite")] + ".json", record)
    return OfficialFile(model, precision, path, record=record)
