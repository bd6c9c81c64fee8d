"""Trains a pf_keras model on tf.distribute: ``run(...)`` and its command line.

Examples (``python training/train.py`` in the repository does the same):

    # the builtin dataset, 1-3 CPU minutes, ~99 % val top-1 (chance 10 %):
    pf-keras-train --recipe demo --model resnet50_hybrid --model_dir runs/demo

    # ImageNet, R50-hybrid, 8 GPUs (77.1 % top-1 published):
    pf-keras-train --recipe resnet90 --model resnet50_hybrid --strategy mirrored \\
        --dataset imagenet2012 --data_dir ~/tensorflow_datasets --mixed_precision mixed_float16 \\
        --model_dir runs/r50_hybrid

Rerunning the same command resumes from ``model_dir`` (its newest intact checkpoint; see
:mod:`checkpoint`). One run per ``model_dir``: a second one exits 2 naming the holder's PID
(:mod:`lock`). SIGTERM saves a checkpoint at the current step and exits with status 143; if
no training or eval step completes within ``--sigterm_stall_s`` seconds after it (a stuck
input pipeline), the process exits 143 without saving (the last checkpoint is intact). Every
user error is one line on stderr and status 2 (``--debug`` shows the traceback); see the
README, "Training on tf.distribute" and "Safety and recovery".
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

if __name__ == "__main__":  # run as a script: TensorFlow's start-up lines silenced before it loads (unless --verbose)
    from pf_keras_export import startup

    startup.start(sys.argv, "pf-keras-train")

import keras
import tensorflow as tf

import pf_keras
from pf_keras import fileio, safe_open
from pf_keras.cli import one_line
from pf_keras.weights.preset import RUN_PRESET, write_preset
from pf_keras_export import args
from pf_keras_training import callbacks as callbacks_lib
from pf_keras_training import checkpoint as checkpoint_lib
from pf_keras_training import data as data_lib
from pf_keras_training import lock as lock_lib
from pf_keras_training import loop as loop_lib
from pf_keras_training import recipes as recipes_lib
from pf_keras_training import sources as sources_lib
from pf_keras_training.callbacks import TrainCallback
from pf_keras_training.recipes import Recipe

PROG = "pf-keras-train"
FINAL_PRESET = RUN_PRESET  # model_dir/final/: a preset folder (config.json, model.weights.h5, metadata.json)
FINAL_EMA = "final_ema.weights.h5"  # model_dir/final_ema.weights.h5: the EMA weights of a finished run
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: schedulers restart the job, which then resumes
SIGTERM_STALL_S = 30.0  # after SIGTERM, exit without a checkpoint if no step completes for this long


class _Preemption:
    """Turns SIGTERM into a flag the loop polls between inner loops, with a watchdog for stalls.

    The Python handler only runs when the main thread returns to Python, which a stuck input
    pipeline (a batch that never arrives inside the ``tf.function``) never does. So the
    signal also wakes a watchdog thread (``signal.set_wakeup_fd`` is written by the C-level
    handler at once); the watchdog reads ``heartbeat()`` (global and eval step counters) and,
    if it stops changing for ``stall_seconds`` before the loop has acknowledged the request,
    prints one line and exits the process with status 143 without saving.
    """

    def __init__(self, heartbeat: Callable[[], Any] = lambda: 0, stall_seconds: float = SIGTERM_STALL_S) -> None:
        self.requested = False
        self.acknowledged = False
        self._heartbeat = heartbeat
        self._stall_seconds = stall_seconds
        self._previous = None
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1
        self._closed = threading.Event()

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
            return self
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._old_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._pipe = (read, write)
        threading.Thread(target=self._watch, args=(read,), daemon=True, name="sigterm-watchdog").start()
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def _watch(self, read: int) -> None:
        while True:
            try:
                data = os.read(read, 64)
            except OSError:
                return
            if not data or self._closed.is_set():
                return
            if signal.SIGTERM in data:
                self.requested = True
                self._watch_stall()
                return

    def _watch_stall(self) -> None:
        state = {"beat": None, "changed": time.monotonic()}

        def poll() -> None:  # a separate thread: a read that blocks must not block the watchdog
            while not self._closed.is_set():
                try:
                    beat = self._heartbeat()
                except Exception:  # noqa: BLE001 (the run is ending; the watchdog just keeps the last value)
                    return
                if beat != state["beat"]:
                    state["beat"], state["changed"] = beat, time.monotonic()
                time.sleep(0.1)

        threading.Thread(target=poll, daemon=True, name="sigterm-heartbeat").start()
        while not self._closed.wait(0.1):
            if self.acknowledged:
                return
            if time.monotonic() - state["changed"] > self._stall_seconds:
                sys.stdout.flush()
                sys.stderr.write(
                    f"train.py: SIGTERM: no step completed in {self._stall_seconds:g} s (the input pipeline is "
                    f"stuck?); exiting without a checkpoint, the last one is intact.\n")
                sys.stderr.flush()
                os._exit(PREEMPTED_EXIT_CODE)

    def __exit__(self, *exc) -> None:
        self._closed.set()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            for fd in reversed(self._pipe):  # the write end first: the watchdog's read returns
                os.close(fd)
            self._pipe = None


def model_build_kwargs(recipe: Recipe, num_classes: int) -> dict[str, Any]:
    """The ``create_model`` keywords of a run (its build record in ``model_dir/final/config.json``)."""
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
    init = recipe.model.init_weights or None
    if init is None:
        model = pf_keras.create_model(recipe.model.name, **kwargs)
    else:
        try:
            model = pf_keras.create_model(recipe.model.name, weights=init, **kwargs)
        except Exception as error:  # noqa: BLE001 (any failure to read the user's file is one line)
            raise ValueError(f"cannot start from init_weights {init}: {one_line(error)[:500]}. "
                             f"Received: model.init_weights={init!r}") from None
    if recipe.model.sync_bn:
        model = pf_keras.build_record(model).attach(with_sync_batchnorm(model))  # the same graph: same record
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


MAX_RUN_JSON_BYTES = 1 << 20  # recipe.json, settings.json: a few KB
SETTINGS = {"mixed_precision": PRECISIONS}  # model_dir/settings.json: key -> the values it may hold
_ABSENT = object()  # what _read_json returns for a missing file


def _run_file_error(path: str, what: str, problem: str) -> ValueError:
    return ValueError(f"{path} ({what}) {problem}; restore it or use a new model_dir. "
                      f"Received: model_dir={os.path.dirname(path)!r}")


def _read_json(path: str, what: str) -> Any:
    """The JSON value in the run file ``path`` (``what`` it is), or ``_ABSENT``; read without blocking, at most
    :data:`MAX_RUN_JSON_BYTES`.

    Raises:
        ValueError: one line naming the file: a FIFO, a folder, too large, not JSON.
    """
    try:
        return safe_open.read_json(path, MAX_RUN_JSON_BYTES)
    except FileNotFoundError:
        return _ABSENT
    except OSError as error:
        raise _run_file_error(path, what, f"cannot be read ({error.strerror or one_line(error)})") from None
    except ValueError as error:
        raise _run_file_error(path, what, f"cannot be read ({one_line(error)})") from None


def _check_recipe_file(model_dir: str, recipe: Recipe, chief: bool) -> None:
    path = os.path.join(model_dir, "recipe.json")
    data = _read_json(path, "the run's recipe")
    if data is _ABSENT:
        if chief:
            fileio.write_text(path, recipes_lib.dumps(recipe))  # atomic: other workers may be reading
        return
    try:
        stored = recipes_lib.from_dict(data)
    except ValueError as error:
        raise _run_file_error(path, "the run's recipe", f"is damaged: {error}") from None
    old, new = recipes_lib.to_dict(stored), recipes_lib.to_dict(recipe)
    diffs = [f"{s}.{k}" for s in old if isinstance(old[s], dict) for k in old[s] if old[s][k] != new[s].get(k)]
    diffs += [s for s in old if not isinstance(old[s], dict) and old[s] != new[s]]
    if diffs:
        raise ValueError(
            f"model_dir holds a run with another recipe; resume with the same settings or use a new model_dir. "
            f"Differences: {diffs}. Received: model_dir={model_dir!r}"
        )


def _check_settings(model_dir: str, settings: dict[str, Any], chief: bool) -> None:
    """Run settings outside the recipe that a resume must keep (the precision: it shapes the optimizer state).

    A ``settings.json`` that is not an object holding every key of :data:`SETTINGS` with one of its values is
    damaged (an error, as a damaged ``recipe.json``): it can no longer tell whether the run changed them.
    """
    path = os.path.join(model_dir, "settings.json")
    stored = _read_json(path, "the run's settings")
    if stored is _ABSENT:
        if chief:
            fileio.write_json(path, settings)
        return
    what = "the run's settings"
    if not isinstance(stored, dict):
        raise _run_file_error(path, what, f"is damaged: not a JSON object but {type(stored).__name__}")
    for key, allowed in SETTINGS.items():
        if key not in stored or stored[key] not in allowed:
            held = f"{key}={stored[key]!r}" if key in stored else f"no {key}"
            raise _run_file_error(path, what, f"is damaged: it holds {held}, not one of {list(allowed)}")
    diffs = [f"{k}: {stored[k]} -> {v}" for k, v in settings.items() if stored[k] != v]
    if diffs:
        raise ValueError(
            f"model_dir holds a run with other settings; resume with the same settings or use a new model_dir. "
            f"Differences: {diffs}. Received: model_dir={model_dir!r}"
        )


def _check_run_folder(model_dir: str) -> None:
    """What the run writes later is checked before anything trains: ``checkpoints`` and ``tb`` must be folders
    (a symlink to one is the user's choice: another disk), ``metrics.jsonl`` a file appended in place
    (:func:`loop.open_for_append`: no symlink, FIFO or other hard link).

    Raises:
        ValueError: one line naming the first part that is something else.
    """
    for name in ("checkpoints", "tb"):
        path = os.path.join(model_dir, name)
        if os.path.lexists(path) and not os.path.isdir(path):
            raise ValueError(f"{path} is not a folder; remove or rename it, or use a new model_dir. "
                             f"Received: model_dir={model_dir!r}")
    metrics = os.path.join(model_dir, loop_lib.METRICS_FILE)
    if os.path.lexists(metrics):
        os.close(loop_lib.open_for_append(metrics))


def run(recipe: Recipe, model_dir: str, *, strategy: tf.distribute.Strategy | None = None,
        strategy_name: str = "one_device", num_replicas: int = 0, tpu: str = "", mixed_precision: str = "float32",
        jit_compile: bool = False, deterministic: bool = False, resume_from: str = "", max_steps: int = 0,
        eval_at_end: bool = True, verbose: bool = True, callbacks: Sequence[TrainCallback] | None = None,
        restart_from_scratch: bool = False, max_image_pixels: int = data_lib.MAX_IMAGE_PIXELS,
        max_consecutive_skips: int = data_lib.MAX_CONSECUTIVE_SKIPS,
        sigterm_stall_s: float = SIGTERM_STALL_S) -> dict[str, Any]:
    """Trains ``recipe`` into ``model_dir``; resumes if ``model_dir`` holds a checkpoint.

    Args:
        recipe: Recipe. See :mod:`recipes`.
        model_dir: str. Checkpoints, ``recipe.json``, ``metrics.jsonl``, ``tb/`` and, at the
            end, the preset folder ``final/`` (+ ``final_ema.weights.h5``).
        strategy: a ready strategy (tests); else built from ``strategy_name``/``num_replicas``/``tpu``.
        mixed_precision: str. ``float32``, ``mixed_float16`` (dynamic loss scaling) or ``mixed_bfloat16``.
        jit_compile: bool. XLA for the forward/backward pass.
        deterministic: bool. TensorFlow op determinism (identical weights across resumes).
        resume_from: str. A checkpoint prefix to start from when model_dir has none.
        restart_from_scratch: bool. Start at step 0 although model_dir holds checkpoints (they are
            moved to ``checkpoints/before_restart/``; a finished run's ``final/``, EMA weights and
            ``metrics.jsonl`` to ``model_dir/before_restart/``); without it a model_dir whose checkpoints are all
            damaged, or one with ``final/`` but no checkpoint, is an error.
        max_steps: int. Stop (with a checkpoint, status "stopped") after this global step; 0 = run to the end.
        eval_at_end: bool. Evaluate after the last epoch even if eval_every_epochs skips it.
        verbose: bool. Progress bar and run summary on the chief.
        callbacks: list of :class:`callbacks.TrainCallback`. Called at the run's begin, after every
            inner loop and at its end (custom logging, reading the trained model); their exceptions
            end the run. Defaults to none.
        max_image_pixels: int. Files whose header declares more pixels are skipped (0 = no limit).
        max_consecutive_skips: int. This many undecodable training files in a row (or a whole pass)
            stop the run with an error (0 = never).
        sigterm_stall_s: float. After SIGTERM, exit 143 without saving if no step completes for this long.

    Returns:
        A summary dict: status ("completed", "preempted" or "stopped"), step, loss, val_top1,
        val_top5, skipped files, images/s, paths. ``loss`` and ``images_per_sec`` are those of this
        call's last inner loop: None if it ran no training step (a rerun of a run killed after its last
        checkpoint; ``metrics.jsonl`` holds the earlier values). A completed run always reports the
        final evaluation (run again if this call resumed after it).

    Raises:
        ValueError: for impossible settings (batch not divisible by the replicas, a dataset
            smaller than one batch, an unknown precision, a recipe differing from model_dir's,
            model_dir used by another run, no intact checkpoint, a finished model without checkpoints,
            undecodable data).
        TypeError: a callback that is not a TrainCallback.
        fileio.WriteError: (a ValueError) a result or checkpoint could not be written (full disk).
    """
    if mixed_precision not in PRECISIONS:
        raise ValueError(
            f"`mixed_precision` must be one of {list(PRECISIONS)}. Received: mixed_precision={mixed_precision!r}"
        )
    recipes_lib.validate(recipe)
    callbacks = callbacks_lib.check_callbacks(callbacks)
    for name, value in (("max_image_pixels", max_image_pixels), ("max_consecutive_skips", max_consecutive_skips),
                        ("max_steps", max_steps)):
        if value < 0:
            raise ValueError(f"`{name}` must be >= 0. Received: {name}={value}")
    if not (math.isfinite(sigterm_stall_s) and sigterm_stall_s > 0):
        raise ValueError(f"`sigterm_stall_s` must be a finite number > 0. Received: sigterm_stall_s={sigterm_stall_s}")
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
    spec = pf_keras.SPECS.get(recipe.model.name)
    interpolation = recipe.data.interpolation or (spec.eval.interpolation if spec else "bilinear")
    plan = _Plan(
        recipe=recipe, model_dir=model_dir, strategy=strategy, source=source, chief=checkpoint_lib.is_chief(strategy),
        steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        stop_at=min(total_steps, max_steps) if max_steps else total_steps, mixed_precision=mixed_precision,
        jit_compile=jit_compile, interpolation=interpolation, eval_at_end=eval_at_end, verbose=verbose,
        callbacks=callbacks, sigterm_stall_s=sigterm_stall_s,
        data_limits={"max_image_pixels": max_image_pixels, "max_consecutive_skips": max_consecutive_skips})
    if sources_lib.utf8_text(os.fspath(model_dir)) != os.fspath(model_dir):  # before anything is written there
        raise ValueError(
            f"TensorFlow writes checkpoints and logs to UTF-8 paths, and `model_dir` is not UTF-8 text here (under "
            f"LC_ALL=C with PYTHONUTF8=0 Python reads a non-ASCII path as ASCII): use an ASCII path or a UTF-8 "
            f"locale. Received: model_dir={model_dir!r}"
        )
    os.makedirs(model_dir, exist_ok=True)
    run_lock = lock_lib.RunLock(model_dir) if plan.chief else None  # the chief holds it for the whole run
    try:
        if plan.chief:
            fileio.remove_stale_temps(model_dir)  # of a killed run's final/, recipe.json, ... (none is being written)
        _check_recipe_file(model_dir, recipe, plan.chief)
        _check_settings(model_dir, {"mixed_precision": mixed_precision}, plan.chief)
        _check_run_folder(model_dir)
        previous_policy = keras.config.dtype_policy()
        keras.mixed_precision.set_global_policy(mixed_precision)
        try:
            trainer, checkpointer = _build(plan)
            restored = _restore(plan, checkpointer, resume_from=resume_from,
                                restart_from_scratch=restart_from_scratch)
            return _train(plan, trainer, checkpointer, restored)
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
    finally:
        if run_lock is not None:
            run_lock.release()


@dataclasses.dataclass(frozen=True)
class _Plan:
    """One run's settings, checked and derived by :func:`run` before any model exists."""

    recipe: Recipe
    model_dir: str
    strategy: tf.distribute.Strategy
    source: data_lib.Source
    chief: bool  # writes model_dir (checkpoints, logs, final weights) and prints
    steps_per_epoch: int
    total_steps: int  # of the whole recipe
    stop_at: int  # the global step this call stops after (max_steps or total_steps)
    mixed_precision: str
    jit_compile: bool
    interpolation: str  # of the train and eval resize
    eval_at_end: bool
    verbose: bool
    callbacks: tuple[TrainCallback, ...]
    sigterm_stall_s: float
    data_limits: dict[str, int]  # max_image_pixels, max_consecutive_skips

    def say(self, text: str) -> None:
        """Prints ``text`` on the chief of a verbose run."""
        if self.verbose and self.chief:
            print(text)


