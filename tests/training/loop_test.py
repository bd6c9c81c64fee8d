"""One strategy.run loop under one_device and mirrored (2 logical CPUs); multi_worker (2 processes) is trained
and checked in checkpoint_test.py (TestPreemption's uninterrupted 2-worker job)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pf_keras_training import loop, train
from pf_keras_training.callbacks import TrainCallback


def _losses(model_dir: str) -> list[float]:
    return [r["loss"] for r in loop.read_metrics(model_dir, "train")]


def _decreased(losses: list[float]) -> bool:
    return float(np.mean(losses[-2:])) < float(np.mean(losses[:2]))


class _KeepTrainer(TrainCallback):
    """Keeps the run's live trainer, to inspect its variables after ``run`` returned."""

    trainer = None

    def on_train_begin(self, trainer) -> None:
        self.trainer = trainer


def _replica_values(strategy, variables) -> list[list[np.ndarray]]:
    """For each variable, its value on every local replica."""
    import keras

    values = []
    for var in variables:
        raw = var.value if isinstance(var, keras.Variable) else var  # the tf.distribute variable inside
        values.append([v.numpy() for v in strategy.experimental_local_results(raw)])
    return values


class TestTrainer:
    def test_one_device_learns_and_writes_outputs(self, shapes_dir, make_recipe, tmp_path):
        # 2 epochs: loss means 3.36 -> 2.89 over the first and last two loops (measured 2026-11-27)
        recipe = make_recipe(f"folder:{shapes_dir}", **{"schedule.epochs": 2})
        model_dir = str(tmp_path / "run")
        summary = train.run(recipe, model_dir, strategy=loop.create_strategy("one_device"), verbose=False)
        assert summary["status"] == "completed" and summary["step"] == 12
        losses = _losses(model_dir)
        assert len(losses) == 6 and _decreased(losses)  # 2 loops per epoch + 1 more at each checkpoint step
        for name in ("final/model.weights.h5", "recipe.json", "metrics.jsonl", "tb", "checkpoints"):
            assert os.path.exists(os.path.join(model_dir, name)), name
        evals = loop.read_metrics(model_dir, "eval")
        assert [e["epoch"] for e in evals] == [1, 2]
        assert {"val_top1", "val_top5", "step"} <= set(evals[-1])
        assert {"epoch", "step", "loss", "images_per_sec"} <= set(loop.read_metrics(model_dir, "train")[0])
        with open(os.path.join(model_dir, "final", "config.json")) as f:
            info = json.load(f)  # the model's build record
        assert info["model"] == "resnet50_hybrid" and info["config"]["classes"] == 10
        # Rerunning the same command resumes: nothing left to do, same step.
        again = train.run(recipe, model_dir, strategy=loop.create_strategy("one_device"), verbose=False)
        assert again["step"] == 12 and len(_losses(model_dir)) == 6

    def test_mirrored_two_cpu_replicas_stay_identical(self, shapes_dir, make_recipe, tmp_path, mirrored_strategy):
        strategy = mirrored_strategy
        assert strategy.num_replicas_in_sync == 2
        recipe = make_recipe(f"folder:{shapes_dir}", **{"schedule.epochs": 2, "data.eval_examples": 16})  # 3.26 -> 2.73
        keep = _KeepTrainer()
        train.run(recipe, str(tmp_path / "run"), strategy=strategy, verbose=False, callbacks=[keep])
        losses = _losses(str(tmp_path / "run"))
        assert _decreased(losses)
        variables = list(keep.trainer.model.weights) + list(keep.trainer.optimizer.variables)
        assert len(variables) > 10
        for per_replica in _replica_values(strategy, variables):
            assert len(per_replica) == 2
            np.testing.assert_array_equal(per_replica[0], per_replica[1])

    def test_mirrored_sync_batchnorm_trains(self, shapes_dir, make_recipe, tmp_path, mirrored_strategy):
        import keras

        strategy = mirrored_strategy
        recipe = make_recipe(f"folder:{shapes_dir}", **{"model.sync_bn": "true", "schedule.epochs": 1,
                                                        "data.eval_examples": 16})
        keep = _KeepTrainer()
        summary = train.run(recipe, str(tmp_path / "run"), strategy=strategy, verbose=False, callbacks=[keep],
                            max_steps=3)  # one inner loop of synchronized-BN steps
        bns = [layer for layer in keep.trainer.model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert bns and all(layer.synchronized for layer in bns)
        assert summary["step"] == 3 and np.isfinite(summary["loss"])

    # multi_worker (2 processes) trains in checkpoint_test's TestPreemption: its uninterrupted 2-worker job is
    # checked there for completion, a falling loss, identical workers and the chief's final weights.


class TestStrategyErrors:
    def test_unknown_strategy(self):
        with pytest.raises(ValueError, match=r"Valid strategies: .*Received: strategy='horovod'"):
            loop.create_strategy("horovod")

    def test_num_replicas_needs_mirrored(self):
        with pytest.raises(ValueError, match=r"only applies to the mirrored strategy. Received: strategy='one_device'"):
            loop.create_strategy("one_device", num_replicas=2)

    def test_multi_worker_needs_tf_config(self, monkeypatch):
        monkeypatch.delenv("TF_CONFIG", raising=False)
        with pytest.raises(ValueError, match=r"TF_CONFIG"):
            loop.create_strategy("multi_worker")

    @pytest.mark.parametrize("tf_config, message", [
        ("{not json", "TF_CONFIG is not JSON"),
        ("[]", "TF_CONFIG must be"),  # TensorFlow trained alone, silently
        ('{"cluster": 5}', "TF_CONFIG must be"),  # TypeError in TensorFlow
        ('{"cluster": {"worker": "x"}, "task": {}}', "TF_CONFIG must be"),  # TypeError in TensorFlow
        ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 7}}', "TF_CONFIG must be"),
        ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "chief", "index": 0}}', "TF_CONFIG must be"),
        ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": true}}', "TF_CONFIG must be"),
    ])
    def test_a_malformed_tf_config_is_one_line(self, monkeypatch, tf_config, message):
        monkeypatch.setenv("TF_CONFIG", tf_config)
        with pytest.raises(ValueError, match=message) as info:
            loop.create_strategy("multi_worker")
        assert "\n" not in str(info.value)
        loop.check_tf_config('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}')

    def test_batch_not_divisible_by_replicas(self, shapes_dir, make_recipe, tmp_path, mirrored_strategy):
        recipe = make_recipe(f"folder:{shapes_dir}", **{"data.global_batch_size": 15})
        message = r"divisible by the number of replicas \(2\). Received: data.global_batch_size=15"
        with pytest.raises(ValueError, match=message):
            train.run(recipe, str(tmp_path), strategy=mirrored_strategy, verbose=False)


