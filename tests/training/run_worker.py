"""Subprocess entry of the training tests: ``python run_worker.py SPEC.json``.

SPEC: {"recipe": recipes.to_dict(...), "model_dir", "strategy", "deterministic",
"pause_at_step" (optional: write "marker" there and wait until the test, having sent SIGTERM,
deletes it), "kill_at_step" (optional: SIGKILL this process at the end of the inner loop that reaches it),
"weights_out" (optional: this process's final weights as .npz),
"stall_marker" (optional: the training input never yields a batch; its generator writes this file
when it starts, then blocks as a hung file system would), "sigterm_stall_s", "max_steps",
"then" (optional: keys that replace the spec's for a second run in this same process after the first, e.g. another
model_dir and weights_out; both runs share one strategy, and each run's output starts with a "RUN <i>" line)}.
Exits 143 when preempted; a user error is one line and status 2 (pf_keras.cli.run_cli).
The printed summary adds "first_loop_step": the global step after this process's first inner
loop (shows where a resumed run started, also on non-chief workers, which print no log).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np
import tensorflow as tf

from pf_keras.cli import run_cli
from pf_keras_training import data, loop, recipes, train
from pf_keras_training.callbacks import TrainCallback


def _stalled_input(marker: str):
    """A make_train_dataset_fn whose dataset never delivers a batch (a stuck input pipeline)."""
    def make(source, cfg, **kwargs):
        def generate():
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            while True:
                time.sleep(0.05)
            yield  # pragma: no cover

        def dataset_fn(ctx):
            batch = ctx.get_per_replica_batch_size(cfg.global_batch_size)
            signature = {"images": tf.TensorSpec([batch, cfg.image_size, cfg.image_size, 3], tf.float32),
                         "targets": tf.TensorSpec([batch, source.num_classes], tf.float32),
                         "labels": tf.TensorSpec([batch], tf.int64), "skipped": tf.TensorSpec([batch], tf.int32)}
            return tf.data.Dataset.from_generator(generate, output_signature=signature)

        return dataset_fn

    return make


class _Worker(TrainCallback):
    """Records the steps of every inner loop, pauses at ``pause`` until ``marker`` is deleted, keeps the trainer."""

    def __init__(self, pause: int | None, marker: str | None, kill: int | None = None) -> None:
        self.pause, self.marker, self.kill = pause, marker, kill
        self.seen: list[int] = []
        self.trainer = None
        self.summary = None

    def on_train_begin(self, trainer) -> None:
        self.trainer = trainer

    def on_loop_end(self, step: int, metrics: dict) -> None:
        self.seen.append(step)
        if step == self.kill:
            os.kill(os.getpid(), signal.SIGKILL)  # no handler, no cleanup: as the OOM killer or a power loss
        if step == self.pause:
            with open(self.marker, "w") as f:
                f.write(str(os.getpid()))
            deadline = time.time() + 60
            while os.path.exists(self.marker) and time.time() < deadline:
                time.sleep(0.05)  # the test sends SIGTERM, then deletes the marker

    def on_train_end(self, summary: dict) -> None:
        self.summary = summary


def _run(spec: dict, strategy) -> dict:
    """One train.run of ``spec``; prints and returns its summary (+ "first_loop_step")."""
    recipe = recipes.from_dict(spec["recipe"])
    worker = _Worker(spec.get("pause_at_step"), spec.get("marker"), spec.get("kill_at_step"))
    extra = {k: spec[k] for k in ("sigterm_stall_s", "max_steps") if k in spec}
    summary = train.run(recipe, spec["model_dir"], strategy=strategy, deterministic=spec.get("deterministic", False),
                        callbacks=[worker], verbose=True, **extra)
    assert worker.summary == summary, (worker.summary, summary)  # on_train_end saw what run returned
    summary["first_loop_step"] = worker.seen[0] if worker.seen else None
    if spec.get("weights_out"):
        np.savez(spec["weights_out"], *[w.numpy() for w in worker.trainer.model.weights])
    print("SUMMARY " + json.dumps(summary), flush=True)
    return summary


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    if spec.get("stall_marker"):
        data.make_train_dataset_fn = _stalled_input(spec["stall_marker"])
    if spec.get("deterministic"):  # before the strategy starts the runtime (train.run sets it again)
        tf.config.experimental.enable_op_determinism()
    strategy = loop.create_strategy(spec.get("strategy", "one_device"))  # one per process (multi_worker)
    runs = [spec, {**spec, **spec["then"]}] if "then" in spec else [spec]
    for index, run_spec in enumerate(runs):
        print(f"RUN {index}", flush=True)
        summary = _run(run_spec, strategy)
        if summary["status"] == "preempted":
            return train.PREEMPTED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: main(argv[0]), sys.argv[1:], prog="run_worker"))
