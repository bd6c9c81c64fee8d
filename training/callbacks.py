"""Callbacks: user code the training loop calls at its begin, after every inner loop, and at its end.

``pf_keras_training.train.run(..., callbacks=[...])`` takes :class:`TrainCallback` objects (like
Keras callbacks or Orbit's loop-end actions, but three hooks only). They run on the host, in
Python, between inner loops (never inside the ``tf.function``), in list order:

- :meth:`TrainCallback.on_train_begin` once, after the model was built and any checkpoint
  restored (``trainer.global_step`` is the step the run starts from);
- :meth:`TrainCallback.on_loop_end` after every inner loop of ``steps_per_loop`` steps, after
  the record went to ``metrics.jsonl`` and before the checkpoint / preemption decision;
- :meth:`TrainCallback.on_train_end` with the summary that ``run`` returns, whether the run
  completed, was preempted (SIGTERM) or stopped at ``max_steps``; not when it raised.

An exception raised in a callback is not caught: it ends the run (the last checkpoint stays
intact, the ``model_dir`` lock is released) and reaches the caller of ``run``. Every worker of a
multi-worker run calls its callbacks; write to shared systems from the chief only
(``pf_keras_training.checkpoint.is_chief(trainer.strategy)``).

Example, logging each inner loop to a system of one's own::

    from pf_keras_training import callbacks, recipes, train

    class PrintLoss(callbacks.TrainCallback):
        def on_loop_end(self, step, metrics):
            print(step, metrics["loss"], metrics["images_per_sec"])

    train.run(recipes.get_recipe("demo"), "runs/demo", callbacks=[PrintLoss()])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # loop imports TensorFlow; this module imports nothing at run time
    from pf_keras_training.loop import Trainer


class TrainCallback:
    """Base class of training callbacks; each method does nothing unless overridden."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Called once before the first inner loop.

        Args:
            trainer: loop.Trainer. The live trainer: ``model``, ``optimizer``, ``strategy``,
                ``global_step`` (the step the run starts from, > 0 when resumed), ``ema``.
                Keep it to read the trained model later; don't change its variables.
        """

    def on_loop_end(self, step: int, metrics: dict[str, Any]) -> None:
        """Called after every inner loop.

        Args:
            step: int. The global step after the loop (1-based count of steps done).
            metrics: dict. A copy of the loop's record in ``metrics.jsonl``: ``step``, ``epoch``,
                ``loss``, ``train_top1``, ``lr``, ``images_per_sec``, ``skipped``, ``skipped_total``.
        """

    def on_train_end(self, summary: dict[str, Any]) -> None:
        """Called once with the summary ``run`` is about to return (a copy).

        Args:
            summary: dict. ``status`` ("completed", "preempted" or "stopped"), ``step``,
                ``loss``, ``val_top1``, ``val_top5``, ``skipped``, ``images_per_sec``, ``model_dir``.
        """


def check_callbacks(callbacks: Sequence[TrainCallback] | None) -> tuple[TrainCallback, ...]:
    """``callbacks`` as a tuple, each checked to be a :class:`TrainCallback`.

    Raises:
        TypeError: for anything else (a bare function, a Keras callback, a single callback).
    """
    if callbacks is None:
        return ()
    if isinstance(callbacks, TrainCallback) or not isinstance(callbacks, Sequence):
        raise TypeError(f"`callbacks` must be a list of TrainCallback objects. Received: callbacks={callbacks!r}")
    for callback in callbacks:
        if not isinstance(callback, TrainCallback):
            raise TypeError(
                f"Each callback must be a pf_keras_training.callbacks.TrainCallback (subclass it and override "
                f"on_train_begin, on_loop_end or on_train_end). Received: {callback!r}"
            )
    return tuple(callbacks)