class TestFailedStreamsEnd:
    """An exception that leaves a loop does not keep its input iterator (and the tf.data threads) alive."""

    def test_drop_from_frames_frees_what_only_the_traceback_held(self):
        import gc
        import weakref

        class Pipeline:
            pass

        def consume(stream, extra):
            raise OSError("disk gone")

        def run():
            stream = Pipeline()
            ref = weakref.ref(stream)
            try:
                consume(stream, (1, stream))
            except OSError as error:
                loop.drop_from_frames(error, stream)
                del stream
                return ref, error

        ref, error = run()
        gc.disable()  # freed by reference counting, not by a later collection
        try:
            assert error.__traceback__.tb_next is not None  # the traceback and its line numbers stay
            assert ref() is None
        finally:
            gc.enable()

    def test_an_eval_stream_that_fails_midway_is_released(self):
        import gc

        import keras
        import tensorflow as tf
        from conftest import live_input_iterators

        def dataset_fn(ctx):
            def element(i):
                tf.debugging.assert_less(i, tf.constant(4, tf.int64), message="bad record")
                return {"images": tf.ones([4, 4, 3]), "labels": tf.constant(0, tf.int64), "weights": tf.constant(1.0),
                        "skipped": tf.constant(0, tf.int32)}

            return tf.data.Dataset.range(100).map(element).batch(2)

        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        with strategy.scope():
            model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
        evaluator = loop.Evaluator(strategy, model)
        before = live_input_iterators()
        with pytest.raises(tf.errors.InvalidArgumentError, match="bad record") as caught:
            evaluator.evaluate(dataset_fn, 10)
        gc.collect()
        assert caught.value.__traceback__ is not None
        assert not live_input_iterators() - before


class TestReadMetrics:
    def test_records_by_kind_and_a_damaged_line_named(self, tmp_path):
        logger = loop.MetricsLogger(str(tmp_path), enabled=True)
        logger.write({"step": 3, "loss": 2.5}, kind="train")
        logger.write({"step": 3, "val_top1": 0.1}, kind="eval")
        assert [r["step"] for r in loop.read_metrics(str(tmp_path), "train")] == [3]
        assert [r["kind"] for r in loop.read_metrics(str(tmp_path))] == ["train", "eval"]
        with open(tmp_path / "metrics.jsonl", "a") as f:
            f.write('{"kind": "train", "step": 4, "lo')  # a record cut off by hand
        with pytest.raises(ValueError, match=r"metrics.jsonl line 3 is not a JSON record"):
            loop.read_metrics(str(tmp_path))
        (tmp_path / "metrics.jsonl").write_text('{"kind": "train"}\n[1, 2]\n')
        with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not a JSON object"):
            loop.read_metrics(str(tmp_path))


