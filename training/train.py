"""Trains a pf_keras model on tf.distribute: ``run(...)`` and its command line.

Examples (from the repository root):

    # the builtin dataset, 1-3 CPU minutes, ~99 % val top-1 (chance 10 %):
    python training/train.py --recipe demo --model resnet50_hybrid --model_dir runs/demo

    # ImageNet, R50-hybrid, 8 GPUs (77.1 % top-1 published):
    python training/train.py --recipe resnet90 --model resnet50_hybrid --strategy mirrored \\
        --dataset imagenet2012 --data_dir ~/tensorflow_datasets --mixed_precision mixed_float16 \\
        --model_dir runs/r50_hybrid

Rerunning the same command resumes from ``model_dir``. SIGTERM saves a checkpoint at the
current step and exits with status 143; see the README, "Training on tf.distribute".
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):  # run as a script: make `training` importable from the repo root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import tensorflow as tf

import pf_keras
from training import checkpoint as checkpoint_lib
from training import cli_main
from training import data as data_lib
from training import loop as loop_lib
from training import recipes as recipes_lib
from training.recipes import Recipe

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: schedulers restart the job, which then resumes


class _Preemption:
    """Turns SIGTERM into a flag the loop polls between inner loops."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def model_build_kwargs(recipe: Recipe, num_classes: int) -> dict[str, Any]:
    """The ``create_model`` keywords of a run (also written to ``model_dir/model.json``)."""
    kwargs = dict(recipe.model.kwargs)
    if "classes" in kwargs and kwargs["classes"] != num_classes:
        raise ValueError(
            f"`classes` in the model kwargs must match the dataset's {num_classes} classes. "
            f"Received: classes={kwargs['classes']}"
        )
    reserved = sorted({"include_top", "include_preprocessing", "input_shape", "weights"} & set(kwargs))
    if reserved:
        raise ValueError(
            f"The trainer sets include_top, include_preprocessing, input_shape and weights itself "
            f"(use data.image_size and model.init_weights). Received: model kwargs {reserved}"
        )
    kwargs.update(input_shape=(recipe.data.image_size, recipe.data.image_size, 3), classes=num_classes,
                  include_top=True, include_preprocessing=False)
    kwargs.setdefault("classifier_activation", None)
    if recipe.model.drop_path_rate >= 0:
        kwargs["drop_path_rate"] = recipe.model.drop_path_rate
    return kwargs


def build_model(recipe: Recipe, num_classes: int) -> keras.Model:
    """The model of ``recipe`` (logits, normalised float input), SyncBN if ``model.sync_bn``."""
    kwargs = model_build_kwargs(recipe, num_classes)
    model = pf_keras.create_model(recipe.model.name, weights=recipe.model.init_weights or None, **kwargs)
    if recipe.model.sync_bn:
        model = with_sync_batchnorm(model)
    return model


def with_sync_batchnorm(model: keras.Model) -> keras.Model:
    """A copy of a functional ``model`` whose BatchNormalization layers use ``synchronized=True``.

    Synchronized BN averages batch statistics over all replicas in training (Keras 3 on the
    TensorFlow backend, under a tf.distribute strategy); weights and names are unchanged,
    so the saved weights load into the plain model.
    """
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["synchronized"] = True
    synced = model.__class__.from_config(config)
    synced.set_weights(model.get_weights())
    return synced


def _check_recipe_file(model_dir: str, recipe: Recipe, chief: bool) -> None:
    path = os.path.join(model_dir, "recipe.json")
    if os.path.exists(path):
        with open(path) as f:
            stored = recipes_lib.from_dict(json.load(f))
        old, new = recipes_lib.to_dict(stored), recipes_lib.to_dict(recipe)
        diffs = [f"{s}.{k}" for s in old if isinstance(old[s], dict) for k in old[s] if old[s][k] != new[s].get(k)]
        diffs += [s for s in old if not isinstance(old[s], dict) and old[s] != new[s]]
        if diffs:
            raise ValueError(
                f"model_dir holds a run with another recipe; resume with the same settings or use a new model_dir. "
                f"Differences: {diffs}. Received: model_dir={model_dir!r}"
            )
    elif chief:
        with open(path + ".tmp", "w") as f:  # atomic: other workers may be reading
            f.write(recipes_lib.dumps(recipe))
        os.replace(path + ".tmp", path)


