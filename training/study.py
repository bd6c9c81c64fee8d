"""The paper's layer-level study as a tool: train a grid of block-kind configurations, tabulate, plot.

Han et al. (ICLR 2022, https://arxiv.org/abs/2202.02777) swap the spatial op of every
bottleneck between trainable ops (3x3 conv, 3x3 depthwise conv) and parameter-free ones
(max-pool, average pool, identity) and compare accuracy against cost. Each *cell* of the grid
here is one ResNet whose blocks use the given kinds (:data:`pf_keras.blocks.BLOCK_KINDS`),
trained with :func:`training.train.run` from the same recipe (``demo`` by default: the
builtin dataset, a (1, 1, 1, 1)-deep R50 at width 0.25 and 32x32, shortened to 5 epochs).

For every cell: validation top-1, trainable params and MACs (:func:`pf_keras.profile`),
TFLite fp32 latency (batch 1, 1 thread, median of 30 runs after 5 warm-ups, LiteRT
interpreter; ``--no_tflite`` skips it) and training images/s (median over the run's inner
loops after the first, which includes tracing). Results go to
``OUT/cells/<name>/result.json`` (atomic); the grid to ``OUT/study.{md,csv,json,png}``.

Resume: rerunning the same command skips every cell with a result file and continues an
interrupted cell from its checkpoint (``OUT/cells/<name>/train``). A damaged ``result.json`` (not
JSON, fields missing, a FIFO, over 8 MiB) is measured again; a damaged ``speed.json`` starts
afresh; either one being a folder is an error. A cell whose stored
settings differ from the command's is an error (use another ``--out_dir``). One study per
``--out_dir`` at a time (a lock file refuses a second). SIGTERM checkpoints the running cell
and exits 143, as ``train.py`` does.

Examples (from the repository root; about 3-5 CPU minutes on 2 cores for the default grid):

    pf-keras-study --output_dir runs/study
    pf-keras-study --output_dir runs/study2 --cell conv=regular --cell hybrid=efficient \\
        --cell mixed=regular,max+regular,max,max --epochs 3
    pf-keras-study --output_dir runs/study_in --dataset folder:/data/shapes --image_size 64

``--cell NAME=SPEC``: SPEC is one kind for every block, or four comma-separated per-stage
entries, each a kind or ``+``-joined kinds, one per block of that stage.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Any

if __name__ == "__main__":  # run as a script: TensorFlow's start-up lines silenced before it loads (unless --verbose)
    from pf_keras_export import startup

    startup.start(sys.argv, "pf-keras-study")

import numpy as np

import pf_keras
from pf_keras import fileio, safe_open
from pf_keras.blocks import BLOCK_KINDS
from pf_keras.cli import PREEMPTED_EXIT, run_cli
from pf_keras.values import is_int, is_real
from pf_keras_export.args import ArgumentParser
from pf_keras_training import lock as lock_lib
from pf_keras_training import recipes as recipes_lib
from pf_keras_training import train as train_lib
from pf_keras_training.callbacks import TrainCallback

# The study's default grid: every spatial op in every block (the paper's Table 1 columns),
# "efficient" being the hybrid rule (max-pool, avg-pool + conv where the network downsamples).
DEFAULT_GRID = {
    "conv": "regular",
    "dwconv": "depthwise",
    "max": "max",
    "avg": "average",
    "identity": "identity",
    "hybrid": "efficient",
}
DEFAULT_DEPTHS = (1, 1, 1, 1)
DEFAULT_WIDTH = 0.25
DEFAULT_EPOCHS = 5
RESULT_VERSION = 1
MAX_CELL_FILE_BYTES = 8 << 20  # result.json ~2 KB; speed.json ~20 bytes per inner loop
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Preempted(Exception):
    """SIGTERM stopped a cell's training after its checkpoint; the command exits 143 and resumes on rerun."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One configuration of the grid: a name and its block kinds (str or one entry per stage)."""

    name: str
    block_kinds: Any


def parse_cell(text: str) -> Cell:
    """``NAME=SPEC`` -> :class:`Cell` (see the module docstring); ValueError naming the rule otherwise."""
    name, sep, spec = text.partition("=")
    if not sep or not _NAME.fullmatch(name) or not spec:
        raise ValueError(f"A cell is NAME=SPEC with NAME of letters, digits, '_', '.', '-'. Received: --cell={text!r}")
    stages = spec.split(",")
    if len(stages) == 1 and "+" not in spec:
        kinds: Any = spec
    elif len(stages) == len(DEFAULT_DEPTHS):
        kinds = [stage if "+" not in stage else stage.split("+") for stage in stages]
    else:
        raise ValueError(f"A cell SPEC is one kind or 4 comma-separated stage entries. Received: --cell={text!r}")
    for kind in re.split(r"[,+]", spec):
        if kind not in BLOCK_KINDS:
            raise ValueError(f"Block kinds must be in {BLOCK_KINDS}. Received: {kind!r} in --cell={text!r}")
    return Cell(name, kinds)


