"""Host latency benchmark of TFLite files with the LiteRT interpreter (XNNPACK, as deployed).

For each model and format: export (SavedModel -> TFLite, builtin ops only), load with
``ai_edge_litert`` at each thread count, ``warmup`` untimed runs, then ``runs`` timed
``invoke()`` calls on a fixed input (batch 1), interleaved across all files (one call of each
per round, shuffled) so that drifting load on a shared machine hits every model alike.
Reports median and p90 latency, params, MACs, file size and whether XNNPACK took the whole
graph. Writes ``benchmark.md`` (Markdown table), ``benchmark.csv``, ``benchmark.png`` (latency
vs MACs, one marker per model/format) and ``benchmark.json`` (rows plus date, machine, CPU
model, thread counts and library versions).

Default model set: the paper's ResNets and transformers present in the registry
(resnet50, resnet50_max, resnet50_hybrid, vit_s_max, pit_s_max) plus two outside baselines,
keras.applications ResNet50 (v1: stride on the 1x1 conv) and MobileNetV2, both ``weights=None``.
Latency does not depend on the weights' values, so random weights are timed.

"Keras port or PyTorch export?": given a :class:`~pf_keras_export.torch_route.TorchRoute` (a
Python with torch and litert-torch, and a PfLayer checkout), :func:`benchmark` also converts
the official model of each benchmarked name through litert-torch (fp32 and int8,
:mod:`pf_keras_export.torch_route`) and times those files in the same interleaved rounds,
as rows with route "litert-torch" beside the port's (route "port"), each pair with the ratio
``port_over_litert_torch`` (port median / litert-torch median). Their params and MACs are the
port's (the same network). A failed conversion leaves a row marked with its reason and no
times; the other files are still timed.

Every result file is written atomically. The command line over it is
:mod:`pf_keras_export.benchmark` (``pf-keras-benchmark``).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence

import keras
import numpy as np

import pf_keras
from pf_keras import fileio
from pf_keras_export import formats as formats_lib
from pf_keras_export import litert
from pf_keras_export import report as report_lib
from pf_keras_export import torch_route as torch_route_lib
from pf_keras_export.args import MAX_THREADS
from pf_keras_export.build import BASELINES, build_model, known_models, model_folder
from pf_keras_export.context import ExportContext
from pf_keras_export.files import check_output_dir
from pf_keras_export.images import load_images
from pf_keras_export.tflite import calibration_inputs
from pf_keras_export.validate_lib import versions

DEFAULT_MODELS = (
    "resnet50",
    "resnet50_max",
    "resnet50_hybrid",
    "vit_s_max",
    "pit_s_max",
    "keras_resnet50",
    "keras_mobilenetv2",
)
DEFAULT_FORMATS = ("fp32", "int8")
_MARKERS = "os^Dvp*hX"  # plot markers, one per registered format (cycled)
REFERENCE_MODEL = "resnet50"  # The "speed-up" column divides its latency by each row's.
PORT_ROUTE = "port"  # the ``route`` of the port's rows (official models: torch_route.ROUTE)
CSV_FIELDS = (
    "model", "format", "route", "delegate", "threads", "image_size", "params", "macs", "size_bytes",
    "median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "warmup", "fully_delegated", "speedup_vs_resnet50",
    "port_over_litert_torch", "failure",
)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none): how shared the machine was."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    """Date, host, CPU, load average and library versions recorded with every benchmark."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "versions": versions(),
    }


def time_tflite(path: str, *, threads: int = 1, warmup: int = 5, runs: int = 30, seed: int = 0) -> dict:
    """Latency of one ``.tflite`` file with the LiteRT interpreter (XNNPACK on), batch 1.

    Args:
        path: str. The file.
        threads: int. Interpreter threads. Defaults to 1.
        warmup: int. Untimed runs first. Defaults to 5.
        runs: int. Timed runs. Defaults to 30.
        seed: int. Seed of the (random) input. Defaults to 0.

    Returns:
        dict with ``median_ms``, ``p90_ms``, ``mean_ms``, ``min_ms`` and the ``xnnpack`` coverage
        (:func:`pf_keras_export.litert.xnnpack_coverage`).

    Raises:
        ValueError: for non-positive ``threads`` or ``runs``, or a negative ``warmup``.
    """
    return time_interleaved([path], threads=threads, warmup=warmup, runs=runs, seed=seed)[0]


