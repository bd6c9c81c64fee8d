"""Training throughput per model on synthetic data, and input-pipeline throughput per core.

    python training/benchmark.py --models resnet50,resnet50_max,resnet50_hybrid --batch_size 32
    python training/benchmark.py --models resnet50_hybrid --model_kwargs 'depths=[1,1,1,1],width_mult=0.25' \\
        --image_size 32 --batch_size 64 --pipeline_dataset builtin

Training images/s runs the real distributed train step (the same ``Trainer`` as train.py)
on a synthetic batch held in memory, after ``--warmup_steps``. The input pipeline is the
ImageNet train transform (partial decode, crop, flip, jitter, RandAugment if asked) on
``--pipeline_dataset`` with tf.data limited to 1 thread (images/s per core) and to all cores.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

if __package__ in (None, ""):  # run as a script: make `training` importable from the repo root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import tensorflow as tf

from pf_keras import fileio
from training import cli_main
from training import data as data_lib
from training import evaluate as evaluate_lib
from training import loop as loop_lib
from training import recipes as recipes_lib
from training import train as train_lib


def train_throughput(model_name: str, *, model_kwargs: dict[str, Any], image_size: int, batch_size: int,
                     steps: int, warmup_steps: int, strategy: tf.distribute.Strategy,
                     mixed_precision: str = "float32", jit_compile: bool = False) -> float:
    """Training images/s of one model on synthetic data under ``strategy``."""
    recipe = recipes_lib.get_recipe("resnet90")
    recipe = dataclasses.replace(
        recipe,
        data=dataclasses.replace(recipe.data, dataset="synthetic", global_batch_size=batch_size, image_size=image_size),
        model=dataclasses.replace(recipe.model, name=model_name, kwargs=model_kwargs),
    )
    source = data_lib.resolve_source(recipe.data)
    previous = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy(mixed_precision)
    try:
        with strategy.scope():
            model = train_lib.build_model(recipe, source.num_classes)
            optimizer = loop_lib.build_optimizer(recipe, model, mixed_precision=mixed_precision)
            trainer = loop_lib.Trainer(strategy=strategy, model=model, optimizer=optimizer, recipe=recipe,
                                       steps_per_epoch=1000, jit_compile=jit_compile)
        fn = data_lib.make_train_dataset_fn(source, recipe.data, seed=0, epoch=0, steps_per_epoch=steps + warmup_steps,
                                            skip_steps=0, label_smoothing=0.0, interpolation="bilinear")
        iterator = iter(strategy.distribute_datasets_from_function(fn))
        trainer.train_loop(iterator, tf.constant(warmup_steps, tf.int32))
        start = time.perf_counter()
        loss, _, _ = trainer.train_loop(iterator, tf.constant(steps, tf.int32))
        float(loss)  # wait for the device
        return steps * batch_size / (time.perf_counter() - start)
    finally:
        keras.mixed_precision.set_global_policy(previous)


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
    rows = []
    for name in [m for m in f.models.split(",") if m]:
        rate = train_throughput(name, model_kwargs=kwargs, image_size=f.image_size, batch_size=f.batch_size,
                                steps=f.steps, warmup_steps=f.warmup_steps, strategy=strategy,
                                mixed_precision=f.mixed_precision, jit_compile=f.jit_compile)
        rows.append({"model": name, "train_images_per_sec": rate})
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


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv`` without the program name); returns the exit status."""
    return cli_main(_main, define_flags, argv, prog="benchmark.py")


if __name__ == "__main__":
    sys.exit(main())
