"""Preemption: SIGTERM mid-epoch saves at the current step; the resumed run ends bit-identical."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from pf_keras import fileio
from pf_keras_training import checkpoint, loop, recipes, train
from pf_keras_training.callbacks import TrainCallback

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
        assert not os.path.exists(os.path.join(preempted_dir, "final"))

        # One process runs the uninterrupted reference, then the same command as the preempted one (the resume):
        # a fresh process for the reference's initial weights; the resume reads everything from the checkpoint.
        both = _start(tmp_path, "reference_then_resumed", {
            **base, "model_dir": str(tmp_path / "reference"), "weights_out": str(tmp_path / "reference.npz"),
            "then": {"model_dir": preempted_dir, "weights_out": str(tmp_path / "resumed.npz")}})
        out, _ = both.communicate(timeout=240)
        assert both.returncode == 0, out[-3000:]
        out = out.split("RUN 1\n", 1)[1]
        assert "resumed from" in out and "at step 3 (epoch 0, batch 3)" in out

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
        2-worker job. Only the chief writes model_dir; worker 1's checkpoint copies are gone.

        The uninterrupted job is also the check of plain multi-worker training (it was a separate 2-process
        run in loop_test): both workers complete, the loss falls, the workers end identical, the chief
        writes the final weights."""
        recipe = make_recipe(f"folder:{shapes_dir}", **{"data.eval_examples": 16})

        def job(name: str, model_dir: str, ports: list[int], then: str = "", **extra) -> list[subprocess.Popen]:
            cluster = {"worker": [f"localhost:{p}" for p in ports]}
            procs = []
            for index in range(2):
                spec = {"recipe": recipes.to_dict(recipe), "deterministic": True, "model_dir": model_dir,
                        "strategy": "multi_worker", "weights_out": str(tmp_path / f"{name}{index}.npz"),
                        **(extra if index == 1 else {})}
                if then:  # then the same command as the preempted job, in the same process (weights "resumed<i>")
                    spec["then"] = {"model_dir": then, "weights_out": str(tmp_path / f"resumed{index}.npz")}
                worker_tmp = tmp_path / f"tmp{index}"  # worker 1's private checkpoint copies go here
                worker_tmp.mkdir(exist_ok=True)
                tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
                procs.append(_start(tmp_path, f"{name}{index}", spec, TF_CONFIG=json.dumps(tf_config),
                                    TMPDIR=str(worker_tmp)))
            return procs

        def finish(procs: list[subprocess.Popen], code: int, runs: int = 1) -> list[list[tuple[str, dict]]]:
            """For each run of the job's processes: (its output, its summary) per process."""
            results: list[list[tuple[str, dict]]] = [[] for _ in range(runs)]
            for p in procs:
                out, _ = p.communicate(timeout=240)
                assert p.returncode == code, out[-3000:]
                for run, part in enumerate(out.split("RUN ")[1:]):
                    results[run].append((part, json.loads(part.split("SUMMARY ", 1)[1].splitlines()[0])))
            return results

        started: list[subprocess.Popen] = []
        try:
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
            [(chief_out, chief), (_, worker)] = finish(first, train.PREEMPTED_EXIT_CODE)[0]
            assert [(s["status"], s["step"]) for s in (chief, worker)] == [("preempted", 3)] * 2
            assert "SIGTERM: saved a checkpoint at step 3" in chief_out
            assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-3")

            # Restarted on the same cluster: the same two processes first train the uninterrupted reference job
            # (fresh processes: the reference's initial weights), then run the preempted job's command again.
            restarted = job("reference", str(tmp_path / "reference"), ports, then=model_dir)
            started += restarted
            reference, resumed = finish(restarted, 0, runs=2)
            (reference_out, reference_chief), (_, reference_worker) = reference
            (chief_out, chief), (_, worker) = resumed
            assert "resumed from" in chief_out and "at step 3 (epoch 0, batch 3)" in chief_out
            assert [(s["status"], s["step"], s["first_loop_step"]) for s in (chief, worker)] == [
                ("completed", 12, 4)] * 2
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

        # Plain multi-worker training (the uninterrupted job): both workers ran every step, the chief names the
        # cluster (loop.num_workers, public API), the loss fell, the chief wrote the final weights.
        assert [(s["status"], s["step"]) for s in (reference_chief, reference_worker)] == [("completed", 12)] * 2
        assert "Strategy: 2 replicas on 2 host(s)" in reference_out
        losses = [r["loss"] for r in loop.read_metrics(str(tmp_path / "reference"), "train")]
        assert len(losses) == 6 and np.mean(losses[-2:]) < np.mean(losses[:2]), losses
        assert os.path.exists(tmp_path / "reference" / "final" / "model.weights.h5")

        # Only the chief wrote model_dir: one TensorBoard file per chief process, one set of
        # checkpoint files; worker 1's private checkpoint copies (in its TMPDIR) were deleted.
        assert sorted(os.listdir(model_dir)) == [".lock", "checkpoints", "final", "metrics.jsonl", "recipe.json",
                                                 "settings.json", "tb"]
        assert len(os.listdir(os.path.join(model_dir, "tb"))) == 2
        ckpts = sorted(os.listdir(os.path.join(model_dir, "checkpoints")))
        assert all(re.fullmatch(r"checkpoint|ckpt-\d+\.(index|data-00000-of-00001)", n) for n in ckpts), ckpts
        assert len(ckpts) == 1 + 2 * recipe.keep_checkpoints, ckpts
        leftovers = [n for i in range(2) for n in os.listdir(tmp_path / f"tmp{i}") if n.startswith("pf_keras")]
        assert leftovers == []