def time_interleaved(
    paths: Sequence[str | bytes], *, threads: int = 1, warmup: int = 5, runs: int = 30, seed: int = 0
) -> list[dict]:
    """Times several ``.tflite`` files in interleaved rounds (one ``invoke()`` of each per round).

    On a shared machine the load drifts over minutes; interleaving gives every file the same
    conditions, so ratios between files stay fair even when absolute times move. The order
    within a round is shuffled (seeded). Each file is read once: its interpreter and its XNNPACK
    coverage come from the same bytes (an item may be those bytes already, e.g. bytes whose digest
    was checked), so a file replaced while it is timed cannot mix into the result.

    Returns:
        One dict per path, as :func:`time_tflite`.

    Raises:
        ValueError: for ``threads`` outside 1..MAX_THREADS, non-positive ``runs``, a negative ``warmup``, or a
            file without exactly one input and one output.
    """
    if not 1 <= threads <= MAX_THREADS or runs < 1 or warmup < 0:
        raise ValueError(
            f"`threads` and `runs` must be >= 1 (threads at most {MAX_THREADS}) and `warmup` >= 0. Received: "
            f"threads={threads}, runs={runs}, warmup={warmup}"
        )
    rng = np.random.default_rng(seed)
    contents = [path if isinstance(path, bytes) else litert.read_flatbuffer(path) for path in paths]
    interpreters = []
    for path, content in zip(paths, contents, strict=True):
        name = path if isinstance(path, str) else "model"
        interpreter = litert.interpreter(content, num_threads=threads)
        detail, _ = litert.io_details(interpreter, name)
        if np.issubdtype(detail["dtype"], np.integer):
            info = np.iinfo(detail["dtype"])
            sample = rng.integers(info.min, int(info.max) + 1, detail["shape"]).astype(detail["dtype"])
        else:
            sample = rng.standard_normal(detail["shape"]).astype(detail["dtype"])
        interpreter.set_tensor(detail["index"], sample)
        for _ in range(warmup):
            interpreter.invoke()
        interpreters.append(interpreter)
    times = np.empty((len(paths), runs))
    for i in range(runs):
        for k in rng.permutation(len(paths)):
            start = time.perf_counter()
            interpreters[k].invoke()
            times[k, i] = time.perf_counter() - start
    times *= 1e3
    return [
        {
            "median_ms": float(np.median(row)),
            "p90_ms": float(np.percentile(row, 90)),
            "mean_ms": float(row.mean()),
            "min_ms": float(row.min()),
            "xnnpack": litert.xnnpack_coverage(content),
        }
        for row, content in zip(times, contents, strict=True)
    ]


def _parse_list(value: str | Sequence, kind=str) -> list:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    return [kind(v) for v in value]


def _thread_counts(threads: str | Sequence[int]) -> list[int]:
    """Thread counts from a comma-separated str or ints; ValueError unless each is in 1..MAX_THREADS."""
    try:
        counts = _parse_list(threads, int)
    except (TypeError, ValueError):
        counts = []
    if not counts or min(counts) < 1 or max(counts) > MAX_THREADS:
        raise ValueError(f"`threads` must be ints from 1 to {MAX_THREADS}. Received: threads={threads!r}")
    return counts