def _build(plan: _Plan) -> tuple[loop_lib.Trainer, checkpoint_lib.Checkpointer]:
    """The model, optimizer, trainer and checkpointer of ``plan`` (under the global dtype policy), in its scope."""
    recipe = plan.recipe
    with plan.strategy.scope():
        model = build_model(recipe, plan.source.num_classes)
        optimizer = loop_lib.build_optimizer(recipe, model, mixed_precision=plan.mixed_precision)
        trainer = loop_lib.Trainer(strategy=plan.strategy, model=model, optimizer=optimizer, recipe=recipe,
                                   steps_per_epoch=plan.steps_per_epoch, jit_compile=plan.jit_compile)
        objects = {"model": model, "optimizer": optimizer, "step": trainer.global_step,
                   "skipped_files": trainer.skipped_files, "epoch_skipped_files": trainer.epoch_skipped_files,
                   "evaluated_epoch": trainer.evaluated_epoch}
        if trainer.ema:
            objects["ema"] = trainer.ema
        checkpointer = checkpoint_lib.Checkpointer(plan.model_dir, plan.strategy, keep=recipe.keep_checkpoints,
                                                   **objects)
    return trainer, checkpointer


def _restore(plan: _Plan, checkpointer: checkpoint_lib.Checkpointer, *, resume_from: str,
             restart_from_scratch: bool) -> str | None:
    """Restores the run's newest intact checkpoint, else ``resume_from``; returns its prefix (None: from scratch)."""
    restored, note = checkpointer.choose(restart_from_scratch=restart_from_scratch,
                                         finished=(FINAL_PRESET, FINAL_EMA), history=(loop_lib.METRICS_FILE,))
    if note and plan.chief:
        print(f"[train] {note}", file=sys.stderr, flush=True)
    if restored is None and resume_from:
        reason = checkpoint_lib.verify(resume_from)
        if reason:
            raise ValueError(f"`resume_from` is not an intact checkpoint: {reason}. Received: resume_from="
                             f"{resume_from!r}")
        restored = resume_from
    if restored:
        checkpointer.restore(restored)
    return restored


