"""On-device latency: LiteRT's ``benchmark_model`` on an Android phone over adb.

Pushes the ``.tflite`` files and the ``benchmark_model`` binary to ``/data/local/tmp``, runs
every file with each thread count and delegate, parses the tool's output and writes the same
table / CSV / PNG / JSON as the host benchmark (``device_benchmark.*``). ``benchmark_model``
reports the average over its timed runs (plus min, max and std), not a median: the table's
latency column is that average.

Delegates: ``cpu`` (LiteRT's own kernels, ``--use_xnnpack=false``), ``xnnpack`` (the default
CPU path of LiteRT, ``--use_xnnpack=true``), ``gpu`` (``--use_gpu=true``; OpenCL/OpenGL, fp16
compute by default; thread count irrelevant).

Getting ``benchmark_model`` (Android arm64), either:

- the prebuilt nightly binary linked from the LiteRT "Performance measurement" page
  (``android_aarch64_benchmark_model``), or
- building it from github.com/google-ai-edge/LiteRT with Bazel and an Android NDK:
  ``bazel build -c opt --config=android_arm64 //tflite/tools/benchmark:benchmark_model``.

The command line over it is :mod:`pf_keras_export.android` (``pf-keras-android``).
"""

from __future__ import annotations

import datetime
import glob
import math
import os
import re
import selectors
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence

from pf_keras import fileio, safe_open
from pf_keras_export import formats as formats_lib
from pf_keras_export import report as report_lib
from pf_keras_export.benchmark_lib import format_table, machine_info, write_results
from pf_keras_export.files import check_output_dir

DELEGATES = {
    "cpu": ["--use_xnnpack=false"],
    "xnnpack": ["--use_xnnpack=true"],
    "gpu": ["--use_gpu=true"],
}
DEVICE_DIR = "/data/local/tmp/pf_keras"
MAX_OUTPUT_BYTES = 16 << 20  # of one adb command's output kept (benchmark_model prints a few KB), and of --parse
_STAT = re.compile(r"^count=\d+(?:\s+\w+=[-\d.]+)+\s*$")
_PAIR = re.compile(r"(\w+)=([-\d.]+)")
_TIMINGS = re.compile(
    r"Inference timings in us: Init: ([\d.]+), First inference: ([\d.]+), Warmup \(avg\): ([\d.]+), "
    r"Inference \(avg\): ([\d.]+)"
)


def parse_benchmark_output(text: str) -> dict:
    """Parses the text ``benchmark_model`` prints.

    Reads the summary line ``Inference timings in us: Init: ..., First inference: ...,
    Warmup (avg): ..., Inference (avg): ...``, the ``count=... first=... curr=... min=... max=...
    avg=... std=...`` statistics (the first such line is the warm-up, the last the timed runs;
    extra fields such as ``p50=`` or ``median=`` are kept), the model size, the delegate coverage
    and the memory footprint lines.

    Args:
        text: str. stdout (and stderr) of one ``benchmark_model`` run.

    Returns:
        dict: ``init_us``, ``first_inference_us``, ``warmup_avg_us``, ``inference_avg_us``,
        ``warmup`` and ``inference`` (the count= fields, microseconds), ``model_size_mb``,
        ``delegate`` ("full", "partial" or None), ``delegate_kernels``, ``memory_mb``.

    Raises:
        ValueError: when the text has no ``Inference timings`` line (the run failed), or a number in
            it is malformed or not finite.

    Example:
        >>> parse_benchmark_output(
        ...     "count=50 first=900 curr=850 min=800 max=990 avg=860.5 std=40\\n"
        ...     "Inference timings in us: Init: 2000, First inference: 900, Warmup (avg): 870, Inference (avg): 860.5"
        ... )["inference_avg_us"]
        860.5
    """
    match = _TIMINGS.search(text)
    if match is None:
        tail = "\n".join(text.strip().splitlines()[-5:])
        raise ValueError(
            f"benchmark_model output has no 'Inference timings in us' line (the run failed?). Last lines: {tail!r}"
        )
    init, first, warm, avg = (_number(v) for v in match.groups())
    stats = [
        {key: _number(value) for key, value in _PAIR.findall(line)}
        for line in text.splitlines()
        if _STAT.match(line.strip())
    ]
    result = {
        "init_us": init,
        "first_inference_us": first,
        "warmup_avg_us": warm,
        "inference_avg_us": avg,
        "warmup": stats[0] if len(stats) > 1 else None,
        "inference": stats[-1] if stats else None,
        "model_size_mb": None,
        "delegate": None,
        "delegate_kernels": None,
        "memory_mb": {},
    }
    size = re.search(r"The input model file size \(MB\): ([\d.]+)", text)
    if size:
        result["model_size_mb"] = _number(size.group(1))
    if re.search(r"graph will be completely executed by the delegate", text):
        result["delegate"], result["delegate_kernels"] = "full", 1
    partial = re.search(r"graph will be partially executed by the delegate w/ (\d+) delegate kernels", text)
    if partial:
        result["delegate"], result["delegate_kernels"] = "partial", int(partial.group(1))
    memory_lines = (("Memory footprint delta from the start of the tool", "delta"), ("Peak memory footprint", "peak"))
    for label, key in memory_lines:
        memory = re.search(re.escape(label) + r" \(MB\): init=([\d.]+) overall=([\d.]+)", text)
        if memory:
            result["memory_mb"][key] = {"init": _number(memory.group(1)), "overall": _number(memory.group(2))}
    return result


