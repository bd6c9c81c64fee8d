"""Preemption: SIGTERM mid-epoch saves at the current step; the resumed run ends bit-identical."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from training import checkpoint, loop, recipes, train

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_worker.py")


def _start(tmp_path, name: str, spec: dict, **env_vars: str) -> subprocess.Popen:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    env.update(env_vars)
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

    def test_multi_worker_sigterm_to_one_worker_then_restart_is_bit_identical(self, shapes_dir, make_recipe, tmp_path,
                                                                              port_picker):
        """SIGTERM to the non-chief worker of a 2-process job: both workers save at that step and exit 143;
        both restarted with the same command resume there and end bit-identical to an uninterrupted
        2-worker job. Only the chief writes model_dir; worker 1's checkpoint copies are gone."""
        recipe = make_recipe(f"folder:{shapes_dir}", **{"data.eval_examples": 16})

        def job(name: str, model_dir: str, ports: list[int], **extra) -> list[subprocess.Popen]:
            cluster = {"worker": [f"localhost:{p}" for p in ports]}
            procs = []
            for index in range(2):
                spec = {"recipe": recipes.to_dict(recipe), "deterministic": True, "model_dir": model_dir,
                        "strategy": "multi_worker", "weights_out": str(tmp_path / f"{name}{index}.npz"),
                        **(extra if index == 1 else {})}
                worker_tmp = tmp_path / f"tmp{index}"  # worker 1's private checkpoint copies go here
                worker_tmp.mkdir(exist_ok=True)
                tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
                procs.append(_start(tmp_path, f"{name}{index}", spec, TF_CONFIG=json.dumps(tf_config),
                                    TMPDIR=str(worker_tmp)))
            return procs

        def finish(procs: list[subprocess.Popen], code: int) -> list[tuple[str, dict]]:
            results = []
            for p in procs:
                out, _ = p.communicate(timeout=240)
                assert p.returncode == code, out[-3000:]
                results.append((out, json.loads(out.split("SUMMARY ", 1)[1].splitlines()[0])))
            return results

        started: list[subprocess.Popen] = []
        try:
            reference = job("reference", str(tmp_path / "reference"), [port_picker(), port_picker()])
            started += reference
            marker = tmp_path / "paused"
            model_dir = str(tmp_path / "shared")
            ports = [port_picker(), port_picker()]
            first = job("first", model_dir, ports, pause_at_step=3, marker=str(marker))
            started += first
            deadline = time.time() + 180
            while not marker.exists():  # worker 1 waits at step 3; worker 0 waits for it in the next collective
                assert all(p.poll() is None for p in first), [p.communicate()[0][-3000:] for p in first]
                assert time.time() < deadline, "worker 1 never reached step 3"
                time.sleep(0.05)
            os.kill(first[1].pid, signal.SIGTERM)
            time.sleep(0.2)
            marker.unlink()
            (chief_out, chief), (_, worker) = finish(first, train.PREEMPTED_EXIT_CODE)
            assert [(s["status"], s["step"]) for s in (chief, worker)] == [("preempted", 3)] * 2
            assert "SIGTERM: saved a checkpoint at step 3" in chief_out
            assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-3")

            resumed = job("resumed", model_dir, ports)  # the same command again
            started += resumed
            (chief_out, chief), (_, worker) = finish(resumed, 0)
            assert "resumed from" in chief_out and "at step 3 (epoch 0, batch 3)" in chief_out
            assert [(s["status"], s["step"], s["first_loop_step"]) for s in (chief, worker)] == [
                ("completed", 12, 4)] * 2
            finish(reference, 0)
        finally:
            for p in started:
                if p.poll() is None:
                    p.kill()

        weights = []
        for name in ("reference0", "reference1", "resumed0", "resumed1"):
            with np.load(tmp_path / f"{name}.npz") as f:
                weights.append([f[key] for key in f.files])
        assert len(weights[0]) > 10
        for other in weights[1:]:
            assert len(other) == len(weights[0])
            for a, b in zip(weights[0], other, strict=True):
                np.testing.assert_array_equal(a, b)
        assert [r["step"] for r in loop.read_metrics(model_dir, "train")] == [3, 4, 6, 8, 11, 12]

        # Only the chief wrote model_dir: one TensorBoard file per chief process, one set of
        # checkpoint files; worker 1's private checkpoint copies (in its TMPDIR) were deleted.
        assert sorted(os.listdir(model_dir)) == ["checkpoints", "final.weights.h5", "metrics.jsonl", "model.json",
                                                 "recipe.json", "tb"]
        assert len(os.listdir(os.path.join(model_dir, "tb"))) == 2
        ckpts = sorted(os.listdir(os.path.join(model_dir, "checkpoints")))
        assert all(re.fullmatch(r"checkpoint|ckpt-\d+\.(index|data-00000-of-00001)", n) for n in ckpts), ckpts
        assert len(ckpts) == 1 + 2 * recipe.keep_checkpoints, ckpts
        leftovers = [n for i in range(2) for n in os.listdir(tmp_path / f"tmp{i}") if n.startswith("pf_keras")]
        assert leftovers == []


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