def run(recipe: Recipe, model_dir: str, *, strategy: tf.distribute.Strategy | None = None,
        strategy_name: str = "one_device", num_replicas: int = 0, tpu: str = "", mixed_precision: str = "float32",
        jit_compile: bool = False, deterministic: bool = False, resume_from: str = "", max_steps: int = 0,
        eval_at_end: bool = True, verbose: bool = True, loop_end_hook: Callable[[dict], None] | None = None,
        return_trainer: bool = False) -> dict[str, Any]:
    """Trains ``recipe`` into ``model_dir``; resumes if ``model_dir`` holds a checkpoint.

    Args:
        recipe: Recipe. See :mod:`recipes`.
        model_dir: str. Checkpoints, ``recipe.json``, ``metrics.jsonl``, ``tb/`` and, at the
            end, ``final.weights.h5`` (+ ``final_ema.weights.h5``) and ``model.json``.
        strategy: a ready strategy (tests); else built from ``strategy_name``/``num_replicas``/``tpu``.
        mixed_precision: str. ``float32``, ``mixed_float16`` (dynamic loss scaling) or ``mixed_bfloat16``.
        jit_compile: bool. XLA for the forward/backward pass.
        deterministic: bool. TensorFlow op determinism (identical weights across resumes).
        resume_from: str. A checkpoint prefix to start from when model_dir has none.
        max_steps: int. Stop (with a checkpoint, status "stopped") after this global step; 0 = run to the end.
        eval_at_end: bool. Evaluate after the last epoch even if eval_every_epochs skips it.
        verbose: bool. Progress bar and run summary on the chief.
        loop_end_hook: called on the host after every inner loop with its metrics (custom
            reporting; tests use it to deliver SIGTERM at a known step).
        return_trainer: bool. Add the live ``Trainer`` to the summary under "trainer" (tests).

    Returns:
        A summary dict: status ("completed", "preempted" or "stopped"), step, loss, val_top1,
        val_top5, skipped files, images/s, paths.

    Raises:
        ValueError: for impossible settings (batch not divisible by the replicas, a dataset
            smaller than one batch, an unknown precision, a recipe differing from model_dir's).
    """
    if mixed_precision not in PRECISIONS:
        raise ValueError(
            f"`mixed_precision` must be one of {list(PRECISIONS)}. Received: mixed_precision={mixed_precision!r}"
        )
    recipes_lib.validate(recipe)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(recipe.seed)
    if strategy is None:
        strategy = loop_lib.create_strategy(strategy_name, num_replicas=num_replicas, tpu=tpu)
    replicas = strategy.num_replicas_in_sync
    batch = recipe.data.global_batch_size
    if batch % replicas:
        raise ValueError(
            f"The global batch size must be divisible by the number of replicas ({replicas}). "
            f"Received: data.global_batch_size={batch}"
        )
    source = data_lib.resolve_source(recipe.data)
    if source.train_examples < batch and recipe.schedule.steps_per_epoch == 0:
        raise ValueError(
            f"The training split ({source.train_examples} examples) is smaller than one global batch. "
            f"Received: data.global_batch_size={batch}"
        )
    steps_per_epoch = recipes_lib.steps_per_epoch(recipe, source.train_examples)
    total_steps = steps_per_epoch * recipe.schedule.epochs
    chief = checkpoint_lib.is_chief(strategy)
    os.makedirs(model_dir, exist_ok=True)
    _check_recipe_file(model_dir, recipe, chief)
    spec = pf_keras.SPECS.get(recipe.model.name)
    interpolation = recipe.data.interpolation or (spec.eval.interpolation if spec else "bilinear")

    previous_policy = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy(mixed_precision)
    try:
        with strategy.scope():
            model = build_model(recipe, source.num_classes)
            optimizer = loop_lib.build_optimizer(recipe, model, mixed_precision=mixed_precision)
            trainer = loop_lib.Trainer(strategy=strategy, model=model, optimizer=optimizer, recipe=recipe,
                                       steps_per_epoch=steps_per_epoch, jit_compile=jit_compile)
            objects = {"model": model, "optimizer": optimizer, "step": trainer.global_step,
                       "skipped_files": trainer.skipped_files, "epoch_skipped_files": trainer.epoch_skipped_files,
                       "evaluated_epoch": trainer.evaluated_epoch}
            if trainer.ema:
                objects["ema"] = trainer.ema
            checkpointer = checkpoint_lib.Checkpointer(model_dir, strategy, keep=recipe.keep_checkpoints, **objects)
        restored = checkpointer.latest or resume_from or None
        if restored:
            checkpointer.restore(restored)
        return _train(recipe, model_dir, strategy=strategy, trainer=trainer, checkpointer=checkpointer,
                      source=source, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                      interpolation=interpolation, chief=chief, restored=restored, max_steps=max_steps,
                      eval_at_end=eval_at_end, verbose=verbose, mixed_precision=mixed_precision,
                      loop_end_hook=loop_end_hook, return_trainer=return_trainer)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(recipe: Recipe, model_dir: str, *, strategy, trainer: loop_lib.Trainer, checkpointer, source,
           steps_per_epoch: int, total_steps: int, interpolation: str, chief: bool, restored: str | None,
           max_steps: int, eval_at_end: bool, verbose: bool, mixed_precision: str,
           loop_end_hook: Callable[[dict], None] | None, return_trainer: bool) -> dict[str, Any]:
    say = print if (verbose and chief) else (lambda *a, **k: None)
    replicas = strategy.num_replicas_in_sync
    step = int(trainer.global_step.numpy())
    say(f"[train] model {recipe.model.name} ({trainer.model.count_params():,} params), recipe {recipe.name}, "
        f"dataset {source.name} ({source.train_examples} train / {source.eval_examples} val, "
        f"{source.num_classes} classes)")
    say(f"[train] {type(strategy).__name__}: {replicas} replicas on {loop_lib.num_workers(strategy)} host(s), "
        f"global batch {recipe.data.global_batch_size} ({recipe.data.global_batch_size // replicas} per replica), "
        f"{steps_per_epoch} steps/epoch x {recipe.schedule.epochs} epochs = {total_steps} steps, "
        f"peak lr {recipes_lib.scaled_lr(recipe):.4g}, {mixed_precision}")
    if restored:
        say(f"[train] resumed from {restored} at step {step} (epoch {step // steps_per_epoch}, "
            f"batch {step % steps_per_epoch})")
    logger = loop_lib.MetricsLogger(model_dir, enabled=chief)
    progress = loop_lib.Progress(total_steps, enabled=verbose and chief)
    eval_fn = data_lib.make_eval_dataset_fn(source, recipe.data, interpolation=interpolation)
    n_eval = data_lib.eval_steps(source, recipe.data)
    last, evaluation = {}, {}
    last_saved = step
    stop_at = min(total_steps, max_steps) if max_steps else total_steps
    agree = _flag_reducer(strategy)

    def run_eval(done: int) -> dict:
        """The eval after epoch ``done`` if it is due (recorded in the checkpoint, so a run
        preempted right at an epoch end evaluates that epoch when it resumes)."""
        if not (done % recipe.eval_every_epochs == 0 or (done == recipe.schedule.epochs and eval_at_end)):
            return {}
        result = {"epoch": done, "step": done * steps_per_epoch, **trainer.evaluate(eval_fn, n_eval)}
        if trainer.ema:
            ema = trainer.evaluate(eval_fn, n_eval, use_ema=True)
            result.update({f"ema_{k}": v for k, v in ema.items()})
        trainer.evaluated_epoch.assign(done)
        logger.write(result, kind="eval")
        progress.newline()
        say(f"[eval] epoch {done}: top-1 {result['val_top1']:.4f} top-5 {result['val_top5']:.4f} "
            f"loss {result['val_loss']:.4f} ({result['val_examples']} images, {result['val_skipped']} skipped)")
        return result

    pending = step // steps_per_epoch if step > 0 and step % steps_per_epoch == 0 else 0
    if pending > int(trainer.evaluated_epoch.numpy()):  # preempted between an epoch's last step and its eval
        evaluation = run_eval(pending)
    with _Preemption() as preemption:
        while step < stop_at:
            epoch = step // steps_per_epoch
            epoch_end = (epoch + 1) * steps_per_epoch
            skip_steps = step - epoch * steps_per_epoch
            if skip_steps == 0:
                trainer.epoch_skipped_files.assign(0)
            dataset_fn = data_lib.make_train_dataset_fn(
                source, recipe.data, seed=recipe.seed, epoch=epoch, steps_per_epoch=steps_per_epoch,
                skip_steps=skip_steps, label_smoothing=recipe.optim.label_smoothing, interpolation=interpolation,
                clean_prefix=int(trainer.epoch_skipped_files.numpy()) == 0)
            iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
            while step < min(epoch_end, stop_at):
                next_ckpt = (step // recipe.checkpoint_every_steps + 1) * recipe.checkpoint_every_steps
                n = min(recipe.steps_per_loop, epoch_end - step, next_ckpt - step, stop_at - step)
                trainer.train_loop_begin()
                outputs = trainer.train_loop(iterator, tf.constant(n, tf.int32))
                last = trainer.train_loop_end(outputs, n)
                step = last["step"]
                if not math.isfinite(last["loss"]):
                    raise FloatingPointError(
                        f"Non-finite loss {last['loss']} in steps {step - n + 1}..{step}; lower the lr or use float32."
                    )
                last["epoch"] = step / steps_per_epoch
                last["skipped_total"] = int(trainer.skipped_files.numpy())
                logger.write(last, kind="train")
                progress.update(last, steps_per_epoch, recipe.schedule.epochs, recipe.data.global_batch_size)
                if loop_end_hook is not None:
                    loop_end_hook(dict(last))
                if agree(preemption.requested):
                    checkpointer.save(step)
                    progress.newline()
                    say(f"[train] SIGTERM: saved a checkpoint at step {step}; rerun the same command to resume.")
                    return _summary("preempted", step, last, evaluation, trainer, model_dir, return_trainer)
                if step % recipe.checkpoint_every_steps == 0 and step != last_saved:
                    checkpointer.save(step)
                    last_saved = step
            if step == epoch_end:
                evaluation = run_eval(epoch + 1) or evaluation
            if step != last_saved:
                checkpointer.save(step)
                last_saved = step
    progress.newline()
    if step < total_steps:
        return _summary("stopped", step, last, evaluation, trainer, model_dir, return_trainer)
    if chief:
        _save_final(recipe, model_dir, trainer, source)
    summary = _summary("completed", step, last, evaluation, trainer, model_dir)
    logger.write(summary, kind="final")
    if return_trainer:
        summary["trainer"] = trainer
    say(f"[train] done: step {step}, val top-1 {summary.get('val_top1')}, skipped files {summary['skipped']}; "
        f"weights in {os.path.join(model_dir, 'final.weights.h5')}")
    return summary


def _flag_reducer(strategy):
    """A function telling whether any worker raised its flag (a collective only in multi-host runs)."""
    if loop_lib.num_workers(strategy) <= 1:
        return bool

    @tf.function
    def any_flag(flag):
        value = strategy.run(lambda: tf.identity(flag))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)  # > 0 if any worker was signalled

    return lambda flag: bool(any_flag(tf.constant(int(flag), tf.int32)).numpy() > 0)