class TestSigkill:
    def test_sigkill_after_an_eval_then_resume_records_every_step_and_eval_once(self, shapes_dir, make_recipe,
                                                                               tmp_path):
        # ckpt-12 is saved before epoch 2's eval; the kill lands after that eval's record and the next inner loop's
        # (step 15): both are written again by the resumed run, which must not leave them twice in metrics.jsonl.
        recipe = make_recipe(f"folder:{shapes_dir}", **{"data.eval_examples": 8, "schedule.epochs": 3})
        model_dir = str(tmp_path / "run")
        first = _start(tmp_path, "killed", {"recipe": recipes.to_dict(recipe), "model_dir": model_dir,
                                            "kill_at_step": 15})
        out, _ = first.communicate(timeout=240)
        assert first.returncode == -signal.SIGKILL, out[-3000:]
        assert [(e["epoch"], e["step"]) for e in loop.read_metrics(model_dir, "eval")] == [(1, 6), (2, 12)]
        assert loop.read_metrics(model_dir, "train")[-1]["step"] == 15
        assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-12")

        stale = os.path.join(model_dir, f".final{fileio.TEMP_MARK}k2")  # what a kill inside the final save leaves
        os.makedirs(stale)
        summary = train.run(recipe, model_dir, strategy=_one_device(), verbose=False)
        assert (summary["status"], summary["step"]) == ("completed", 18)
        assert not os.path.exists(stale)
        steps = [r["step"] for r in loop.read_metrics(model_dir, "train")]
        assert steps == sorted(set(steps)) and steps[-1] == 18 and 15 in steps
        assert [(e["epoch"], e["step"]) for e in loop.read_metrics(model_dir, "eval")] == [(1, 6), (2, 12), (3, 18)]
        assert [r["step"] for r in loop.read_metrics(model_dir, "final")] == [18]

        again = train.run(recipe, model_dir, strategy=_one_device(), verbose=False)  # a rerun of the finished run
        assert again["status"] == "completed"
        assert [r["step"] for r in loop.read_metrics(model_dir, "final")] == [18]
        assert len(loop.read_metrics(model_dir, "eval")) == 3


