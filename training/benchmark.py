"""Training throughput per model on synthetic data, and input-pipeline throughput per core.

    pf-keras-train-benchmark --model resnet50,resnet50_max,resnet50_hybrid --batch_size 32
    pf-keras-train-benchmark --model resnet50_hybrid --model_kwargs 'depths=[1,1,1,1],width_mult=0.25' \\
        --image_size 32 --batch_size 64 --dataset builtin

Training images/s runs the real distributed train step (the same ``Trainer`` as train.py)
on a synthetic batch held in memory, after ``--warmup_steps``. The input pipeline is the
ImageNet train transform (partial decode, crop, flip, jitter, RandAugment if asked) on
``--dataset`` with tf.data limited to 1 thread (images/s per core) and to all cores.

Side by side with the official PyTorch code: with ``--torch_python`` (a Python with torch;
or ``$PF_KERAS_TORCH_PYTHON``) and ``--pflayer_dir`` (a checkout of naver-ai/PfLayer, never
copied here; or ``$PFLAYER_DIR``), each model's port timing is followed by the same model
from the checkout trained by ``training/torch_throughput.py`` (channels_last, fp32, SGD) in a
subprocess, and the table gains the PyTorch images/s and the port / PyTorch ratio:

    pf-keras-train-benchmark --image_size 32 --batch_size 128 --dataset '' \
        --torch_python /work/venv-torch/bin/python --pflayer_dir /work/pflayer
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any

if __name__ == "__main__":  # run as a script: TensorFlow's start-up lines silenced before it loads (unless --verbose)
    from pf_keras_export import startup

    startup.start(sys.argv, "pf-keras-train-benchmark")

import keras
import tensorflow as tf

from pf_keras import fileio
from pf_keras_export import args
from pf_keras_training import data as data_lib
from pf_keras_training import evaluate as evaluate_lib
from pf_keras_training import loop as loop_lib
from pf_keras_training import recipes as recipes_lib
from pf_keras_training import train as train_lib


def build_trainer(model_name: str, *, model_kwargs: dict[str, Any], image_size: int, batch_size: int, steps: int,
                  strategy: tf.distribute.Strategy, jit_compile: bool = False):
    """(Trainer, iterator of ``steps`` synthetic batches): the train step of train.py for one model, SGD recipe.

    Builds under the current global dtype policy.
    """
    recipe = recipes_lib.get_recipe("resnet90")
    recipe = dataclasses.replace(
        recipe,
        data=dataclasses.replace(recipe.data, dataset="synthetic", global_batch_size=batch_size, image_size=image_size),
        model=dataclasses.replace(recipe.model, name=model_name, kwargs=model_kwargs),
    )
    source = data_lib.resolve_source(recipe.data)
    with strategy.scope():
        model = train_lib.build_model(recipe, source.num_classes)
        optimizer = loop_lib.build_optimizer(recipe, model, mixed_precision=keras.config.dtype_policy().name)
        trainer = loop_lib.Trainer(strategy=strategy, model=model, optimizer=optimizer, recipe=recipe,
                                   steps_per_epoch=1000, jit_compile=jit_compile)
    fn = data_lib.make_train_dataset_fn(source, recipe.data, seed=0, epoch=0, steps_per_epoch=steps,
                                        skip_steps=0, label_smoothing=0.0, interpolation="bilinear")
    return trainer, iter(strategy.distribute_datasets_from_function(fn))


def train_throughput(model_name: str, *, model_kwargs: dict[str, Any], image_size: int, batch_size: int,
                     steps: int, warmup_steps: int, strategy: tf.distribute.Strategy,
                     mixed_precision: str = "float32", jit_compile: bool = False) -> float:
    """Training images/s of one model on synthetic data under ``strategy``."""
    previous = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy(mixed_precision)
    try:
        trainer, iterator = build_trainer(model_name, model_kwargs=model_kwargs, image_size=image_size,
                                          batch_size=batch_size, steps=steps + warmup_steps, strategy=strategy,
                                          jit_compile=jit_compile)
        trainer.train_loop(iterator, tf.constant(warmup_steps, tf.int32))
        start = time.perf_counter()
        loss, _, _ = trainer.train_loop(iterator, tf.constant(steps, tf.int32))
        float(loss)  # wait for the device
        return steps * batch_size / (time.perf_counter() - start)
    finally:
        keras.mixed_precision.set_global_policy(previous)


PROG = "pf-keras-train-benchmark"
RESULT_FILE = "train_benchmark.json"
TORCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_throughput.py")
TORCH_MODELS = ("resnet50", "resnet50_max", "resnet50_hybrid")  # PfLayer's names, the same as the port's


def check_torch_side(torch_python: str, pflayer_dir: str, models: list[str], model_kwargs: dict,
                     mixed_precision: str) -> None:
    """ValueError unless the side-by-side PyTorch run can start (before any timing)."""
    if not (os.path.isfile(torch_python) and os.access(torch_python, os.X_OK)):
        raise ValueError(
            f"`torch_python` must be an executable Python with torch. Received: torch_python={torch_python!r}")
    if not os.path.isfile(os.path.join(pflayer_dir, "resnet_pf.py")):
        raise ValueError(
            f"`pflayer_dir` must be a PfLayer checkout (resnet_pf.py). Received: pflayer_dir={pflayer_dir!r}")
    unknown = [m for m in models if m not in TORCH_MODELS]
    if unknown or model_kwargs or mixed_precision != "float32":
        raise ValueError(f"The PyTorch side runs the published {TORCH_MODELS} in float32 without model_kwargs. "
                         f"Received: models={unknown or models}, model_kwargs={model_kwargs}, "
                         f"mixed_precision={mixed_precision!r}")


def torch_throughput(model_name: str, *, torch_python: str, pflayer_dir: str, image_size: int, batch_size: int,
                     steps: int, warmup_steps: int) -> dict:
    """Training images/s of the official PyTorch model (channels_last, SGD), from ``torch_throughput.py``
    run by ``torch_python`` in a subprocess (this process's threads idle meanwhile)."""
    command = [torch_python, TORCH_SCRIPT, "--pflayer_dir", pflayer_dir, "--model", model_name,
               "--image_size", str(image_size), "--batch_size", str(batch_size), "--steps", str(steps),
               "--warmup_steps", str(warmup_steps)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"The PyTorch side failed for {model_name} (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])


def _print_tables(f, strategy, kwargs, rows, pipeline, device, side_by_side) -> None:
    """The human-readable tables of :func:`_main`."""
    print(f"\n{type(strategy).__name__} ({strategy.num_replicas_in_sync} replicas, {device}), batch {f.batch_size}, "
          f"{f.image_size}x{f.image_size}, {f.mixed_precision}, jit_compile={f.jit_compile}, kwargs={kwargs}")
    if side_by_side:
        print(f"{'model':<20} {'port images/s':>15} {'PyTorch images/s':>17} {'port / PyTorch':>15}")
        for row in rows:
            print(f"{row['model']:<20} {row['train_images_per_sec']:>15.1f} {row['torch_images_per_sec']:>17.1f} "
                  f"{row['ratio']:>15.2f}")
        print(f"(PyTorch {rows[0]['torch'] if rows else '?'}: official PfLayer models, channels_last, fp32, SGD)")
    else:
        print(f"{'model':<20} {'train images/s':>15}")
        for row in rows:
            print(f"{row['model']:<20} {row['train_images_per_sec']:>15.1f}")
    if pipeline:
        print(f"\ninput pipeline ({f.pipeline_dataset}, train transform{' + RandAugment' if f.randaugment else ''})")
        print(f"{'threads':<20} {'images/s':>15} {'images/s/core':>15}")
        for threads, rate in pipeline.items():
            print(f"{threads:<20} {rate:>15.1f} {rate / threads:>15.1f}")


def _main(f) -> int:
    """Times every model in ``--model``, then the input pipeline; prints a table (``--json``: JSON) and writes
    ``OUTPUT_DIR/train_benchmark.json`` with ``--output_dir``."""
    for name in ("image_size", "batch_size", "steps", "pipeline_batches"):
        if getattr(f, name) < 1:
            raise ValueError(f"`{name}` must be >= 1. Received: {name}={getattr(f, name)}")
    if f.warmup_steps < 0:
        raise ValueError(f"`warmup_steps` must be >= 0. Received: warmup_steps={f.warmup_steps}")
    output = evaluate_lib.check_output_dir(f.output_dir, RESULT_FILE) if f.output_dir else None  # before timing
    if f.strategy == "mirrored" and f.num_replicas and not tf.config.list_physical_devices("GPU"):
        loop_lib.configure_cpu_replicas(f.num_replicas)
    strategy = loop_lib.create_strategy(f.strategy, num_replicas=f.num_replicas)
    kwargs = recipes_lib.parse_kwargs(f.model_kwargs)
    models = [m for m in f.models.split(",") if m]
    side_by_side = bool(f.torch_python and f.pflayer_dir)
    if side_by_side:
        check_torch_side(f.torch_python, f.pflayer_dir, models, kwargs, f.mixed_precision)
    rows = []
    for name in models:  # port and PyTorch alternate, model by model, in one run
        rate = train_throughput(name, model_kwargs=kwargs, image_size=f.image_size, batch_size=f.batch_size,
                                steps=f.steps, warmup_steps=f.warmup_steps, strategy=strategy,
                                mixed_precision=f.mixed_precision, jit_compile=f.jit_compile)
        rows.append({"model": name, "train_images_per_sec": rate})
        if side_by_side:
            torch_row = torch_throughput(name, torch_python=f.torch_python, pflayer_dir=f.pflayer_dir,
                                         image_size=f.image_size, batch_size=f.batch_size, steps=f.steps,
                                         warmup_steps=f.warmup_steps)
            rows[-1].update(torch_images_per_sec=torch_row["train_images_per_sec"], torch=torch_row["torch"],
                            ratio=rate / torch_row["train_images_per_sec"])
    pipeline = {}
    if f.pipeline_dataset:
        cfg = recipes_lib.DataConfig(dataset=f.pipeline_dataset, data_dir=f.data_dir, global_batch_size=f.batch_size,
                                     image_size=f.image_size, color_jitter=0.4,
                                     randaugment_magnitude=9 if f.randaugment else 0)
        source = data_lib.resolve_source(cfg)
        cores = os.cpu_count() or 1
        for threads in sorted({1, cores}):
            rate = data_lib.input_pipeline_throughput(source, cfg, num_batches=f.pipeline_batches, threads=threads)
            pipeline[threads] = rate
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    result = {"train": rows, "pipeline": {str(k): v for k, v in pipeline.items()}, "device": device,
              "batch_size": f.batch_size, "image_size": f.image_size, "tf": tf.__version__, "keras": keras.__version__}
    if f.json:
        print(json.dumps(result))
    else:
        _print_tables(f, strategy, kwargs, rows, pipeline, device, side_by_side)
    if output:
        fileio.write_json(output, result)
    return 0


def build_parser() -> args.ArgumentParser:
    """The flags of pf-keras-train-benchmark (the README's flag table)."""
    p = args.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", "--models", dest="models", metavar="MODEL",
                   default="resnet50,resnet50_max,resnet50_hybrid",
                   help="Comma-separated registry names (default: the three ResNet-50s; --models: deprecated alias).")
    args.add_model_kwargs_flag(p)
    p.add_argument("--image_size", type=int, default=224, help="Image side (default 224).")
    p.add_argument("--batch_size", type=int, default=32, help="Global batch (default 32).")
    p.add_argument("--steps", type=int, default=10, help="Timed steps (default 10).")
    p.add_argument("--warmup_steps", type=int, default=3, help="Untimed steps first, tracing (default 3).")
    p.add_argument("--strategy", default="one_device", choices=list(loop_lib.STRATEGIES),
                   help="Distribution strategy (default one_device).")
    p.add_argument("--num_replicas", type=int, default=0, help="mirrored: logical CPU devices / GPUs (0 = all).")
    p.add_argument("--mixed_precision", default="float32", choices=list(train_lib.PRECISIONS),
                   help="Compute precision.")
    p.add_argument("--jit_compile", action="store_true", help="XLA for the forward/backward pass.")
    p.add_argument("--dataset", "--pipeline_dataset", dest="pipeline_dataset", metavar="DATASET", default="builtin",
                   help="Dataset of the input-pipeline benchmark: builtin (default), synthetic, folder:PATH or a "
                   "TFDS name; '' = skip it (--pipeline_dataset: deprecated alias).")
    p.add_argument("--data_dir", help="TFDS data folder (default: TFDS's own).")
    p.add_argument("--randaugment", action="store_true", help="Include RandAugment m9 in the pipeline benchmark.")
    p.add_argument("--pipeline_batches", type=int, default=20, help="Batches timed in the pipeline benchmark.")
    p.add_argument("--torch_python", default=os.environ.get("PF_KERAS_TORCH_PYTHON", ""),
                   help="A Python with torch: with --pflayer_dir, time the official PyTorch models side by side.")
    p.add_argument("--pflayer_dir", default=os.environ.get("PFLAYER_DIR", ""),
                   help="Checkout of github.com/naver-ai/PfLayer (never copied here) for the side-by-side run.")
    p.add_argument("--output_dir", help=f"Also write the numbers to OUTPUT_DIR/{RESULT_FILE} (atomically).")
    args.add_run_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv`` without the program name); returns the exit status."""
    return args.run_tool(lambda a: _main(build_parser().parse_args(a)), argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
