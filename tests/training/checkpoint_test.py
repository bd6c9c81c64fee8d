"""Preemption: SIGTERM mid-epoch saves at the current step; the resumed run ends bit-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from training import checkpoint, loop, recipes, train

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_worker.py")


def _start(tmp_path, name: str, spec: dict) -> subprocess.Popen:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return subprocess.Popen([sys.executable, WORKER, str(path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


class TestPreemption:
    def test_sigterm_mid_epoch_then_resume_is_bit_identical(self, shapes_dir, make_recipe, tmp_path):
        recipe = make_recipe(f"folder:{shapes_dir}", **{
            "steps_per_loop": 1, "data.color_jitter": 0.4, "data.randaugment_magnitude": 9, "data.mixup_alpha": 0.8,
            "data.cutmix_alpha": 1.0, "data.random_erasing": 0.25, "data.eval_examples": 16,
            "optim.label_smoothing": 0.1, "model.ema_decay": 0.9})
        base = {"recipe": recipes.to_dict(recipe), "deterministic": True}
        reference = _start(tmp_path, "reference", {**base, "model_dir": str(tmp_path / "reference"),
                                                   "weights_out": str(tmp_path / "reference.npz")})
        marker = tmp_path / "paused"
        preempted_dir = str(tmp_path / "preempted")
        first = _start(tmp_path, "first", {**base, "model_dir": preempted_dir, "pause_at_step": 3,
                                           "marker": str(marker)})
        deadline = time.time() + 180
        while not marker.exists():
            assert first.poll() is None, first.communicate()[0][-3000:]
            assert time.time() < deadline, "the run never reached step 3"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGTERM)
        time.sleep(0.2)
        marker.unlink()
        out, _ = first.communicate(timeout=120)
        assert first.returncode == train.PREEMPTED_EXIT_CODE, out[-3000:]
        assert "SIGTERM: saved a checkpoint at step 3" in out
        assert tf.train.latest_checkpoint(os.path.join(preempted_dir, "checkpoints")).endswith("ckpt-3")
        assert not os.path.exists(os.path.join(preempted_dir, "final.weights.h5"))

        resumed = _start(tmp_path, "resumed", {**base, "model_dir": preempted_dir,
                                               "weights_out": str(tmp_path / "resumed.npz")})
        out, _ = resumed.communicate(timeout=240)
        assert resumed.returncode == 0, out[-3000:]
        assert "resumed from" in out and "at step 3 (epoch 0, batch 3)" in out
        out, _ = reference.communicate(timeout=240)
        assert reference.returncode == 0, out[-3000:]

        with np.load(tmp_path / "reference.npz") as a, np.load(tmp_path / "resumed.npz") as b:
            assert a.files == b.files
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])
        steps = [r["step"] for r in loop.read_metrics(preempted_dir, "train")]
        assert steps == list(range(1, 13))  # every step once, across the two processes


class TestPreemptionInProcess:
    def test_sigterm_at_an_epoch_end_evaluates_that_epoch_on_resume(self, shapes_dir, make_recipe, tmp_path):
        recipe = make_recipe(f"folder:{shapes_dir}", **{"data.eval_examples": 8})
        model_dir = str(tmp_path / "run")

        def hook(metrics):
            if metrics["step"] == 6:  # the last step of epoch 1, before its evaluation
                os.kill(os.getpid(), signal.SIGTERM)

        first = train.run(recipe, model_dir, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"), verbose=False,
                          loop_end_hook=hook)
        assert (first["status"], first["step"]) == ("preempted", 6)
        assert loop.read_metrics(model_dir, "eval") == []
        second = train.run(recipe, model_dir, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"), verbose=False)
        assert second["status"] == "completed"
        assert [(e["epoch"], e["step"]) for e in loop.read_metrics(model_dir, "eval")] == [(1, 6), (2, 12)]


class TestCheckpointer:
    def test_is_chief_without_cluster(self):
        assert checkpoint.is_chief(tf.distribute.get_strategy())
