"""training/callbacks.py: what ``train.run(..., callbacks=[...])`` calls, when, with what; errors are not swallowed."""

from __future__ import annotations

import gc
import json
import os

import pytest
import tensorflow as tf
from conftest import live_input_iterators

import pf_keras
from pf_keras_training import callbacks, loop, train

STEPS = [3, 4, 6, 8, 11, 12]  # tiny recipe: 6 steps/epoch x 2, 3 steps per loop, loops cut at checkpoints (every 4)


def _one_device():
    return tf.distribute.OneDeviceStrategy("/cpu:0")


class JsonLinesLogger(callbacks.TrainCallback):
    """A user's own logging: every event as one JSON line in a file of its own."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.trainer = None

    def _write(self, event: str, **record) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"event": event, **record}) + "\n")

    def on_train_begin(self, trainer) -> None:
        self.trainer = trainer
        self._write("begin", step=int(trainer.global_step.numpy()))

    def on_loop_end(self, step, metrics) -> None:
        self._write("loop", step=step, metrics=metrics)

    def on_train_end(self, summary) -> None:
        self._write("end", summary=summary)

    def events(self) -> list[dict]:
        with open(self.path) as f:
            return [json.loads(line) for line in f]


class Raise(callbacks.TrainCallback):
    """Raises ``error`` in ``on_loop_end`` at ``step``, or in ``on_train_end`` if ``step`` is None."""

    def __init__(self, error: Exception, step: int | None = None) -> None:
        self.error, self.step = error, step

    def on_loop_end(self, step, metrics) -> None:
        if step == self.step:
            raise self.error

    def on_train_end(self, summary) -> None:
        if self.step is None:
            raise self.error


class TestCallbacks:
    def test_a_user_logger_sees_every_loop_end_and_the_summary_also_across_a_resume(self, shapes_dir, make_recipe,
                                                                                     tmp_path):
        recipe = make_recipe(f"folder:{shapes_dir}", **{"data.eval_examples": 8})
        model_dir = str(tmp_path / "run")
        first_log = JsonLinesLogger(str(tmp_path / "first.jsonl"))
        first = train.run(recipe, model_dir, strategy=_one_device(), verbose=False, max_steps=4, callbacks=[first_log])
        events = first_log.events()
        assert [e["event"] for e in events] == ["begin", "loop", "loop", "end"]
        assert events[0]["step"] == 0 and [e["step"] for e in events[1:3]] == STEPS[:2]
        assert events[-1]["summary"] == first and first["status"] == "stopped" and first["step"] == 4

        # Resumed: begins at the checkpointed step 4; two callbacks are called in list order.
        second_log = JsonLinesLogger(str(tmp_path / "second.jsonl"))
        order: list[str] = []

        class After(callbacks.TrainCallback):
            def on_loop_end(self, step, metrics):
                order.append(f"after {step} (logged: {len(second_log.events()) - 1})")

        second = train.run(recipe, model_dir, strategy=_one_device(), verbose=False, callbacks=[second_log, After()])
        events = second_log.events()
        assert events[0] == {"event": "begin", "step": 4}
        loops = [e for e in events if e["event"] == "loop"]
        assert [e["step"] for e in loops] == STEPS[2:]
        assert order == [f"after {s} (logged: {i + 1})" for i, s in enumerate(STEPS[2:])]
        assert events[-1] == {"event": "end", "summary": second}
        assert second["status"] == "completed" and second["step"] == 12 and second["val_top1"] is not None
        # Each loop's metrics are the run's own metrics.jsonl record of that loop.
        records = loop.read_metrics(model_dir, "train")
        assert [r["step"] for r in records] == STEPS
        for logged, record in zip([e["metrics"] for e in loops], records[2:], strict=True):
            assert logged == {k: v for k, v in record.items() if k not in ("kind", "time")}
            assert logged["step"] == record["step"] and logged["epoch"] == record["step"] / 6
        # The trainer given to on_train_begin is the live one: it holds the final weights.
        final = second_log.trainer.model
        saved = pf_keras.create_model(os.path.join(model_dir, train.FINAL_PRESET))
        assert len(final.weights) == len(saved.weights) > 10
        for a, b in zip(final.weights, saved.weights, strict=True):
            assert (a.numpy() == b.numpy()).all()

    def test_an_exception_in_a_callback_ends_the_run_and_reaches_the_caller(self, shapes_dir, make_recipe, tmp_path):
        recipe = make_recipe(f"folder:{shapes_dir}", **{"data.eval_examples": 8, "schedule.epochs": 1})
        model_dir = str(tmp_path / "run")
        log = JsonLinesLogger(str(tmp_path / "log.jsonl"))
        before = live_input_iterators()
        with pytest.raises(ConnectionError, match="metrics server down") as caught:
            train.run(recipe, model_dir, strategy=_one_device(), verbose=False,
                      callbacks=[Raise(ConnectionError("metrics server down"), step=4), log])
        # The exception (kept here, as a notebook keeps it) no longer holds the epoch's input pipeline: its
        # iterator is gone, not left running until the traceback is collected (its destructor then blocked
        # whatever code triggered the collection).
        gc.collect()
        assert caught.value.__traceback__ is not None
        assert not live_input_iterators() - before
        assert [e["event"] for e in log.events()] == ["begin", "loop"]  # stopped at once: no later hook, no end
        assert [r["step"] for r in loop.read_metrics(model_dir, "train")] == [3, 4]
        assert not os.path.exists(os.path.join(model_dir, train.FINAL_PRESET))

        # The lock was released: the same model_dir runs again (from scratch: no checkpoint was saved
        # yet, the step-4 one comes after the callbacks); an error at the end comes after the final outputs.
        # The first attempt's records of steps 3 and 4 are dropped when it starts again: each step once.
        with pytest.raises(RuntimeError, match="upload failed"):
            train.run(recipe, model_dir, strategy=_one_device(), verbose=False,
                      callbacks=[Raise(RuntimeError("upload failed"))])
        assert [r["step"] for r in loop.read_metrics(model_dir, "train")] == [3, 4, 6]
        assert [r["status"] for r in loop.read_metrics(model_dir, "final")] == ["completed"]
        assert os.path.exists(os.path.join(model_dir, train.FINAL_PRESET))

    @pytest.mark.parametrize("value", [[lambda step, metrics: None], callbacks.TrainCallback(), "log"])
    def test_anything_but_a_list_of_train_callbacks_is_refused_before_the_run(self, shapes_dir, make_recipe,
                                                                              tmp_path, value):
        recipe = make_recipe(f"folder:{shapes_dir}")
        with pytest.raises(TypeError, match=r"TrainCallback.*Received: "):
            train.run(recipe, str(tmp_path / "run"), strategy=_one_device(), verbose=False, callbacks=value)
        assert not os.path.exists(tmp_path / "run")