def _save_final(recipe: Recipe, model_dir: str, trainer: loop_lib.Trainer, source) -> None:
    trainer.model.save_weights(os.path.join(model_dir, "final.weights.h5"))
    if trainer.ema:
        backup = [tf.identity(w.value) for w in trainer.model.weights]
        for w, e in zip(trainer.model.weights, trainer.ema, strict=True):
            w.assign(tf.cast(e, w.dtype))
        trainer.model.save_weights(os.path.join(model_dir, "final_ema.weights.h5"))
        for w, b in zip(trainer.model.weights, backup, strict=True):
            w.assign(b)
    kwargs = model_build_kwargs(recipe, source.num_classes)
    with open(os.path.join(model_dir, "model.json"), "w") as f:
        json.dump({"name": recipe.model.name, "kwargs": kwargs, "class_names": list(source.class_names),
                   "interpolation": recipe.data.interpolation or None, "crop_fraction": recipe.data.crop_fraction},
                  f, indent=2)


def _summary(status: str, step: int, last: dict, evaluation: dict, trainer, model_dir: str,
             return_trainer: bool = False) -> dict[str, Any]:
    extra = {"trainer": trainer} if return_trainer else {}
    return {**extra,
        "status": status, "step": step, "loss": last.get("loss"), "images_per_sec": last.get("images_per_sec"),
        "val_top1": evaluation.get("val_top1"), "val_top5": evaluation.get("val_top5"),
        "skipped": int(trainer.skipped_files.numpy()), "model_dir": model_dir, "time": time.time(),
    }