class TestPreemptionInProcess:
    def test_sigterm_at_an_epoch_end_evaluates_that_epoch_on_resume(self, shapes_dir, make_recipe, tmp_path):
        recipe = make_recipe(f"folder:{shapes_dir}", **{"data.eval_examples": 8})
        model_dir = str(tmp_path / "run")

        class SigtermAtStep6(TrainCallback):
            def on_loop_end(self, step, metrics):
                if step == 6:  # the last step of epoch 1, before its evaluation
                    os.kill(os.getpid(), signal.SIGTERM)

        first = train.run(recipe, model_dir, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"), verbose=False,
                          callbacks=[SigtermAtStep6()])
        assert (first["status"], first["step"]) == ("preempted", 6)
        assert loop.read_metrics(model_dir, "eval") == []
        second = train.run(recipe, model_dir, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"), verbose=False)
        assert second["status"] == "completed"
        assert [(e["epoch"], e["step"]) for e in loop.read_metrics(model_dir, "eval")] == [(1, 6), (2, 12)]


class TestCheckpointer:
    def test_is_chief_without_cluster(self):
        assert checkpoint.is_chief(tf.distribute.get_strategy())


# ---------------------------------------------------------------- damaged checkpoints, resume choice


def _one_device():
    return tf.distribute.OneDeviceStrategy("/cpu:0")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_dir, make_recipe):
    """(recipe, model_dir) of a tiny run stopped at step 8: intact ckpt-4, ckpt-6 (epoch end), ckpt-8, the pointer."""
    recipe = make_recipe(f"folder:{shapes_dir}", **{"data.eval_examples": 8})
    model_dir = str(tmp_path_factory.mktemp("trained") / "run")
    summary = train.run(recipe, model_dir, strategy=_one_device(), verbose=False, max_steps=8)
    assert summary["step"] == 8
    return recipe, model_dir


def _copy(trained, tmp_path) -> tuple[recipes.Recipe, str, str]:
    recipe, source = trained
    model_dir = str(tmp_path / "run")
    shutil.copytree(source, model_dir)
    return recipe, model_dir, os.path.join(model_dir, "checkpoints")


def _data_file(ckpts: str, step: int) -> str:
    return os.path.join(ckpts, f"ckpt-{step}.data-00000-of-00001")