def _train(plan: _Plan, trainer: loop_lib.Trainer, checkpointer: checkpoint_lib.Checkpointer,
           restored: str | None) -> dict[str, Any]:
    """Epochs of inner loops from the trainer's step to ``plan.stop_at``; returns the run's summary."""
    loop = _Loop(plan, trainer, checkpointer)
    loop.announce(restored)
    evaluated = int(trainer.evaluated_epoch.numpy())
    if plan.chief and (dropped := loop_lib.cut_metrics(plan.model_dir, loop.step, evaluated)):
        plan.say(f"[train] {loop_lib.METRICS_FILE}: dropped {dropped} record(s) written after the checkpoint this run "
                 f"resumes from (step {loop.step}); they are written again")
    for callback in plan.callbacks:
        callback.on_train_begin(trainer)
    loop.eval_if_pending()
    preempted = False
    with _Preemption(loop.heartbeat, plan.sigterm_stall_s) as preemption:
        while loop.step < plan.stop_at and not preempted:
            preempted = loop.train_epoch(preemption)
    if preempted:
        return loop.finish("preempted")
    loop.progress.newline()
    if loop.step >= plan.total_steps and not loop.evaluation:  # resumed past the last eval: the summary needs it
        loop.evaluation = loop.evaluate(plan.recipe.schedule.epochs, record=False)  # metrics.jsonl has it
    return loop.finish("completed" if loop.step >= plan.total_steps else "stopped")


