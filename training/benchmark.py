"""Training throughput per model on synthetic data, and input-pipeline throughput per core.

    python training/benchmark.py --models resnet50,resnet50_max,resnet50_hybrid --batch_size 32
    python training/benchmark.py --models resnet50_hybrid --model_kwargs 'depths=[1,1,1,1],width_mult=0.25' \\
        --image_size 32 --batch_size 64 --pipeline_dataset builtin

Training images/s runs the real distributed train step (the same ``Trainer`` as train.py)
on a synthetic batch held in memory, after ``--warmup_steps``. The input pipeline is the
ImageNet train transform (partial decode, crop, flip, jitter, RandAugment if asked) on
``--pipeline_dataset`` with tf.data limited to 1 thread (images/s per core) and to all cores.

Side by side with the official PyTorch code: with ``--torch_python`` (a Python with torch;
or ``$PF_KERAS_TORCH_PYTHON``) and ``--pflayer_dir`` (a checkout of naver-ai/PfLayer, never
copied here; or ``$PFLAYER_DIR``), each model's port timing is followed by the same model
from the checkout trained by ``training/torch_throughput.py`` (channels_last, fp32, SGD) in a
subprocess, and the table gains the PyTorch images/s and the port / PyTorch ratio:

    python training/benchmark.py --image_size 32 --batch_size 128 --pipeline_dataset '' \
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

import keras
import tensorflow as tf

from pf_keras import fileio
from pf_keras_training import cli_main
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


def _main(f) -> int:
    """Times every model in ``--models``, then the input pipeline; prints a table (and JSON with ``--output``)."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    for name in ("image_size", "batch_size", "steps", "pipeline_batches"):
        if getattr(f, name) < 1:
            raise ValueError(f"`{name}` must be >= 1. Received: {name}={getattr(f, name)}")
    if f.warmup_steps < 0:
        raise ValueError(f"`warmup_steps` must be >= 0. Received: warmup_steps={f.warmup_steps}")
    if f.output:
        evaluate_lib.check_writable(f.output)  # before the timings
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
    if f.output:
        fileio.write_json(f.output, {
            "train": rows, "pipeline": {str(k): v for k, v in pipeline.items()}, "device": device,
            "batch_size": f.batch_size, "image_size": f.image_size, "tf": tf.__version__,
            "keras": keras.__version__})
    return 0


def define_flags(fv) -> None:
    """The absl flags of the command line, on ``fv``."""
    from absl import flags

    flags.DEFINE_string("models", "resnet50,resnet50_max,resnet50_hybrid", "Comma-separated model names.",
                        flag_values=fv)
    flags.DEFINE_string("model_kwargs", "", "create_model overrides for every model: JSON or k=v,k2=v2.",
                        flag_values=fv)
    flags.DEFINE_integer("image_size", 224, "Image side.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 32, "Global batch.", flag_values=fv)
    flags.DEFINE_integer("steps", 10, "Timed steps.", flag_values=fv)
    flags.DEFINE_integer("warmup_steps", 3, "Untimed steps first (tracing).", flag_values=fv)
    flags.DEFINE_enum("strategy", "one_device", list(loop_lib.STRATEGIES), "Distribution strategy.", flag_values=fv)
    flags.DEFINE_integer("num_replicas", 0, "mirrored: logical CPU devices / GPUs.", flag_values=fv)
    flags.DEFINE_enum("mixed_precision", "float32", list(train_lib.PRECISIONS), "Compute precision.", flag_values=fv)
    flags.DEFINE_bool("jit_compile", False, "XLA for the forward/backward pass.", flag_values=fv)
    flags.DEFINE_string("pipeline_dataset", "builtin", "Dataset for the input-pipeline benchmark ('' = skip).",
                        flag_values=fv)
    flags.DEFINE_string("data_dir", None, "TFDS data_dir.", flag_values=fv)
    flags.DEFINE_bool("randaugment", False, "Include RandAugment m9 in the pipeline benchmark.", flag_values=fv)
    flags.DEFINE_integer("pipeline_batches", 20, "Batches timed in the pipeline benchmark.", flag_values=fv)
    flags.DEFINE_string("output", "", "Also write the numbers as JSON here.", flag_values=fv)
    flags.DEFINE_string("torch_python", os.environ.get("PF_KERAS_TORCH_PYTHON", ""),
                        "A Python with torch: with --pflayer_dir, time the official PyTorch models side by side.",
                        flag_values=fv)
    flags.DEFINE_string("pflayer_dir", os.environ.get("PFLAYER_DIR", ""),
                        "Checkout of github.com/naver-ai/PfLayer (never copied here) for the side-by-side run.",
                        flag_values=fv)


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv`` without the program name); returns the exit status."""
    return cli_main(_main, define_flags, argv, prog="benchmark.py")


if __name__ == "__main__":
    sys.exit(main())