def _resume(recipe, model_dir, capsys, **kwargs) -> tuple[dict, str, str]:
    summary = train.run(recipe, model_dir, strategy=_one_device(), verbose=True, **kwargs)
    out, err = capsys.readouterr()
    return summary, out, err


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _zero_fill(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(b"\0" * size)


class TestResumeChoice:
    @pytest.mark.parametrize("damage, reason", [
        (lambda c: os.remove(os.path.join(c, "ckpt-8.index")), "its .index file is missing"),
        (lambda c: _truncate(_data_file(c, 8)), "ckpt-8 ("),
        (lambda c: _zero_fill(_data_file(c, 8)), "ckpt-8 ("),
        (lambda c: os.remove(_data_file(c, 8)), "its .data file is missing"),
    ], ids=["index_deleted", "data_truncated", "data_zero_filled", "data_deleted"])
    def test_damaged_newest_falls_back_to_the_newest_intact(self, trained, tmp_path, capsys, damage, reason):
        recipe, model_dir, ckpts = _copy(trained, tmp_path)
        damage(ckpts)
        summary, out, err = _resume(recipe, model_dir, capsys, max_steps=8)
        note = [line for line in err.splitlines() if line.startswith("[train]")]
        assert len(note) == 1 and "ckpt-8" in note[0] and reason in note[0], err
        assert note[0].endswith("resuming from ckpt-6, the newest intact one")
        assert f"resumed from {os.path.join(ckpts, 'ckpt-6')} at step 6" in out
        assert summary["step"] == 8
        # The damaged files were set aside; the intact ones were kept, ckpt-8 written anew and intact.
        assert os.listdir(os.path.join(ckpts, "damaged"))
        assert sorted(checkpoint.list_checkpoints(ckpts)) == [4, 6, 8]
        assert checkpoint.verify(os.path.join(ckpts, "ckpt-6")) is None
        assert checkpoint.verify(os.path.join(ckpts, "ckpt-8")) is None
        assert tf.train.latest_checkpoint(ckpts).endswith("ckpt-8")

    @pytest.mark.parametrize("pointer, problem", [
        (None, "the checkpoint pointer file is missing"),
        (b"\x00\xff garbage", "the checkpoint pointer file is garbled"),
        (b'model_checkpoint_path: "ckpt-99"\n', "the checkpoint pointer names ckpt-99, which is missing"),
    ], ids=["missing", "garbled", "names_missing"])
    def test_bad_pointer_uses_the_newest_intact_in_the_folder(self, trained, tmp_path, capsys, pointer, problem):
        recipe, model_dir, ckpts = _copy(trained, tmp_path)
        os.remove(os.path.join(ckpts, "checkpoint"))
        if pointer is not None:
            with open(os.path.join(ckpts, "checkpoint"), "wb") as f:
                f.write(pointer)
        # max_steps=8: restored at step 8, nothing left to train (training on after a fallback resume is checked
        # by the damaged-checkpoint tests above)
        summary, out, err = _resume(recipe, model_dir, capsys, max_steps=8)
        assert f"[train] {problem}; resuming from ckpt-8, the newest intact one" in err
        assert "at step 8 (epoch 1, batch 2)" in out and (summary["status"], summary["step"]) == ("stopped", 8)
        assert not os.path.exists(os.path.join(ckpts, "damaged"))  # nothing was damaged: no folder

    def test_no_intact_checkpoint_is_an_error_unless_restart_is_asked(self, trained, tmp_path, capsys):
        recipe, model_dir, ckpts = _copy(trained, tmp_path)
        for step in (4, 6, 8):
            _zero_fill(_data_file(ckpts, step))
        with pytest.raises(ValueError, match=r"none is intact: ckpt-8 \(.*\); ckpt-6 \(.*\); ckpt-4 \(.*"
                                             r"--restart_from_scratch"):
            train.run(recipe, model_dir, strategy=_one_device(), verbose=False)
        assert sorted(checkpoint.list_checkpoints(ckpts)) == [4, 6, 8]  # nothing deleted or moved
        summary, out, err = _resume(recipe, model_dir, capsys, max_steps=4, restart_from_scratch=True)
        assert "restart_from_scratch: moved 3 old checkpoint(s)" in err and "resumed from" not in out
        assert summary["step"] == 4
        assert sorted(checkpoint.list_checkpoints(ckpts)) == [4]
        assert len(os.listdir(os.path.join(ckpts, "before_restart"))) == 6

    def test_a_finished_model_without_checkpoints_is_not_left_beside_a_new_run(self, trained, tmp_path, capsys):
        recipe, model_dir, ckpts = _copy(trained, tmp_path)
        summary, _, _ = _resume(recipe, model_dir, capsys)  # finish the run: final/ exists
        assert summary["status"] == "completed" and os.path.isdir(os.path.join(model_dir, "final"))
        finished = loop.read_metrics(model_dir)
        shutil.rmtree(ckpts)  # e.g. deleted to start again
        with pytest.raises(ValueError, match=r"run holds a finished run's model \(final\) but no checkpoint to "
                                             r"resume.*--restart_from_scratch"):
            train.run(recipe, model_dir, strategy=_one_device(), verbose=False, max_steps=2)
        assert os.path.isdir(os.path.join(model_dir, "final")) and loop.read_metrics(model_dir) == finished

        summary, _, err = _resume(recipe, model_dir, capsys, max_steps=4, restart_from_scratch=True)
        aside = os.path.join(model_dir, "before_restart")
        assert f"restart_from_scratch: moved final, metrics.jsonl to {aside}" in err
        assert (summary["status"], summary["step"]) == ("stopped", 4)
        assert not os.path.exists(os.path.join(model_dir, "final"))  # the new run is not taken for finished
        assert sorted(os.listdir(aside)) == ["final", "metrics.jsonl"]
        assert [r["step"] for r in loop.read_metrics(model_dir)] == [3, 4]  # only the new run's records
        from pf_keras.weights.preset import model_folder

        with pytest.raises(ValueError, match="neither a preset folder nor a finished training run"):
            model_folder(model_dir)  # what evaluate and export resolve the run folder with

    def test_restart_of_a_finished_run_sets_its_model_and_records_aside(self, trained, tmp_path, capsys):
        recipe, model_dir, ckpts = _copy(trained, tmp_path)
        _resume(recipe, model_dir, capsys)
        summary, _, err = _resume(recipe, model_dir, capsys, max_steps=3, restart_from_scratch=True)
        assert "restart_from_scratch: moved 3 old checkpoint(s) to" in err
        assert f"and final, metrics.jsonl to {os.path.join(model_dir, 'before_restart')}" in err
        assert summary["step"] == 3 and not os.path.exists(os.path.join(model_dir, "final"))
        assert [r["step"] for r in loop.read_metrics(model_dir)] == [3]

    def test_rotation_never_deletes_an_intact_checkpoint_while_the_newest_is_damaged(self, trained, tmp_path, capsys):
        recipe, model_dir, ckpts = _copy(trained, tmp_path)
        os.remove(os.path.join(ckpts, "checkpoint"))  # the old failure: no pointer -> step 0 -> rotation
        _truncate(_data_file(ckpts, 8))
        os.makedirs(os.path.join(ckpts, "ckpt-12_temp"))  # our own leftovers of an interrupted save
        open(os.path.join(ckpts, "ckpt-12_temp", "part-00000-of-00001.data-00000-of-00001"), "wb").close()
        open(os.path.join(ckpts, "checkpoint.tmp3f2a9c"), "wb").close()
        open(os.path.join(ckpts, "notes.txt"), "w").close()  # not ours: kept
        checker = checkpoint.Checkpointer(model_dir, _one_device(), keep=3, step=tf.Variable(0, dtype=tf.int64))
        path, note = checker.choose()
        assert path.endswith("ckpt-6") and "ckpt-8 (" in note
        assert sorted(os.listdir(ckpts)) == ["checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index",
                                             "ckpt-6.data-00000-of-00001", "ckpt-6.index", "damaged", "notes.txt"]
        checker.save(7)  # keep=3: ckpt-4, ckpt-6 and ckpt-7
        assert sorted(checkpoint.list_checkpoints(ckpts)) == [4, 6, 7]
        checker.save(9)  # only now, with three newer intact ones, ckpt-4 goes
        assert sorted(checkpoint.list_checkpoints(ckpts)) == [6, 7, 9]
        assert checkpoint.read_pointer(ckpts) == (9, None)

    def test_mixed_precision_change_on_resume_is_refused_like_a_recipe_change(self, trained, tmp_path):
        recipe, model_dir, _ = _copy(trained, tmp_path)
        with pytest.raises(ValueError, match=r"other settings.*\['mixed_precision: float32 -> mixed_float16'\]"):
            train.run(recipe, model_dir, strategy=_one_device(), verbose=False, mixed_precision="mixed_float16")

    def test_a_run_without_recorded_settings_still_fails_in_one_line(self, trained, tmp_path):
        recipe, model_dir, _ = _copy(trained, tmp_path)
        os.remove(os.path.join(model_dir, "settings.json"))  # a run from before settings.json existed
        with pytest.raises(ValueError, match=r"does not fit this run .*Received: checkpoint="):
            train.run(recipe, model_dir, strategy=_one_device(), verbose=False, mixed_precision="mixed_float16")


class TestCheckpointWrites:
    def test_full_disk_during_a_save_is_one_line_and_keeps_the_previous(self, small_disk):
        from conftest import fill_disk

        model_dir = str(small_disk / "run")
        step = tf.Variable(1, dtype=tf.int64)
        weights = tf.Variable(tf.zeros([256]))
        checker = checkpoint.Checkpointer(model_dir, _one_device(), step=step, weights=weights)
        checker.save(1)
        ckpts = os.path.join(model_dir, "checkpoints")
        before = {n: open(os.path.join(ckpts, n), "rb").read() for n in os.listdir(ckpts)}
        weights.assign(tf.ones([256]))
        big = checkpoint.Checkpointer(model_dir, _one_device(), step=step, weights=weights,
                                      more=tf.Variable(tf.zeros([64 * 1024])))
        big._kept = [1]
        fill_disk(str(small_disk), leave=16 * 1024)
        with pytest.raises(fileio.WriteError, match=r"cannot write checkpoint .*ckpt-2 \(.*\); the previous "
                                                    r"checkpoint .*ckpt-1 is intact$") as error:
            big.save(2)
        assert "\n" not in str(error.value)
        after = {n: open(os.path.join(ckpts, n), "rb").read() for n in os.listdir(ckpts)}
        assert after == before  # no ckpt-2 files, no temporaries, the pointer unchanged
        assert checkpoint.verify(os.path.join(ckpts, "ckpt-1")) is None


class TestMultiWorkerChoice:
    def test_workers_agree_on_the_fallback_checkpoint(self, trained, tmp_path, port_picker):
        """The chief verifies the folder and broadcasts its choice: both workers resume from ckpt-6 (max_steps=6:
        restored there, nothing to train; training on after a fallback resume is checked in TestResumeChoice)."""
        recipe, model_dir, ckpts = _copy(trained, tmp_path)
        os.remove(os.path.join(ckpts, "ckpt-8.index"))
        os.remove(os.path.join(ckpts, "checkpoint"))
        cluster = {"worker": [f"localhost:{port_picker()}", f"localhost:{port_picker()}"]}
        procs = []
        try:
            for index in range(2):
                worker_tmp = tmp_path / f"tmp{index}"
                worker_tmp.mkdir()
                spec = {"recipe": recipes.to_dict(recipe), "model_dir": model_dir, "strategy": "multi_worker",
                        "max_steps": 6}
                tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
                procs.append(_start(tmp_path, f"w{index}", spec, TF_CONFIG=json.dumps(tf_config),
                                    TMPDIR=str(worker_tmp)))
            outs = []
            for p in procs:
                out, _ = p.communicate(timeout=240)
                assert p.returncode == 0, out[-3000:]
                outs.append((out, json.loads(out.split("SUMMARY ", 1)[1].splitlines()[0])))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        (chief_out, chief), (worker_out, worker) = outs
        assert [(s["status"], s["step"]) for s in (chief, worker)] == [("stopped", 6)] * 2
        assert ("[train] the checkpoint pointer file is missing; ckpt-8 (its .index file is missing) (moved to "
                in chief_out) and "resuming from ckpt-6, the newest intact one" in chief_out
        assert "[train]" not in worker_out  # one line, from the chief only
        assert sorted(checkpoint.list_checkpoints(ckpts)) == [4, 6]  # ckpt-8 set aside, nothing trained after


class TestStalledInput:
    def test_sigterm_while_no_batch_ever_arrives_exits_143_promptly(self, shapes_dir, make_recipe, tmp_path):
        recipe = make_recipe(f"folder:{shapes_dir}", **{"data.eval_examples": 8})
        marker = tmp_path / "stalled"
        spec = {"recipe": recipes.to_dict(recipe), "model_dir": str(tmp_path / "run"), "stall_marker": str(marker),
                "sigterm_stall_s": 2}
        proc = _start(tmp_path, "stalled", spec)
        try:
            deadline = time.time() + 120
            while not marker.exists():
                assert proc.poll() is None, proc.communicate()[0][-3000:]
                assert time.time() < deadline, "the input pipeline never started"
                time.sleep(0.05)
            time.sleep(1.0)  # the train loop now waits inside the tf.function for a batch that never comes
            start = time.time()
            os.kill(proc.pid, signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == train.PREEMPTED_EXIT_CODE, out[-3000:]
        assert time.time() - start < 20
        assert "train.py: SIGTERM: no step completed in 2 s (the input pipeline is stuck?); exiting without a " \
               "checkpoint, the last one is intact." in out