class _Loop:
    """The host side of a run once its model exists: inner loops, evals, checkpoints, logs and callbacks."""

    def __init__(self, plan: _Plan, trainer: loop_lib.Trainer, checkpointer: checkpoint_lib.Checkpointer) -> None:
        self.plan, self.trainer, self.checkpointer = plan, trainer, checkpointer
        self.step = int(trainer.global_step.numpy())
        self.last_saved = self.step
        self.last: dict[str, Any] = {}  # the metrics of the latest inner loop
        self.evaluation: dict[str, Any] = {}  # the latest eval
        self.logger = loop_lib.MetricsLogger(plan.model_dir, enabled=plan.chief)
        self.progress = loop_lib.Progress(plan.total_steps, enabled=plan.verbose and plan.chief)
        self.eval_fn = data_lib.make_eval_dataset_fn(plan.source, plan.recipe.data, interpolation=plan.interpolation,
                                                     max_image_pixels=plan.data_limits["max_image_pixels"])
        self.eval_steps = data_lib.eval_steps(plan.source, plan.recipe.data)
        self.agree = _flag_reducer(plan.strategy)

    def announce(self, restored: str | None) -> None:
        """The run's opening lines: model, dataset, strategy, schedule, where it resumed."""
        plan, recipe, source = self.plan, self.plan.recipe, self.plan.source
        replicas = plan.strategy.num_replicas_in_sync
        batch = recipe.data.global_batch_size
        plan.say(f"[train] model {recipe.model.name} ({self.trainer.model.count_params():,} params), recipe "
                 f"{recipe.name}, dataset {source.name} ({source.train_examples} train / {source.eval_examples} "
                 f"val, {source.num_classes} classes)")
        plan.say(f"[train] {type(plan.strategy).__name__}: {replicas} replicas on "
                 f"{loop_lib.num_workers(plan.strategy)} host(s), global batch {batch} ({batch // replicas} per "
                 f"replica), {plan.steps_per_epoch} steps/epoch x {recipe.schedule.epochs} epochs = "
                 f"{plan.total_steps} steps, peak lr {recipes_lib.scaled_lr(recipe):.4g}, {plan.mixed_precision}")
        if restored:
            plan.say(f"[train] resumed from {restored} at step {self.step} (epoch "
                     f"{self.step // plan.steps_per_epoch}, batch {self.step % plan.steps_per_epoch})")

    def heartbeat(self) -> tuple[int, int]:
        """Global and eval step counters (the preemption watchdog reads them from another thread)."""
        return int(self.trainer.global_step.numpy()), int(self.trainer.evaluator.steps_done.numpy())

    def evaluate(self, done: int, *, record: bool = True) -> dict[str, Any]:
        """The eval after epoch ``done`` if it is due (recorded in the checkpoint, so a run
        preempted right at an epoch end evaluates that epoch when it resumes); {} if not due.
        ``record=False``: not written to ``metrics.jsonl`` (an eval repeated for the summary)."""
        plan, trainer, recipe = self.plan, self.trainer, self.plan.recipe
        if not (done % recipe.eval_every_epochs == 0 or (done == recipe.schedule.epochs and plan.eval_at_end)):
            return {}
        with _data_errors(plan.source, "val", plan.data_limits):
            result = {"epoch": done, "step": done * plan.steps_per_epoch,
                      **trainer.evaluate(self.eval_fn, self.eval_steps)}
        if trainer.ema:
            with _data_errors(plan.source, "val", plan.data_limits):
                ema = trainer.evaluate(self.eval_fn, self.eval_steps, use_ema=True)
            result.update({f"ema_{k}": v for k, v in ema.items()})
        trainer.evaluated_epoch.assign(done)
        if record:
            self.logger.write(result, kind="eval")
        self.progress.newline()
        plan.say(f"[eval] epoch {done}: top-1 {result['val_top1']:.4f} top-5 {result['val_top5']:.4f} "
                 f"loss {result['val_loss']:.4f} ({result['val_examples']} images, {result['val_skipped']} skipped)")
        return result

    def eval_if_pending(self) -> None:
        """The eval of the last epoch if the run was preempted between its last step and its eval."""
        spe = self.plan.steps_per_epoch
        pending = self.step // spe if self.step > 0 and self.step % spe == 0 else 0
        if pending > int(self.trainer.evaluated_epoch.numpy()):
            self.evaluation = self.evaluate(pending)

    def train_epoch(self, preemption: _Preemption) -> bool:
        """The rest of the current epoch (up to ``plan.stop_at``), its eval and checkpoint.

        Returns:
            True if the workers agreed on a SIGTERM (a checkpoint was saved at the current step).
        """
        plan, trainer, recipe = self.plan, self.trainer, self.plan.recipe
        epoch = self.step // plan.steps_per_epoch
        epoch_end = (epoch + 1) * plan.steps_per_epoch
        skip_steps = self.step - epoch * plan.steps_per_epoch
        if skip_steps == 0:
            trainer.epoch_skipped_files.assign(0)
        dataset_fn = data_lib.make_train_dataset_fn(
            plan.source, recipe.data, seed=recipe.seed, epoch=epoch, steps_per_epoch=plan.steps_per_epoch,
            skip_steps=skip_steps, label_smoothing=recipe.optim.label_smoothing, interpolation=plan.interpolation,
            clean_prefix=int(trainer.epoch_skipped_files.numpy()) == 0, **plan.data_limits)
        iterator = iter(plan.strategy.distribute_datasets_from_function(dataset_fn))
        try:
            while self.step < min(epoch_end, plan.stop_at):
                self.inner_loop(iterator, epoch_end)
                if self.agree(preemption.requested):
                    preemption.acknowledged = True
                    self.checkpointer.save(self.step)
                    self.progress.newline()
                    plan.say(f"[train] SIGTERM: saved a checkpoint at step {self.step}; rerun the same command to "
                             f"resume.")
                    return True
                if self.step % recipe.checkpoint_every_steps == 0:
                    self.save()
        except BaseException as error:  # a caller that keeps the exception must not keep the pipeline running
            loop_lib.drop_from_frames(error, iterator)
            del iterator
            raise
        del iterator  # the epoch's pipeline ends before its eval
        if self.step == epoch_end:
            self.evaluation = self.evaluate(epoch + 1) or self.evaluation
        self.save()
        return False

    def inner_loop(self, iterator, epoch_end: int) -> None:
        """One ``train_loop`` call up to the next epoch end, checkpoint step or stop; logs it, calls the callbacks.

        Raises:
            FloatingPointError: a non-finite loss.
        """
        plan, trainer, recipe = self.plan, self.trainer, self.plan.recipe
        next_ckpt = (self.step // recipe.checkpoint_every_steps + 1) * recipe.checkpoint_every_steps
        n = min(recipe.steps_per_loop, epoch_end - self.step, next_ckpt - self.step, plan.stop_at - self.step)
        trainer.train_loop_begin()
        with _data_errors(plan.source, "train", plan.data_limits):
            outputs = trainer.train_loop(iterator, tf.constant(n, tf.int32))
        last = trainer.train_loop_end(outputs, n)
        self.step = last["step"]
        if not math.isfinite(last["loss"]):
            raise FloatingPointError(
                f"Non-finite loss {last['loss']} in steps {self.step - n + 1}..{self.step}; lower the lr or use "
                f"float32."
            )
        last["epoch"] = self.step / plan.steps_per_epoch
        last["skipped_total"] = int(trainer.skipped_files.numpy())
        self.last = last
        self.logger.write(last, kind="train")
        self.progress.update(last, plan.steps_per_epoch, recipe.schedule.epochs, recipe.data.global_batch_size)
        for callback in plan.callbacks:
            callback.on_loop_end(self.step, dict(last))

    def save(self) -> None:
        """A checkpoint at the current step unless one was saved there."""
        if self.step != self.last_saved:
            self.checkpointer.save(self.step)
            self.last_saved = self.step

    def finish(self, status: str) -> dict[str, Any]:
        """The summary (after the final outputs if "completed"), given to the callbacks' ``on_train_end``."""
        plan, trainer = self.plan, self.trainer
        if status == "completed" and plan.chief:
            _save_final(plan.recipe, plan.model_dir, trainer, plan.source)
        summary = {
            "status": status, "step": self.step, "loss": self.last.get("loss"),
            "images_per_sec": self.last.get("images_per_sec"), "val_top1": self.evaluation.get("val_top1"),
            "val_top5": self.evaluation.get("val_top5"), "skipped": int(trainer.skipped_files.numpy()),
            "model_dir": plan.model_dir, "time": time.time(),
        }
        if status == "completed":
            self.logger.write(summary, kind="final")
            plan.say(f"[train] done: step {self.step}, val top-1 {summary.get('val_top1')}, skipped files "
                     f"{summary['skipped']}; model in {os.path.join(plan.model_dir, FINAL_PRESET)}")
        for callback in plan.callbacks:
            callback.on_train_end(dict(summary))
        return summary


class _data_errors:  # noqa: N801 (a context manager used like a function)
    """Turns a stopped input stream (too many undecodable files in a row) into a one-line ValueError."""

    def __init__(self, source, split: str, limits: dict[str, int]) -> None:
        self.source, self.split, self.limit = source, split, limits["max_consecutive_skips"]

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, tb) -> None:
        if error is not None:
            explained = data_lib.explain_data_error(error, self.source, self.split, self.limit)
            if explained is not error:
                raise explained from None