def study_recipe(*, dataset: str = "builtin", data_dir: str | None = None, image_size: int = 32,
                 epochs: int = DEFAULT_EPOCHS, batch_size: int = 64, depths=DEFAULT_DEPTHS,
                 width_mult: float = DEFAULT_WIDTH, overrides: dict[str, Any] | None = None) -> recipes_lib.Recipe:
    """The ``demo`` recipe on ``dataset`` with the study's model size (block kinds are set per cell)."""
    recipe = recipes_lib.get_recipe("demo")
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(
        recipe.model, name="resnet50", kwargs={"depths": list(depths), "width_mult": width_mult}))
    values = {"data.dataset": dataset, "data.data_dir": data_dir, "data.image_size": image_size,
              "data.global_batch_size": batch_size, "schedule.epochs": epochs}
    values.update(overrides or {})
    return recipes_lib.apply_overrides(recipe, values)


def cell_recipe(base: recipes_lib.Recipe, cell: Cell) -> recipes_lib.Recipe:
    """``base`` with the cell's block kinds."""
    kwargs = {**base.model.kwargs, "block_kinds": cell.block_kinds}
    return dataclasses.replace(base, name=f"{base.name}_study", model=dataclasses.replace(base.model, kwargs=kwargs))


def tflite_latency_ms(model, image_size: int, *, runs: int = 30, warmup: int = 5) -> float:
    """Median fp32 TFLite latency (ms) of ``model`` at batch 1 on 1 thread (SavedModel -> converter -> LiteRT)."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    with tempfile.TemporaryDirectory(prefix="pf_study_") as tmp:
        saved = os.path.join(tmp, "saved_model")
        model.export(saved, format="tf_saved_model", verbose=False)
        flatbuffer = tf.lite.TFLiteConverter.from_saved_model(saved).convert()
    interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
    interpreter.allocate_tensors()
    (detail,) = interpreter.get_input_details()
    x = np.random.default_rng(0).normal(size=(1, image_size, image_size, 3)).astype(np.float32)
    interpreter.set_tensor(detail["index"], x)
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        interpreter.invoke()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return float(statistics.median(times))


def _read_json(path: str) -> dict | None:
    """A cell file's JSON object; None if missing or damaged (not JSON, a FIFO, over :data:`MAX_CELL_FILE_BYTES`):
    a result is then measured again, speeds start afresh. Read without blocking."""
    try:
        data = safe_open.read_json(path, MAX_CELL_FILE_BYTES)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class _SpeedRecorder(TrainCallback):
    """Keeps the trainer (its model is measured after the run) and appends every inner loop's images/s to
    ``path`` (kept across preemptions: a resumed cell adds to the speeds of its earlier part)."""

    def __init__(self, path: str) -> None:
        self.path = path
        speeds = (_read_json(path) or {}).get("images_per_sec")
        valid = isinstance(speeds, list) and all(
            is_real(s, finite=True) and s > 0 for s in speeds)
        self.speeds: list[float] = [float(s) for s in speeds] if valid else []  # a damaged file: start afresh
        self.trainer = None

    def on_train_begin(self, trainer) -> None:
        self.trainer = trainer

    def on_loop_end(self, step: int, metrics: dict[str, Any]) -> None:
        if metrics.get("images_per_sec"):
            self.speeds.append(float(metrics["images_per_sec"]))
            fileio.write_json(self.path, {"images_per_sec": self.speeds})


def run_cell(cell: Cell, base: recipes_lib.Recipe, out_dir: str, *, tflite: bool = True,
             verbose: bool = True) -> tuple[dict[str, Any], bool]:
    """Trains and measures one cell unless its result file exists. Returns ``(result, trained_now)``."""
    cell_dir = os.path.join(out_dir, "cells", cell.name)
    result_path, speed_path = os.path.join(cell_dir, "result.json"), os.path.join(cell_dir, "speed.json")
    recipe = cell_recipe(base, cell)
    settings = {"version": RESULT_VERSION, "recipe": recipes_lib.to_dict(recipe), "tflite": tflite}
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back from the file
    for path in (result_path, speed_path):  # written by renames, which cannot replace a folder
        if os.path.isdir(path) and not os.path.islink(path):
            raise ValueError(f"{path} is a folder; remove it (the cell is measured again). "
                             f"Received: out_dir={out_dir!r}")
    stored = _read_json(result_path)
    if stored is not None and stored.get("settings") == settings:
        if _complete(stored, cell):
            return stored, False  # else a damaged result: measured again below (training resumes at its end)
    elif stored is not None and "settings" in stored:
        raise ValueError(
            f"The stored cell {cell.name!r} was run with other settings; use a new --out_dir or the same flags. "
            f"Received: out_dir={out_dir!r}"
        )
    os.makedirs(cell_dir, exist_ok=True)
    speed = _SpeedRecorder(speed_path)
    if verbose:
        print(f"[study] cell {cell.name}: block_kinds={cell.block_kinds}", flush=True)
    summary = train_lib.run(recipe, os.path.join(cell_dir, "train"), verbose=False, callbacks=[speed])
    if summary["status"] == "preempted":
        raise Preempted(f"cell {cell.name!r} preempted at step {summary['step']} (checkpoint saved); rerun to resume")
    if summary["status"] != "completed":
        raise ValueError(f"Training of cell {cell.name!r} stopped ({summary['status']}); rerun to resume")
    model = speed.trainer.model
    size = base.data.image_size
    cost = pf_keras.profile(model, size)
    steady = speed.speeds[1:] or speed.speeds  # the first inner loop includes tracing
    result = {
        "name": cell.name,
        "block_kinds": cell.block_kinds,
        "val_top1": summary["val_top1"],
        "params": cost.params,
        "macs": cost.macs,
        "tflite_ms": tflite_latency_ms(model, size) if tflite else None,
        "train_images_per_sec": float(statistics.median(steady)) if steady else None,
        "steps": summary["step"],
        "settings": settings,
    }
    fileio.write_json(result_path, result)
    return result, True


def _complete(result: dict, cell: Cell) -> bool:
    """Whether a stored result has every field the table and plot read, of the right type (else it is recomputed:
    the training run resumes from its checkpoints, so a damaged result costs only the measurements)."""
    def number(value, optional: bool = False) -> bool:
        if value is None:
            return optional
        return is_real(value, finite=True)

    return (result.get("name") == cell.name and result.get("block_kinds") == json.loads(json.dumps(cell.block_kinds))
            and number(result.get("val_top1"), optional=True) and is_int(result.get("params"))
            and number(result.get("macs")) and number(result.get("tflite_ms"), optional=True)
            and number(result.get("train_images_per_sec"), optional=True) and is_int(result.get("steps")))


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _kinds_text(kinds) -> str:
    return kinds if isinstance(kinds, str) else ",".join(k if isinstance(k, str) else "+".join(k) for k in kinds)


COLUMNS = ("config", "block kinds", "val top-1 (%)", "params", "MMACs", "TFLite ms", "train img/s")


def table_rows(results: list[dict]) -> list[list[str]]:
    """One formatted row per cell, in :data:`COLUMNS` order."""
    return [[r["name"], _kinds_text(r["block_kinds"]),
             _fmt(None if r["val_top1"] is None else 100 * r["val_top1"], ".1f"), f"{r['params']:,}",
             f"{r['macs'] / 1e6:.2f}", _fmt(r["tflite_ms"], ".2f"), _fmt(r["train_images_per_sec"], ".0f")]
            for r in results]


def markdown_table(results: list[dict]) -> str:
    """The grid as a Markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines) + "\n"