def resolve_models(models: str | Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(models to run, default models skipped because they are not registered yet).

    A model is a registry or baseline name, or a model folder (a preset folder such as a training
    run's ``final/``, or the run folder; :func:`pf_keras_export.build.model_folder`).

    Raises:
        ValueError: for an explicitly requested unknown model, or a folder that holds no model.
    """
    if models is None:
        available = known_models()
        return [m for m in DEFAULT_MODELS if m in available], [m for m in DEFAULT_MODELS if m not in available]
    models = list(dict.fromkeys(_parse_list(models)))  # a name given twice is timed once
    unknown = [m for m in models if m not in known_models() and model_folder(m) is None]
    if unknown or not models:
        raise ValueError(f"`models` must be names from {known_models()} or model folders. Received: models={models!r}")
    return models, []


def _file_labels(names: Sequence[str]) -> dict[str, str]:
    """A distinct file-name-safe label per model: its name, or a model folder's path with ``_`` for separators,
    with ``_2``, ``_3``, ... added where two would be equal (``px/a_b`` and ``px_a/b``)."""
    labels: dict[str, str] = {}
    for name in names:
        label = name if name in known_models() else os.path.normpath(name).strip(os.sep).replace(os.sep, "_")
        base, count = label, 1
        while label in labels.values():
            count += 1
            label = f"{base}_{count}"
        labels[name] = label
    return labels


def benchmark(
    models: str | Sequence[str] | None = None,
    *,
    output_dir: str,
    formats: str | Sequence[str] = DEFAULT_FORMATS,
    image_size: int | None = None,
    threads: str | Sequence[int] = (1,),
    warmup: int = 5,
    runs: int = 30,
    model_kwargs: str | dict | None = None,
    num_calibration: int = 16,
    torch_route: torch_route_lib.TorchRoute | None = None,
    verbose: bool = True,
) -> dict:
    """Exports and times models; writes the table, CSV, plot and JSON to ``output_dir``.

    Args:
        models: comma-separated str, sequence or None (:data:`DEFAULT_MODELS` that exist).
        output_dir: str. Results and the ``files/`` it timed.
        formats: timeable (LiteRT) formats of the registry. Defaults to ("fp32", "int8").
        image_size: int or None. Input side. Defaults to None: each model's default size (the
            ``input_shape`` in ``model_kwargs``, else 224).
        threads: thread counts (comma-separated str or ints). Defaults to (1,).
        warmup: int. Untimed runs per measurement. Defaults to 5.
        runs: int. Timed runs per measurement. Defaults to 30.
        model_kwargs: builder overrides applied to the pf_keras models (not the baselines), e.g.
            a small config for a smoke run. Defaults to None. The official models are always
            built as published, so with ``torch_route`` the pairs then compare different networks.
        num_calibration: int. int8 calibration images (latency does not depend on them). Defaults to 16.
        torch_route: TorchRoute or None. Also time the official models of ``models`` converted by
            litert-torch (formats fp32 and int8 only; cached in ``output_dir/files``). Defaults to None.
        verbose: bool. Print progress and the table. Defaults to True.

    Returns:
        dict with ``rows``, ``meta`` and the written ``paths``.

    Raises:
        ValueError: for unknown models or formats, bad counts, an unwritable ``output_dir``, or a
            ``torch_route`` whose Python or checkout does not work (checked before any export).
    """
    names, skipped = resolve_models(models)
    selected = formats_lib.parse(formats, timeable=True)
    formats = [fmt.name for fmt in selected]
    threads = _thread_counts(threads)
    if runs < 1 or warmup < 0:
        raise ValueError(f"`runs` must be >= 1 and `warmup` >= 0. Received: runs={runs}, warmup={warmup}")
    output_dir = check_output_dir(output_dir)
    route_info = torch_route_lib.check(torch_route) if torch_route else None
    files_dir = os.path.join(output_dir, "files")
    os.makedirs(files_dir, exist_ok=True)
    labels = _file_labels(names)
    files = []  # (name, format, route, path, profile): convert everything first, then time interleaved.
    failed = []  # (name, format, profile, reason): official conversions that gave no file
    for name in names:
        kwargs = None if name in BASELINES else model_kwargs
        model = build_model(name, model_kwargs=kwargs, image_size=image_size)
        profile = pf_keras.profile(model)
        with tempfile.TemporaryDirectory(prefix="pf_keras_bench_") as scratch:
            context = ExportContext(
                scratch_dir=scratch, calibration=lambda size: load_images(None, num_calibration, size)
            )
            for fmt in selected:
                path = fmt.convert(model, fmt.path_in(files_dir, labels[name]), context)
                files.append((name, fmt.name, PORT_ROUTE, path, profile))
        if verbose:
            print(f"exported {name} ({', '.join(formats)})", flush=True)
        keras.utils.clear_session()
        if route_info is not None:
            _add_official(name, profile, formats=formats, route=torch_route, route_info=route_info,
                          files_dir=files_dir, num_calibration=num_calibration, files=files, failed=failed,
                          verbose=verbose)
    rows = []
    for count in threads:
        timings = time_interleaved([f[3] for f in files], threads=count, warmup=warmup, runs=runs)
        for (name, fmt, route, path, profile), timing in zip(files, timings, strict=True):
            size = int(profile.input_shape[0])
            rows.append(_row(name, fmt, count, size, profile.params, profile.macs, path, timing, runs, warmup,
                             route=route))
        for name, fmt, profile, reason in failed:
            rows.append(_failed_row(name, fmt, count, int(profile.input_shape[0]), profile, reason, runs, warmup))
    routes = (PORT_ROUTE, torch_route_lib.ROUTE)
    rows.sort(key=lambda r: (names.index(r["model"]), formats.index(r["format"]), r["threads"],
                             routes.index(r["route"])))
    meta = {**machine_info(), "image_size": image_size, "threads": threads, "warmup": warmup, "runs": runs,
            "formats": formats, "models": names, "skipped_models": skipped, "model_kwargs": model_kwargs,
            "runtime": "ai_edge_litert Interpreter, default XNNPACK delegate, batch 1"}
    if route_info is not None:
        meta["litert_torch"] = {"python": torch_route.python, "pflayer_dir": torch_route.pflayer_dir,
                                "torch": route_info.get("torch"), "litert_torch": route_info.get("litert_torch"),
                                "official_models": route_info["models"], "int8": torch_route_lib.INT8_DESCRIPTION,
                                "dynamic": torch_route_lib.DYNAMIC_DESCRIPTION}
    return _finish(rows, meta, output_dir, verbose)


def _add_official(name, profile, *, formats, route, route_info, files_dir, num_calibration, files, failed,
                  verbose) -> None:
    """Appends the official ``name``'s litert-torch files to ``files`` (or its failures to ``failed``)."""
    status = route_info["models"].get(name)
    if status is None:  # no official counterpart (the keras.applications baselines)
        return
    size = int(profile.input_shape[0])
    for fmt in (f for f in formats if f in torch_route_lib.PRECISIONS):
        if status != "ok":
            official = torch_route_lib.OfficialFile(name, fmt, None, failure=f"official model unavailable ({status})")
        else:
            official = torch_route_lib.official_file(
                route, name, fmt, files_dir=files_dir, image_size=size, num_calibration=num_calibration,
                calibration=lambda s: calibration_inputs(load_images(None, num_calibration, s), takes_pixels=False),
            )
        if official.path:
            files.append((name, fmt, torch_route_lib.ROUTE, official.path, profile))
        else:
            failed.append((name, fmt, profile, official.failure))
        if verbose:
            print(f"official {name} {fmt} via litert-torch: {official.failure or official.path}", flush=True)


def benchmark_export_dir(
    export_dir: str,
    *,
    output_dir: str,
    formats: str | Sequence[str] | None = None,
    threads: str | Sequence[int] = (1,),
    warmup: int = 5,
    runs: int = 30,
    verbose: bool = True,
) -> dict:
    """Times the LiteRT files the export tool wrote under ``export_dir`` (params and MACs from report.json).

    The files are found where the format registry names them, next to each ``report.json``
    (so an export folder can be moved or copied as a whole). Only files their report proves are
    timed: each must have passed its validation and still hold the bytes it was validated on.

    Raises:
        ValueError: when ``export_dir`` holds no export report, a report is damaged (a field of the
            wrong type, a model name with folders in it), a file failed its validation, changed since,
            or has no digest in its report, or no file of the requested formats is there.
    """
    formats = [fmt.name for fmt in formats_lib.parse(formats or formats_lib.names(timeable=True), timeable=True)]
    threads = _thread_counts(threads)
    reports = []  # (folder, report)
    if os.path.isdir(export_dir):
        for entry in sorted(os.listdir(export_dir)):
            path = os.path.join(export_dir, entry, "report.json")
            if os.path.lexists(path):
                reports.append((os.path.dirname(path), report_lib.read_report(path)))
    if not reports:
        raise ValueError(
            f"`export_dir` must hold the export tool's output (NAME/report.json). Received: export_dir={export_dir!r}"
        )
    files = []  # (report, format name, path, the bytes checked: the only bytes timed)
    for folder, report in reports:
        for name in formats:
            path, entry = formats_lib.FORMATS[name].path_in(folder, report["model"]), report_lib.entry_for(report, name)
            report_path = os.path.join(folder, "report.json")
            if entry is None:
                if os.path.lexists(path):
                    raise ValueError(
                        f"{path} is not in {report_path} (a later export of other formats into the same folder "
                        f"replaced the report): it is unproven and not timed. Check it with pf-keras-validate "
                        f"(the report then covers every file there), export it again, or leave its format out of "
                        f"--formats."
                    )
                continue
            if os.path.lexists(path):
                files.append((report, name, path, _check_proven(path, entry, report_path)))
    if not files:
        raise ValueError(f"`export_dir` holds no file of the formats {formats}. Received: export_dir={export_dir!r}")
    output_dir = check_output_dir(output_dir)
    rows = []
    for count in threads:
        timings = time_interleaved([content for *_, content in files], threads=count, warmup=warmup, runs=runs)
        for (report, name, path, content), timing in zip(files, timings, strict=True):
            rows.append(_row(report["model"], name, count, report["input_shape"][0], report.get("params"),
                             report.get("macs"), path, timing, runs, warmup, size_bytes=len(content)))
    rows.sort(key=lambda r: (r["model"], formats.index(r["format"]), r["threads"]))
    meta = {**machine_info(), "threads": threads, "warmup": warmup, "runs": runs, "formats": formats,
            "export_dir": export_dir, "runtime": "ai_edge_litert Interpreter, default XNNPACK delegate, batch 1"}
    return _finish(rows, meta, output_dir, verbose)


def _check_proven(path: str, entry: dict, report_path: str) -> bytes:
    """The bytes of ``path``, read once; ValueError unless ``entry`` says the file passed its validation and
    these are the bytes it was validated on."""
    if entry.get("passed") is not True:
        failures = "; ".join(map(str, entry.get("failures") or ())) or "no verdict recorded"
        raise ValueError(f"{path} did not pass its validation in {report_path} ({failures}): it is not timed. "
                         f"Export it again (pf-keras-export).")
    try:
        content = litert.read_flatbuffer(path)
    except OSError as error:
        content, mismatch = b"", f"it cannot be read ({type(error).__name__}: {error.strerror or error})"
    else:
        mismatch = report_lib.content_mismatch(content, entry)
    if mismatch:
        raise ValueError(
            f"{path} is not the file {report_path} validated ({mismatch}): it changed after the export, or its "
            f"report is damaged. Export it again (pf-keras-export) or check it again (pf-keras-validate) before "
            f"timing it."
        )
    return content


def _row(name, fmt, threads, size, params, macs, path, timing, runs, warmup, *, route=PORT_ROUTE,
         size_bytes: int | None = None) -> dict:
    return {
        "model": name, "format": fmt, "route": route, "threads": threads, "image_size": size, "params": params,
        "macs": macs,
        "size_bytes": os.path.getsize(path) if size_bytes is None else size_bytes,
        "median_ms": timing["median_ms"], "p90_ms": timing["p90_ms"],
        "mean_ms": timing["mean_ms"], "min_ms": timing["min_ms"], "runs": runs, "warmup": warmup,
        "fully_delegated": timing["xnnpack"]["fully_delegated"], "cpu_ops": timing["xnnpack"]["cpu_ops"],
        "path": path,
    }


def _failed_row(name, fmt, threads, size, profile, reason, runs, warmup) -> dict:
    """A litert-torch row whose file could not be made: no times, the reason in ``failure``."""
    return {
        "model": name, "format": fmt, "route": torch_route_lib.ROUTE, "threads": threads, "image_size": size,
        "params": profile.params, "macs": profile.macs, "size_bytes": None, "median_ms": None, "p90_ms": None,
        "mean_ms": None, "min_ms": None, "runs": runs, "warmup": warmup, "fully_delegated": None, "cpu_ops": [],
        "path": None, "failure": reason,
    }


def _key(row: dict) -> tuple:
    return row["format"], row.get("route", PORT_ROUTE), row.get("delegate"), row["threads"], row["image_size"]


def add_speedups(rows: list[dict], reference: str = REFERENCE_MODEL) -> None:
    """Adds ``speedup_vs_resnet50``: the reference's median over the row's, same format/route/threads/size."""
    base = {_key(r): r["median_ms"] for r in rows if r["model"] == reference and r.get("median_ms")}
    for row in rows:
        key = _key(row)
        row["speedup_vs_resnet50"] = base[key] / row["median_ms"] if key in base and row.get("median_ms") else None


def add_route_ratios(rows: list[dict]) -> None:
    """Adds ``port_over_litert_torch`` to both rows of each (port, litert-torch) pair: port median / litert-torch's.

    Below 1 the port's file is faster. None where a row has no partner or no time. A port format
    in :data:`~pf_keras_export.torch_route.COUNTERPARTS` (``int8_mixed``) gets its ratio against
    that official precision (``int8``), whose row keeps the ratio of its same-name partner.
    """
    def pair(row: dict) -> tuple:
        return row["model"], row["format"], row.get("delegate"), row["threads"], row["image_size"]

    port = {pair(r): r for r in rows if r.get("route", PORT_ROUTE) == PORT_ROUTE}
    for row in rows:
        row["port_over_litert_torch"] = None
    for row in rows:
        if row.get("route") != torch_route_lib.ROUTE:
            continue
        partner = port.get(pair(row))
        if partner and partner.get("median_ms") and row.get("median_ms"):
            ratio = partner["median_ms"] / row["median_ms"]
            row["port_over_litert_torch"] = partner["port_over_litert_torch"] = ratio
    official = {pair(r): r for r in rows if r.get("route") == torch_route_lib.ROUTE}
    for row in port.values():  # e.g. the port's int8_mixed against the official int8 (the official row keeps its own)
        counterpart = torch_route_lib.COUNTERPARTS.get(row["format"])
        other = official.get((row["model"], counterpart, *pair(row)[2:])) if counterpart else None
        if other and other.get("median_ms") and row.get("median_ms"):
            row["port_over_litert_torch"] = row["median_ms"] / other["median_ms"]


def _format_label(row: dict) -> str:
    label = f"{row['format']} / {row['delegate']}" if row.get("delegate") else row["format"]
    if row.get("route", PORT_ROUTE) != PORT_ROUTE:
        label = f"official via {row['route']} {label}"
    return label


def format_table(rows: list[dict], meta: dict, *, latency_label: str = "median (ms)") -> str:
    """Rows as a Markdown table, headed by the date, machine and versions.

    With litert-torch rows the table gains a ``port / litert-torch`` column (port median over
    the official file's, same format and threads) and its header the torch/litert-torch versions.
    """
    v = meta.get("versions", {})
    routes = any(r.get("route", PORT_ROUTE) != PORT_ROUTE for r in rows)
    title = (
        f"Measured {meta.get('date', '')} on {meta.get('cpu', '?')} ({meta.get('cpu_count', '?')} CPUs), "
        f"{meta.get('runtime', '')}; TensorFlow {v.get('tensorflow', '?')}, Keras {v.get('keras', '?')}, "
        f"ai-edge-litert {v.get('ai_edge_litert', '?')}; warm-up {meta.get('warmup')}, {meta.get('runs')} runs."
    )
    if meta.get("load_average"):
        title += f" Load average {'/'.join(f'{x:.2f}' for x in meta['load_average'])} (1/5/15 min) when timed."
    if routes and meta.get("litert_torch"):
        info = meta["litert_torch"]
        title += (f" Official models: PfLayer checkout, torch {info.get('torch', '?')}, "
                  f"litert-torch {info.get('litert_torch', '?')}.")
    ratio_head, ratio_rule = (" port / litert-torch |", "---|") if routes else ("", "")
    header = [
        title,
        "",
        f"| model | format | threads | params (M) | GMACs | size (MB) | {latency_label} | p90 (ms) | x vs resnet50 "
        f"|{ratio_head} XNNPACK |",
        f"|---|---|---|---|---|---|---|---|---|{ratio_rule}---|",
    ]
    lines = []
    for r in rows:
        params = "?" if r.get("params") is None else f"{r['params'] / 1e6:.2f}"  # ?: unknown (no proven report)
        macs = "?" if r.get("macs") is None else format(r["macs"] / 1e9, ".2f" if r["macs"] >= 1e8 else ".2g")
        speedup = f"{r['speedup_vs_resnet50']:.2f}" if r.get("speedup_vs_resnet50") else "-"
        if r.get("failure"):
            delegation = f"failed: {r['failure']}"
        elif r.get("fully_delegated"):
            delegation = "full"
        else:
            delegation = "CPU: " + ",".join(sorted(set(r.get("cpu_ops", []))))
        median = f"{r['median_ms']:.2f}" if r.get("median_ms") is not None else "-"
        p90 = f"{r['p90_ms']:.2f}" if r.get("p90_ms") is not None else "-"
        size = f"{r['size_bytes'] / 1e6:.2f}" if r.get("size_bytes") is not None else "-"
        ratio = ""
        if routes:
            ratio = f" {r['port_over_litert_torch']:.2f} |" if r.get("port_over_litert_torch") else " - |"
        lines.append(
            f"| {r['model']} | {_format_label(r)} | {r['threads']} | {params} | {macs} | {size} | "
            f"{median} | {p90} | {speedup} |{ratio} {delegation} |"
        )
    return "\n".join(header + lines)


def csv_text(rows: list[dict]) -> str:
    """The rows as CSV (:data:`CSV_FIELDS`)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def plot_png(rows: list[dict], *, title: str = "") -> bytes:
    """Latency vs GMACs, one panel per thread count, marker per format, colour per model (PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thread_counts = sorted({r["threads"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    markers = {name: _MARKERS[i % len(_MARKERS)] for i, name in enumerate(formats_lib.names())}
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    fig, axes = plt.subplots(1, len(thread_counts), figsize=(6.5 * len(thread_counts), 4.8), squeeze=False)
    for ax, count in zip(axes[0], thread_counts, strict=True):
        for r in (r for r in rows if r["threads"] == count and r.get("median_ms") is not None):
            x = (r["macs"] or 0) / 1e9
            official = r.get("route", PORT_ROUTE) != PORT_ROUTE  # hollow markers
            ax.scatter(x, r["median_ms"], marker=markers.get(r["format"], "X"), s=45,
                       facecolors="none" if official else colours[r["model"]], edgecolors=colours[r["model"]])
            label = f"{r['model']} {_format_label(r)}"
            ax.annotate(label, (x, r["median_ms"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel("GMACs (multiply-adds)")
        ax.set_ylabel("median latency (ms)")
        ax.set_title(f"{title} {count} thread{'s' if count > 1 else ''}".strip())
        ax.grid(alpha=0.3)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    plt.close(fig)
    return image.getvalue()


def write_results(rows: list[dict], meta: dict, output_dir: str, *, prefix: str = "benchmark",
                  latency_label: str = "median (ms)") -> dict:
    """Writes ``<prefix>.md``, ``.csv``, ``.png`` and ``.json`` as one set (:func:`pf_keras.fileio.write_files`);
    returns their paths.

    Raises:
        pf_keras.fileio.WriteError: when a file cannot be written (the previous files are intact).
    """
    add_speedups(rows)
    add_route_ratios(rows)
    paths = {
        "markdown": os.path.join(output_dir, f"{prefix}.md"),
        "csv": os.path.join(output_dir, f"{prefix}.csv"),
        "png": os.path.join(output_dir, f"{prefix}.png"),
        "json": os.path.join(output_dir, f"{prefix}.json"),
    }
    fileio.write_files({
        paths["markdown"]: (format_table(rows, meta, latency_label=latency_label) + "\n").encode(),
        paths["csv"]: csv_text(rows).encode(),
        paths["png"]: plot_png(rows, title=meta.get("device", meta.get("cpu", ""))),
        paths["json"]: (json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n").encode(),
    })
    return paths


def _finish(rows: list[dict], meta: dict, output_dir: str, verbose: bool) -> dict:
    paths = write_results(rows, meta, output_dir)
    if verbose:
        if meta.get("skipped_models"):
            print(f"Skipped (not in the registry yet): {meta['skipped_models']}")
        failures = sorted({f"{r['model']} {r['format']}: {r['failure']}" for r in rows if r.get("failure")})
        for failure in failures:
            print(f"litert-torch row without a file: {failure}")
        print(format_table(rows, meta))
        print(f"Wrote {', '.join(paths.values())}")
    return {"rows": rows, "meta": meta, "paths": paths}