class TestCutMetrics:
    @staticmethod
    def _write(path, records, tail=""):
        text = "".join(json.dumps(r) + "\n" for r in records) + tail
        path.write_text(text)
        return text

    def test_the_records_after_the_checkpoint_are_cut_and_nothing_before(self, tmp_path):
        kept = [{"kind": "train", "step": s} for s in (3, 4)] + [{"kind": "eval", "epoch": 1, "step": 6}]
        kept += [{"kind": "train", "step": 6}]  # ckpt-6 saved before epoch 1's eval in another timeline: kept
        after = [{"kind": "train", "step": 8}, {"kind": "eval", "epoch": 2, "step": 12}, {"kind": "train", "step": 12},
                 {"kind": "final", "step": 12}]
        path = tmp_path / "metrics.jsonl"
        before = self._write(path, kept + after, tail='{"kind": "train", "st')  # and an append torn by a crash
        assert loop.cut_metrics(str(tmp_path), 6, 1) == len(after) + 1
        assert path.read_text() == before[:len("".join(json.dumps(r) + "\n" for r in kept))]
        assert loop.cut_metrics(str(tmp_path), 6, 1) == 0  # nothing more

    def test_an_eval_the_checkpoint_does_not_record_is_cut(self, tmp_path):
        path = tmp_path / "metrics.jsonl"
        self._write(path, [{"kind": "train", "step": 6}, {"kind": "eval", "epoch": 1, "step": 6}])
        assert loop.cut_metrics(str(tmp_path), 6, 0) == 1  # ckpt-6 was saved before the eval: it runs again
        assert [r["kind"] for r in loop.read_metrics(str(tmp_path))] == ["train"]

    def test_a_finished_run_rerun_keeps_its_evals_and_rewrites_only_final(self, tmp_path):
        path = tmp_path / "metrics.jsonl"
        self._write(path, [{"kind": "train", "step": 12}, {"kind": "eval", "epoch": 2, "step": 12},
                           {"kind": "final", "step": 12}])
        assert loop.cut_metrics(str(tmp_path), 12, 2) == 1
        assert [r["kind"] for r in loop.read_metrics(str(tmp_path))] == ["train", "eval"]

    def test_a_damaged_line_stops_the_cut_and_a_whole_last_record_gets_its_newline(self, tmp_path):
        path = tmp_path / "metrics.jsonl"
        self._write(path, [{"kind": "train", "step": 2}], tail='garbage\n{"kind": "train", "step": 9}\n')
        assert loop.cut_metrics(str(tmp_path), 4, 0) == 1  # step 9 cut; the damaged line is not ours to judge
        assert path.read_text().endswith("garbage\n")
        self._write(path, [{"kind": "train", "step": 2}], tail='{"kind": "train", "step": 3}')
        assert loop.cut_metrics(str(tmp_path), 4, 0) == 0
        assert path.read_text().endswith('"step": 3}\n')

    def test_only_the_tail_is_read(self, tmp_path):
        path = tmp_path / "metrics.jsonl"
        line = json.dumps({"kind": "train", "step": 1, "pad": "x" * 200}) + "\n"
        with open(path, "w") as f:  # larger than read_metrics reads (MAX_METRICS_BYTES): still cut
            f.write(line * ((loop.MAX_METRICS_BYTES // len(line)) + 1000))
            f.write(json.dumps({"kind": "train", "step": 5}) + "\n")
        size = path.stat().st_size
        assert loop.cut_metrics(str(tmp_path), 1, 0) == 1
        assert path.stat().st_size == size - len(json.dumps({"kind": "train", "step": 5}) + "\n")

    def test_a_symlink_is_refused(self, tmp_path):
        from pf_keras import fileio

        outside = tmp_path / "outside.jsonl"
        outside.write_text('{"kind": "train", "step": 9}\n')
        (tmp_path / "run").mkdir()
        os.symlink(outside, tmp_path / "run" / "metrics.jsonl")
        with pytest.raises(fileio.WriteError, match=r"cannot update .*metrics.jsonl"):
            loop.cut_metrics(str(tmp_path / "run"), 1, 0)
        assert outside.read_text() == '{"kind": "train", "step": 9}\n'