def _number(text: str) -> float:
    """A number of benchmark_model's output; ValueError for one that is malformed (``1.2.3``, ``-``) or not finite."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"benchmark_model output has a malformed or non-finite number: {text[:40]!r}")
    return value


def read_output(path: str) -> str:
    """A saved ``benchmark_model`` output: at most :data:`MAX_OUTPUT_BYTES`, undecodable bytes replaced.

    Raises:
        OSError: when it cannot be read, is larger, or is not a regular file (a FIFO, ``/dev/zero``).
    """
    return safe_open.read_bytes(path, MAX_OUTPUT_BYTES).decode("utf-8", errors="replace")


def benchmark_command(
    device_model: str, *, binary: str, threads: int, delegate: str, runs: int = 50, warmup_runs: int = 5
) -> list[str]:
    """The ``benchmark_model`` argument list for one run on the device.

    Raises:
        ValueError: for an unknown delegate.
    """
    if delegate not in DELEGATES:
        raise ValueError(f"`delegate` must be one of {tuple(DELEGATES)}. Received: delegate={delegate!r}")
    return [
        binary,
        f"--graph={device_model}",
        f"--num_threads={threads}",
        f"--num_runs={runs}",
        f"--warmup_runs={warmup_runs}",
        *DELEGATES[delegate],
    ]


def row_from_output(path: str, parsed: dict, *, threads: int, delegate: str, runs: int, warmup: int,
                    report: dict | None = None) -> dict:
    """A benchmark row (same fields as the host benchmark) from a parsed output.

    The input size, params and MACs come from ``report``, the export report that proves this
    file (:func:`proven_report`); without one they are None (the table shows ``?``).
    """
    named = formats_lib.by_file_name(os.path.basename(path))
    model, fmt = (named[0], named[1].name) if named else (os.path.splitext(os.path.basename(path))[0], "?")
    inference = parsed["inference"] or {}
    return {
        "model": model,
        "format": fmt,
        "delegate": delegate,
        "threads": threads,
        "image_size": report["input_shape"][0] if report else None,
        "params": report.get("params") if report else None,
        "macs": report.get("macs") if report else None,
        "size_bytes": os.path.getsize(path) if os.path.isfile(path) else int((parsed["model_size_mb"] or 0) * 1e6),
        "median_ms": parsed["inference_avg_us"] / 1e3,  # benchmark_model reports the mean.
        "p90_ms": None,
        "mean_ms": parsed["inference_avg_us"] / 1e3,
        "min_ms": inference["min"] / 1e3 if "min" in inference else None,
        "std_ms": inference["std"] / 1e3 if "std" in inference else None,
        "init_ms": parsed["init_us"] / 1e3,
        "runs": int(inference.get("count", runs)),
        "warmup": warmup,
        "fully_delegated": parsed["delegate"] == "full" if delegate != "cpu" else None,
        "cpu_ops": [],
        "path": path,
    }


def proven_report(path: str) -> dict | None:
    """The export report next to ``path`` when it validated exactly this file (its format and model name, and
    its SHA-256; reports written before digests: its size), else None: its params and MACs would describe
    another file.

    Raises:
        ValueError: one line for a report there that cannot be read or has a field of the wrong type.
    """
    report_path = os.path.join(os.path.dirname(os.path.abspath(path)), "report.json")
    if not os.path.lexists(report_path):
        return None
    report = report_lib.read_report(report_path)
    named = formats_lib.by_file_name(os.path.basename(path))
    entry = report_lib.entry_for(report, named[1].name) if named and named[0] == report["model"] else None
    return report if entry is not None and report_lib.file_mismatch(path, entry) is None else None


def expand_files(files: str | Sequence[str]) -> list[str]:
    """LiteRT files (the registry's timeable formats) from files, export folders (``OUT`` or ``OUT/NAME``) or a
    comma-separated string. A file reached twice is timed once.

    Raises:
        ValueError: when nothing matches, or two different files have the same name (``a/m.tflite``,
            ``b/m.tflite``): their raw outputs, their copies on the phone and their table rows would not be
            told apart.
    """
    if isinstance(files, str):
        files = [f for f in files.split(",") if f]
    paths = []
    for item in files:
        if os.path.isdir(item):
            folder = glob.escape(item)
            found = glob.glob(os.path.join(folder, "*")) + glob.glob(os.path.join(folder, "*", "*"))
            paths += sorted(p for p in found if os.path.isfile(p) and _timeable(p))
        elif os.path.isfile(item) and _timeable(item):
            paths.append(item)
        else:
            raise ValueError(f"`files` must be .tflite files or export folders. Received: {item!r}")
    if not paths:
        raise ValueError(f"`files` holds no .tflite file. Received: files={list(files)!r}")
    unique: dict[str, str] = {}  # real path -> the path as first given
    for path in paths:
        unique.setdefault(os.path.realpath(path), path)
    by_name: dict[str, str] = {}
    for path in unique.values():
        other = by_name.setdefault(os.path.basename(path), path)
        if other != path:
            raise ValueError(f"`files` holds two files named {os.path.basename(path)!r} ({other}, {path}): their "
                             f"results would not be told apart; time them in separate runs (another --output_dir)")
    return list(unique.values())


def _timeable(path: str) -> bool:
    named = formats_lib.by_file_name(os.path.basename(path))
    return named is not None and named[1].timeable or path.endswith(".tflite")


class AdbError(ValueError):
    """adb is missing or a command on the phone failed (a user-environment error: one line, exit 2)."""


def run_capped(command: list[str], *, timeout: float, limit: int) -> tuple[int, bytes, bool]:
    """Runs ``command`` with stdout and stderr in one pipe, keeping at most ``limit`` bytes of what it prints.

    Returns:
        ``(exit status, output, over)``: a command that prints more than ``limit`` bytes is killed
        (``over`` True, status -1) instead of filling the memory.

    Raises:
        subprocess.TimeoutExpired: past ``timeout`` seconds (the command is killed).
    """
    deadline = time.monotonic() + timeout
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    chunks, size = [], 0
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while size <= limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(command, timeout)
                if selector.select(left):
                    chunk = os.read(process.stdout.fileno(), 1 << 16)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
        if size > limit:
            return -1, b"".join(chunks)[:limit], True
        return process.wait(max(deadline - time.monotonic(), 0)), b"".join(chunks), False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


class Adb:
    """Thin wrapper over the ``adb`` command line; what one command prints is capped at :data:`MAX_OUTPUT_BYTES`."""

    def __init__(self, adb: str = "adb", serial: str | None = None):
        resolved = shutil.which(adb)
        if resolved is None:
            raise AdbError(
                f"`adb` must be the Android platform-tools adb executable (on PATH or a path). Received: adb={adb!r}"
            )
        self.base = [resolved] + (["-s", serial] if serial else [])

    def __call__(self, *args: str, timeout: float = 600) -> str:
        shown = " ".join(args)[:300]
        try:
            status, output, over = run_capped(self.base + list(args), timeout=timeout, limit=MAX_OUTPUT_BYTES)
        except subprocess.TimeoutExpired:
            raise AdbError(f"adb {shown} did not finish in {timeout:.0f} s") from None
        if over:
            raise AdbError(f"adb {shown} printed more than {MAX_OUTPUT_BYTES >> 20} MiB (benchmark_model prints a few "
                           f"KB): stopped it")
        text = output.decode("utf-8", errors="replace")
        if status != 0:
            raise AdbError(f"adb {shown} failed ({status}): {' '.join(text.split())[-500:]}")
        return text

    def shell(self, *args: str, timeout: float = 600) -> str:
        """Runs one command on the device, each argument quoted for the device's shell (a file named
        ``x;rm -rf y.tflite`` is a file name there, not a command)."""
        return self("shell", shlex.join(args), timeout=timeout)

    def device_info(self) -> dict:
        props = {}
        for key in ("ro.product.manufacturer", "ro.product.model", "ro.soc.model", "ro.board.platform",
                    "ro.build.version.release"):
            props[key] = self.shell("getprop", key).strip()
        return props


def run_on_device(
    files: str | Sequence[str],
    *,
    binary: str,
    output_dir: str,
    threads: Sequence[int] = (1, 4),
    delegates: Sequence[str] = ("xnnpack", "gpu"),
    runs: int = 50,
    warmup_runs: int = 5,
    adb: str = "adb",
    serial: str | None = None,
    device_dir: str = DEVICE_DIR,
    verbose: bool = True,
) -> dict:
    """Runs ``benchmark_model`` on a phone for every file x delegate x thread count.

    Args:
        files: .tflite files or export folders (see :func:`expand_files`).
        binary: str. Local path of the Android ``benchmark_model`` binary.
        output_dir: str. Where ``device_benchmark.*`` and the raw outputs go.
        threads: ints. CPU thread counts (GPU runs once). Defaults to (1, 4).
        delegates: names from :data:`DELEGATES`. Defaults to ("xnnpack", "gpu").
        runs: int. Timed runs. Defaults to 50.
        warmup_runs: int. Warm-up runs. Defaults to 5.
        adb: str. adb executable. Defaults to "adb".
        serial: str or None. Device serial when several are attached.
        device_dir: str. Folder on the device. Defaults to /data/local/tmp/pf_keras.
        verbose: bool. Print progress and the table. Defaults to True.

    Returns:
        dict with ``rows``, ``meta`` and ``paths``.

    Raises:
        ValueError: for bad files, delegates, binary or adb; :class:`AdbError` when adb fails.
        pf_keras.fileio.WriteError: when a result file cannot be written.
    """
    paths = expand_files(files)
    unknown = [d for d in delegates if d not in DELEGATES]
    if unknown or not delegates:
        raise ValueError(f"`delegates` must be a subset of {tuple(DELEGATES)}. Received: delegates={list(delegates)!r}")
    if not os.path.isfile(binary):
        raise ValueError(f"`binary` must be the benchmark_model executable for the phone. Received: binary={binary!r}")
    reports = {path: proven_report(path) for path in paths}  # damaged reports: one line before the phone is used
    output_dir = check_output_dir(output_dir)
    raw_dir = os.path.join(output_dir, "device_outputs")
    os.makedirs(raw_dir, exist_ok=True)
    device = Adb(adb, serial)
    device.shell("mkdir", "-p", device_dir)
    device_binary = f"{device_dir}/benchmark_model"
    device("push", os.path.abspath(binary), device_binary)
    device.shell("chmod", "+x", device_binary)
    rows = []
    for path in paths:
        if verbose and reports[path] is None:
            print(f"{path}: no export report validated this file; params and MACs are shown as ?")
        device_model = f"{device_dir}/{os.path.basename(path)}"
        device("push", os.path.abspath(path), device_model)
        for delegate in delegates:
            for count in threads if delegate != "gpu" else threads[:1]:
                command = benchmark_command(device_model, binary=device_binary, threads=count, delegate=delegate,
                                            runs=runs, warmup_runs=warmup_runs)
                text = device.shell(*command)
                name = f"{os.path.splitext(os.path.basename(path))[0]}_{delegate}_{count}t.txt"
                fileio.write_text(os.path.join(raw_dir, name), text)
                row = row_from_output(path, parse_benchmark_output(text), threads=count, delegate=delegate,
                                      runs=runs, warmup=warmup_runs, report=reports[path])
                rows.append(row)
                if verbose:
                    print(f"{row['model']:18s} {row['format']:8s} {delegate:8s} {count} thr  "
                          f"avg {row['median_ms']:8.2f} ms")
        device.shell("rm", "-f", device_model)
    info = device.device_info()
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": f"{info['ro.product.manufacturer']} {info['ro.product.model']}".strip(),
        "cpu": info.get("ro.soc.model") or info.get("ro.board.platform"),
        "android": info["ro.build.version.release"],
        "host": machine_info(),
        "threads": list(threads), "delegates": list(delegates), "runs": runs, "warmup": warmup_runs,
        "runtime": "LiteRT benchmark_model (average over timed runs)",
    }
    result_paths = write_results(rows, meta, output_dir, prefix="device_benchmark", latency_label="avg (ms)")
    if verbose:
        print(format_table(rows, meta, latency_label="avg (ms)"))
        print(f"Wrote {', '.join(result_paths.values())}")
    return {"rows": rows, "meta": meta, "paths": result_paths}