# ---------------------------------------------------------------- command line

_SHORTCUTS = {  # flag -> recipe key (None values are "not given")
    "dataset": "data.dataset", "data_dir": "data.data_dir", "batch_size": "data.global_batch_size",
    "image_size": "data.image_size", "epochs": "schedule.epochs", "lr": "optim.base_lr",
    "weight_decay": "optim.weight_decay", "warmup_epochs": "schedule.warmup_epochs", "seed": "seed",
    "steps_per_loop": "steps_per_loop", "steps_per_epoch": "schedule.steps_per_epoch",
    "drop_path_rate": "model.drop_path_rate", "ema_decay": "model.ema_decay", "init_weights": "model.init_weights",
    "model": "model.name",
}


def recipe_from_flags(flag_values) -> Recipe:
    """Resolves the recipe: the named recipe, then shortcut flags, then ``--set`` overrides, then model kwargs."""
    recipe = recipes_lib.get_recipe(flag_values.recipe)
    overrides: dict[str, Any] = {}
    for flag, key in _SHORTCUTS.items():
        value = getattr(flag_values, flag)
        if value is not None:
            overrides[key] = value
    if flag_values.sync_bn:
        overrides["model.sync_bn"] = True
    for item in flag_values.set or []:
        if "=" not in item:
            raise ValueError(f"`--set` items must look like section.field=value. Received: set={item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value
    recipe = recipes_lib.apply_overrides(recipe, overrides)
    if flag_values.model_kwargs:
        kwargs = {**recipe.model.kwargs, **recipes_lib.parse_kwargs(flag_values.model_kwargs)}
        recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, kwargs=kwargs))
    return recipe