def _flag_reducer(strategy):
    """A function telling whether any worker raised its flag (a collective only in multi-host runs)."""
    if loop_lib.num_workers(strategy) <= 1:
        return bool

    @tf.function(autograph=False)
    def any_flag(flag):
        value = strategy.run(lambda: tf.identity(flag))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)  # > 0 if any worker was signalled

    return lambda flag: bool(any_flag(tf.constant(int(flag), tf.int32)).numpy() > 0)


def _save_final(recipe: Recipe, model_dir: str, trainer: loop_lib.Trainer, source) -> None:
    """The preset folder ``final/`` (weights + build record + metadata) and, with EMA, ``final_ema.weights.h5``.

    ``final/`` is the run's model: ``pf_keras.create_model(model_dir/final)``, ``--model
    model_dir/final`` of the export tools, ``--model_dir`` of evaluate. ``final_ema.weights.h5``
    holds the EMA weights of the same architecture (``pf-keras-evaluate --model_dir RUN --weights
    RUN/final_ema.weights.h5``). Written EMA first: ``final/`` marks a finished run.

    Raises:
        fileio.WriteError: one line (full disk, ...); no partial file under a final name, the previous
            version intact.
    """
    if trainer.ema:
        with trainer.ema_weights() as model:
            fileio.save_weights(model, os.path.join(model_dir, FINAL_EMA))
    spec = pf_keras.SPECS.get(recipe.model.name)
    interpolation = recipe.data.interpolation or (spec.eval.interpolation if spec else None)
    write_preset(trainer.model, os.path.join(model_dir, FINAL_PRESET),  # the model's build record
                 metadata={"spec": spec and spec.name, "source": "pf-keras-train", "recipe": recipe.name,
                           "class_names": list(source.class_names),
                           "eval_transform": {"size": recipe.data.image_size, "interpolation": interpolation,
                                              "crop_fraction": recipe.data.crop_fraction}})


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