def plot_png(results: list[dict], title: str) -> bytes:
    """Accuracy against MACs and against params, one labelled point per cell, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, label in ((axes[0], "macs", "MMACs"), (axes[1], "params", "trainable params (K)")):
        scale = 1e6 if key == "macs" else 1e3
        for r in results:
            x, y = r[key] / scale, 100 * (r["val_top1"] or 0.0)
            ax.scatter([x], [y])
            ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("val top-1 (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_outputs(results: list[dict], out_dir: str, *, title: str) -> dict[str, str]:
    """Writes ``study.md``, ``study.csv``, ``study.json`` and ``study.png`` as one set
    (:func:`pf_keras.fileio.write_files`); returns their paths."""
    paths = {ext: os.path.join(out_dir, f"study.{ext}") for ext in ("md", "csv", "json", "png")}
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    writer.writerows(table_rows(results))
    stored = [{k: v for k, v in r.items() if k != "settings"} for r in results]
    fileio.write_files({
        paths["md"]: markdown_table(results).encode(),
        paths["csv"]: text.getvalue().encode(),
        paths["json"]: (json.dumps(stored, indent=2) + "\n").encode(),
        paths["png"]: plot_png(results, title),
    })
    return paths


def run_study(cells: list[Cell], out_dir: str, base: recipes_lib.Recipe, *, tflite: bool = True,
              verbose: bool = True) -> dict[str, Any]:
    """Runs (or resumes) the grid in ``out_dir`` and writes the table and plot.

    Returns:
        ``{"results": [...], "trained": [names trained by this call], "paths": {...}}``.

    Raises:
        ValueError: for duplicate cell names, another study running in ``out_dir``, or
            stored cells with other settings.
    """
    names = [cell.name for cell in cells]
    if not cells or len(set(names)) != len(names):
        raise ValueError(f"The grid needs at least one cell and unique names. Received: cells={names}")
    recipes_lib.validate(base)
    for cell in cells:  # every cell's kinds against the depths, before anything trains
        size = base.data.image_size
        pf_keras.ResNet(base.model.kwargs.get("depths", DEFAULT_DEPTHS), cell.block_kinds,
                        input_shape=(size, size, 3), width_mult=0.125, classes=2)
    try:
        study_lock = lock_lib.RunLock(out_dir)  # a symlink, FIFO or folder as .lock: one line, nothing touched
    except lock_lib.LockHeld as held:
        raise ValueError(f"Another study is running in this out_dir ({held.holder}). "
                         f"Received: out_dir={out_dir!r}") from None
    with study_lock:
        fileio.remove_stale_temps(out_dir)  # a killed study's study.md/.csv/... temporaries
        results, trained = [], []
        for cell in cells:
            result, now = run_cell(cell, base, out_dir, tflite=tflite, verbose=verbose)
            results.append(result)
            if now:
                trained.append(cell.name)
        title = (f"{base.data.dataset}, {base.data.image_size}px, {base.schedule.epochs} epochs, "
                 f"depths {list(base.model.kwargs.get('depths', []))} x{base.model.kwargs.get('width_mult')}")
        paths = write_outputs(results, out_dir, title=title)
    return {"results": results, "trained": trained, "paths": paths}


def main(argv: list[str]) -> int:
    """Parses the flags, runs :func:`run_study`, prints the Markdown table."""
    parser = ArgumentParser(prog="pf-keras-study", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", "--out_dir", dest="out_dir", metavar="OUTPUT_DIR", required=True,
                        help="Study folder: one run folder per cell, study.md/.csv/.json/.png (--out_dir: deprecated "
                        "alias).")
    parser.add_argument("--cell", action="append", default=[], help="NAME=SPEC (repeatable); default: one per op")
    parser.add_argument("--dataset", default="builtin", help="builtin, folder:PATH, synthetic or a TFDS name")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--width_mult", type=float, default=DEFAULT_WIDTH)
    parser.add_argument("--depths", default="1,1,1,1", help="blocks per stage")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any recipe override")
    parser.add_argument("--no_tflite", action="store_true", help="skip the TFLite latency column")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.add_argument("--verbose", action="store_true", help="keep TensorFlow's own log lines")
    parser.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    try:
        depths = tuple(int(d) for d in args.depths.split(","))
    except ValueError:
        raise ValueError(f"--depths must be 4 comma-separated ints. Received: --depths={args.depths!r}") from None
    cells = [parse_cell(text) for text in args.cell] or [Cell(n, k) for n, k in DEFAULT_GRID.items()]
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes KEY=VALUE. Received: --set={item!r}")
        overrides[key] = value
    base = study_recipe(dataset=args.dataset, data_dir=args.data_dir, image_size=args.image_size,
                        epochs=args.epochs, batch_size=args.batch_size, depths=depths,
                        width_mult=args.width_mult, overrides=overrides)
    try:
        study = run_study(cells, args.out_dir, base, tflite=not args.no_tflite)
    except Preempted as stop:
        print(f"[study] {stop}", file=sys.stderr)
        return PREEMPTED_EXIT
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "settings"} for r in study["results"]]))
        return 0
    print(markdown_table(study["results"]), end="")
    print(f"[study] trained {len(study['trained'])} of {len(cells)} cells; wrote "
          + ", ".join(study["paths"].values()))
    return 0


def cli(argv: list[str] | None = None) -> int:
    """Entry point of ``pf-keras-study``: :func:`main` under the one error policy (pf_keras.cli.run_cli)."""
    return run_cli(main, argv, prog="pf-keras-study")


if __name__ == "__main__":
    sys.exit(cli())
