"""Checkpoints: ``tf.train.Checkpoint`` + ``CheckpointManager``, chief-aware.

A checkpoint holds the model (weights and BatchNorm statistics), the optimizer (slots,
iteration count, loss scale), the EMA weights, the global step (the input position: the
epoch is ``step // steps_per_epoch`` and the batches already seen in it
``step % steps_per_epoch``), the last evaluated epoch and the counts of skipped files (in all, and in the current
epoch: with none, a resumed run skips the consumed files before decoding).

Resume order (as big_vision): the run's own latest checkpoint in ``model_dir/checkpoints``;
else an explicit ``resume_from`` checkpoint; else pretrained weights given to the model
builder (``model.init_weights``); else the fresh initialisation.

Multi-worker: every worker calls :meth:`Checkpointer.save` (saving reads distributed
variables collectively), but only the chief writes into ``model_dir``; other workers write
to a private temporary folder that is deleted right away. A worker that died is restarted
with the same command and restores the chief's latest checkpoint like the others.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the single host of a local strategy and on the chief (or worker 0) of a multi-worker run."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


class Checkpointer:
    """Saves and restores the training state of one run.

    Args:
        model_dir: str. The run's folder; checkpoints go to ``model_dir/checkpoints``.
        strategy: tf.distribute.Strategy. Decides who writes.
        keep: int. Checkpoints kept. Defaults to 3.
        **objects: trackables to save (model, optimizer, ema, step, ...).
    """

    def __init__(self, model_dir: str, strategy: tf.distribute.Strategy, *, keep: int = 3, **objects) -> None:
        self.chief = is_chief(strategy)
        self.directory = os.path.join(model_dir, "checkpoints")
        self.checkpoint = tf.train.Checkpoint(**objects)
        self._keep = keep
        self._manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=keep)

    @property
    def latest(self) -> str | None:
        """Path prefix of the latest checkpoint in ``model_dir``, or None."""
        return tf.train.latest_checkpoint(self.directory)

    def restore(self, path: str) -> None:
        """Restores every saved object from ``path`` (a checkpoint prefix); fails on missing values."""
        self.checkpoint.restore(path).assert_existing_objects_matched().expect_partial()

    def save(self, step: int) -> str | None:
        """Writes a checkpoint numbered ``step``; returns its path on the chief, None elsewhere."""
        if self.chief:
            return self._manager.save(checkpoint_number=step)
        tmp = tempfile.mkdtemp(prefix="pf_keras_worker_ckpt_")
        try:
            tf.train.CheckpointManager(self.checkpoint, tmp, max_to_keep=1).save(checkpoint_number=step)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return None