def define_flags() -> None:
    """Defines the absl flags of the command line (see the README, "Training on tf.distribute" for the table)."""
    from absl import flags

    flags.DEFINE_string("model_dir", None, "Run folder (checkpoints, logs, final weights).")
    flags.DEFINE_string("recipe", "resnet90", f"Recipe: {recipes_lib.list_recipes()}.")
    flags.DEFINE_string("model", None, f"Registered model name: {pf_keras.list_models()}.")
    flags.DEFINE_string("model_kwargs", "", "create_model overrides: JSON or k=v,k2=v2 (e.g. depths=[1,1,1,1]).")
    flags.DEFINE_multi_string("set", [], "Recipe override section.field=value (repeatable), e.g. optim.momentum=0.95.")
    flags.DEFINE_string("dataset", None, "TFDS name (imagenet2012), folder:PATH, builtin or synthetic.")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir.")
    flags.DEFINE_integer("batch_size", None, "Global batch size (all replicas).")
    flags.DEFINE_integer("image_size", None, "Train/eval crop size.")
    flags.DEFINE_integer("epochs", None, "Epochs.")
    flags.DEFINE_float("lr", None, "Base learning rate for optim.base_batch_size images (scaled linearly).")
    flags.DEFINE_float("weight_decay", None, "Weight decay (not on norms/biases).")
    flags.DEFINE_float("warmup_epochs", None, "Warm-up epochs.")
    flags.DEFINE_integer("seed", None, "Seed of init and data order.")
    flags.DEFINE_integer("steps_per_loop", None, "Steps per tf.function call.")
    flags.DEFINE_integer("steps_per_epoch", None, "Override steps per epoch (0 = dataset size / batch).")
    flags.DEFINE_float("drop_path_rate", None, "Stochastic depth rate passed to the model.")
    flags.DEFINE_float("ema_decay", None, "EMA decay (0 = off).")
    flags.DEFINE_string("init_weights", None, "Start from these weights (.pth or .weights.h5).")
    flags.DEFINE_bool("sync_bn", False, "Synchronized BatchNorm across replicas.")
    flags.DEFINE_enum("strategy", "one_device", list(loop_lib.STRATEGIES), "Distribution strategy.")
    flags.DEFINE_integer("num_replicas", 0, "mirrored: logical CPU devices on a CPU host / GPUs to use (0 = all).")
    flags.DEFINE_string("tpu", "", "TPU name or address (strategy=tpu).")
    flags.DEFINE_enum("mixed_precision", "float32", list(PRECISIONS), "Compute precision.")
    flags.DEFINE_bool("jit_compile", False, "XLA-compile the forward/backward pass.")
    flags.DEFINE_bool("deterministic", False, "Deterministic ops (bitwise-identical resumes).")
    flags.DEFINE_string("resume_from", "", "Checkpoint prefix to start from if model_dir has none.")
    flags.DEFINE_integer("max_steps", 0, "Stop after this global step (0 = run the recipe to the end).")
    flags.mark_flag_as_required("model_dir")


def main(argv: list[str]) -> int:
    """Parses the flags, resolves the recipe, calls :func:`run`; returns 143 when preempted."""
    from absl import flags, logging

    del argv
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    if f.strategy == "mirrored" and f.num_replicas and not tf.config.list_physical_devices("GPU"):
        loop_lib.configure_cpu_replicas(f.num_replicas)  # before anything starts TensorFlow's runtime
    recipe = recipe_from_flags(f)
    summary = run(recipe, f.model_dir, strategy_name=f.strategy, num_replicas=f.num_replicas, tpu=f.tpu,
                  mixed_precision=f.mixed_precision, jit_compile=f.jit_compile, deterministic=f.deterministic,
                  resume_from=f.resume_from, max_steps=f.max_steps)
    print(json.dumps(summary))
    return PREEMPTED_EXIT_CODE if summary["status"] == "preempted" else 0


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(lambda argv: sys.exit(cli_main(main, argv)))