def build_parser() -> args.ArgumentParser:
    """The flags of pf-keras-train (the README's flag table). Recipe fields not given keep the recipe's values."""
    p = args.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", required=True, help="Run folder: checkpoints, logs, recipe.json and the final "
                   "weights; rerunning the command resumes it (so it is a run folder, not an --output_dir).")
    p.add_argument("--recipe", default="resnet90", help=f"Recipe: {', '.join(recipes_lib.list_recipes())} "
                   "(default resnet90).")
    p.add_argument("--model", help="Registry name (pf_keras.list_models()); default: the recipe's.")
    args.add_model_kwargs_flag(p)
    p.add_argument("--weights", "--init_weights", dest="init_weights", metavar="WEIGHTS",
                   help="Start from these weights (.pth or .weights.h5; --init_weights is a deprecated alias).")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="Recipe override (repeatable), e.g. optim.momentum=0.95.")
    p.add_argument("--dataset", help="builtin, synthetic, folder:PATH or a TFDS name (imagenet2012); "
                   "default: the recipe's.")
    p.add_argument("--data_dir", help="TFDS data folder (default: TFDS's own).")
    p.add_argument("--batch_size", type=int, help="Global batch size (all replicas).")
    p.add_argument("--image_size", type=int, help="Train/eval crop size in pixels.")
    p.add_argument("--epochs", type=int, help="Epochs.")
    p.add_argument("--lr", type=float, help="Base learning rate for optim.base_batch_size images (scaled linearly).")
    p.add_argument("--weight_decay", type=float, help="Weight decay (not on norms/biases).")
    p.add_argument("--warmup_epochs", type=float, help="Warm-up epochs.")
    p.add_argument("--seed", type=int, help="Seed of init and data order.")
    p.add_argument("--steps_per_loop", type=int, help="Steps per tf.function call.")
    p.add_argument("--steps_per_epoch", type=int, help="Override steps per epoch (0 = dataset size / batch).")
    p.add_argument("--drop_path_rate", type=float, help="Stochastic depth rate passed to the model.")
    p.add_argument("--ema_decay", type=float, help="EMA decay (0 = off).")
    p.add_argument("--sync_bn", action="store_true", help="Synchronized BatchNorm across replicas.")
    p.add_argument("--strategy", default="one_device", choices=list(loop_lib.STRATEGIES),
                   help="Distribution strategy (default one_device).")
    p.add_argument("--num_replicas", type=int, default=0, help="mirrored: logical CPU devices on a CPU host / GPUs "
                   "to use (0 = all).")
    p.add_argument("--tpu", default="", help="TPU name or address (strategy=tpu).")
    p.add_argument("--mixed_precision", default="float32", choices=list(PRECISIONS), help="Compute precision.")
    p.add_argument("--jit_compile", action="store_true", help="XLA-compile the forward/backward pass.")
    p.add_argument("--deterministic", action="store_true", help="Deterministic ops (bitwise-identical resumes).")
    p.add_argument("--resume_from", default="", help="Checkpoint prefix to start from if model_dir has none.")
    p.add_argument("--restart_from_scratch", action="store_true", help="Start at step 0 although model_dir holds "
                   "checkpoints (they are moved to checkpoints/before_restart/; a finished run's final/, EMA "
                   "weights and metrics.jsonl to before_restart/).")
    p.add_argument("--max_image_pixels", type=int, default=data_lib.MAX_IMAGE_PIXELS, help="Skip images whose "
                   f"header declares more pixels (0 = no limit; default {data_lib.MAX_IMAGE_PIXELS}).")
    p.add_argument("--max_consecutive_skips", type=int, default=data_lib.MAX_CONSECUTIVE_SKIPS, help="Stop after "
                   "this many undecodable training files in a row, or a whole pass (0 = never).")
    p.add_argument("--sigterm_stall_s", type=float, default=SIGTERM_STALL_S, help="After SIGTERM, exit 143 without "
                   "a checkpoint if no step completes for this many seconds (a stuck input pipeline).")
    p.add_argument("--max_steps", type=int, default=0, help="Stop after this global step (0 = the whole recipe).")
    p.add_argument("--json", action="store_true", help="Print only the JSON summary (no progress lines).")
    p.add_argument("--verbose", action="store_true", help="Keep TensorFlow's own log lines.")
    p.add_argument("--debug", action="store_true", help="Show the traceback of an error (or PF_KERAS_DEBUG=1).")
    return p


def _main(f) -> int:
    """Resolves the recipe from the parsed flags ``f``, calls :func:`run`; returns 143 when preempted."""
    if f.strategy == "mirrored" and f.num_replicas and not tf.config.list_physical_devices("GPU"):
        loop_lib.configure_cpu_replicas(f.num_replicas)  # before anything starts TensorFlow's runtime
    recipe = recipe_from_flags(f)
    summary = run(recipe, f.model_dir, strategy_name=f.strategy, num_replicas=f.num_replicas, tpu=f.tpu,
                  mixed_precision=f.mixed_precision, jit_compile=f.jit_compile, deterministic=f.deterministic,
                  resume_from=f.resume_from, max_steps=f.max_steps, restart_from_scratch=f.restart_from_scratch,
                  max_image_pixels=f.max_image_pixels, max_consecutive_skips=f.max_consecutive_skips,
                  sigterm_stall_s=f.sigterm_stall_s, verbose=not f.json)
    print(json.dumps(summary))
    return PREEMPTED_EXIT_CODE if summary["status"] == "preempted" else 0


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv`` without the program name; default ``sys.argv[1:]``); returns the exit status."""
    return args.run_tool(lambda a: _main(build_parser().parse_args(a)), argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
