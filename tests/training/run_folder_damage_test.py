"""A damaged or hostile run folder: a rerun recovers as documented or stops with one line and status 2.

FIFOs, folders, symlinks and hard links in place of a run's files (``train.py``'s model_dir, a study's
output folder), damaged ``settings.json``, a huge cell result. Never a hang, a traceback, a silently
wrong result or a change to a file outside the folder. A FIFO something still blocks on after
:data:`RELEASE_AFTER_S` seconds (code that opens it plainly) is opened from a thread, again every
second, so such a hang ends as a failed test instead of a hung suite. Only a FIFO with a process at
its other end counts as a block: code that is merely slow (a loaded machine) fails nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc

import pytest

from pf_keras_training import checkpoint, loop, study, train

RELEASE_AFTER_S = 20.0
ERROR = "pf-keras-train: error: "


def _release_peer(path) -> bool:
    """Whether a process has the FIFO ``path`` open or waits in ``open()`` for its other end; opening that end
    releases it. Linux counts a waiting opener as a reader or writer (``fs/pipe.c``, ``fifo_open``): a
    non-blocking open for writing succeeds only with a reader, and a non-blocking read finds no end of file
    only with a writer."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader
        pass
    else:
        time.sleep(0.5)  # the reader's open returns; closing then gives it an end of file
        os.close(fd)
        return True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a writer waiting in open() returns
    except OSError:
        return False
    try:
        return os.read(fd, 1) != b""  # data, or BlockingIOError below: a writer holds the other end
    except BlockingIOError:
        return True
    finally:
        time.sleep(0.5)
        os.close(fd)


@contextlib.contextmanager
def _fifo(path):
    """A FIFO at ``path`` for the block; fails the test if anything blocked on it (see the module docstring)."""
    os.mkfifo(path)
    stop, released = threading.Event(), []

    def release() -> None:
        if stop.wait(RELEASE_AFTER_S):
            return
        while not stop.wait(1.0):
            if _release_peer(path):
                released.append(path)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    assert not released, f"blocked on the FIFO {path}"


def _argv(shapes_dir: str, model_dir: str, *extra: str) -> list[str]:
    """A tiny run: 2 epochs of 4 steps, checkpoints at steps 3, 4 (epoch end), 6, 8."""
    return ["--recipe", "demo", "--model", "resnet50_max", "--model_kwargs", "depths=[1,1,1,1],width_mult=0.125",
            "--dataset", f"folder:{shapes_dir}", "--batch_size", "16", "--epochs", "2", "--steps_per_epoch", "4",
            "--steps_per_loop", "2", "--set", "data.eval_examples=8", "--set", "checkpoint_every_steps=3", "--json",
            "--model_dir", model_dir, *extra]


def _train(capsys, shapes_dir: str, model_dir: str, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = train.main(_argv(shapes_dir, model_dir, *extra))
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(ERROR)]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0][len(ERROR):]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_dir):
    """A run folder stopped at step 6: intact ckpt-3, ckpt-4 and ckpt-6, the pointer, recipe.json, settings.json."""
    model_dir = str(tmp_path_factory.mktemp("trained") / "run")
    assert train.main(_argv(shapes_dir, model_dir, "--max_steps", "6")) == 0
    assert sorted(checkpoint.list_checkpoints(os.path.join(model_dir, "checkpoints"))) == [3, 4, 6]
    return model_dir


@pytest.fixture
def run_dir(trained, tmp_path) -> str:
    """A copy of :func:`trained` to damage."""
    model_dir = str(tmp_path / "run")
    shutil.copytree(trained, model_dir)
    return model_dir


def _outside(tmp_path) -> str:
    path = tmp_path / "outside.txt"
    path.write_text("not the run's\n")
    return str(path)



@pytest.mark.parametrize("mode", ["rb", "wb"])
def test_the_fifo_guard_releases_a_blocked_open_and_fails_and_lets_slow_code_pass(tmp_path, monkeypatch, mode):
    monkeypatch.setattr(sys.modules[__name__], "RELEASE_AFTER_S", 0.2)
    path = str(tmp_path / "pipe")
    with pytest.raises(AssertionError, match="blocked on the FIFO"), _fifo(path):
        with open(path, mode) as f:  # blocks until the guard opens the other end
            f.read() if mode == "rb" else f.write(b"x")
    os.remove(path)
    with _fifo(path):
        time.sleep(2.0)  # slow, but nothing at the other end

class TestRunFiles:
    @pytest.mark.parametrize("name, what", [("recipe.json", "recipe"), ("settings.json", "settings")])
    def test_a_fifo_as_recipe_or_settings_is_one_line(self, shapes_dir, run_dir, capsys, name, what):
        path = os.path.join(run_dir, name)
        os.remove(path)
        with _fifo(path):
            code, _, err = _train(capsys, shapes_dir, run_dir, "--max_steps", "6")
        assert _error_line(code, err) == (
            f"{path} (the run's {what}) cannot be read (not a regular file (a FIFO)); restore it or use a new "
            f"model_dir. Received: model_dir={run_dir!r}")

    def test_a_folder_as_recipe_json_is_one_line_said_once(self, shapes_dir, run_dir, capsys):
        path = os.path.join(run_dir, "recipe.json")
        os.remove(path)
        os.mkdir(path)
        code, _, err = _train(capsys, shapes_dir, run_dir, "--max_steps", "6")
        line = _error_line(code, err)
        assert line.startswith(f"{path} (the run's recipe) cannot be read (not a regular file (a folder))")
        assert line.count("restore it or use a new model_dir") == 1 and line.count("Received:") == 1

    @pytest.mark.parametrize("content, problem", [
        ("{}", "it holds no mixed_precision, not one of ['float32', 'mixed_float16', 'mixed_bfloat16']"),
        ("[]", "not a JSON object but list"),
        ('{"mixed_precision": 16}', "it holds mixed_precision=16, not one of"),
        ('{"mixed_precision": "float64"}', "it holds mixed_precision='float64', not one of"),
    ], ids=["empty", "list", "int", "unknown"])
    def test_a_damaged_settings_json_is_one_line_and_the_precision_cannot_change(self, shapes_dir, run_dir, capsys,
                                                                                 content, problem):
        path = os.path.join(run_dir, "settings.json")
        with open(path, "w") as f:
            f.write(content)
        code, _, err = _train(capsys, shapes_dir, run_dir, "--max_steps", "6", "--mixed_precision", "mixed_bfloat16")
        line = _error_line(code, err)
        assert line.startswith(f"{path} (the run's settings) is damaged: {problem}"), line
        assert line.endswith(f"; restore it or use a new model_dir. Received: model_dir={run_dir!r}")

    @pytest.mark.parametrize("kind", ["fifo", "symlink", "hard_link"])
    def test_metrics_jsonl_not_a_plain_file_of_the_run_is_one_line_before_training(self, shapes_dir, run_dir,
                                                                                  tmp_path, capsys, kind):
        path = os.path.join(run_dir, "metrics.jsonl")
        os.remove(path)
        outside = _outside(tmp_path)
        if kind == "fifo":
            with _fifo(path):
                code, _, err = _train(capsys, shapes_dir, run_dir, "--max_steps", "7")
        else:
            (os.symlink if kind == "symlink" else os.link)(outside, path)
            code, _, err = _train(capsys, shapes_dir, run_dir, "--max_steps", "7")
        what = {"fifo": "a FIFO or a device", "symlink": "a symbolic link", "hard_link": "a file with 2 hard links"}
        assert _error_line(code, err) == (f"cannot append to {path} ({what[kind]}); it must be a regular file of "
                                          f"this run alone: replace it by a copy or remove it")
        with open(outside) as f:
            assert f.read() == "not the run's\n"
        assert sorted(checkpoint.list_checkpoints(os.path.join(run_dir, "checkpoints"))) == [3, 4, 6]  # no step ran

    def test_read_metrics_never_blocks_and_bounds_its_lines(self, tmp_path):
        path = str(tmp_path / "metrics.jsonl")
        with _fifo(path), pytest.raises(ValueError, match=r"metrics.jsonl cannot be read \(not a regular file "
                                                          r"\(a FIFO\)\)"):
            loop.read_metrics(str(tmp_path))
        os.remove(path)
        with open(path, "w") as f:
            f.write('{"step": 1}\n' + "[" * (loop.MAX_METRICS_LINE + 1) + "\n")
        with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is longer than 1048576 bytes"):
            loop.read_metrics(str(tmp_path))

    @pytest.mark.parametrize("kind", ["symlink", "hard_link", "fifo", "folder"])
    def test_a_lock_that_is_not_a_plain_file_of_the_run_is_one_line_and_nothing_changes(self, shapes_dir, tmp_path,
                                                                                       capsys, kind):
        model_dir = str(tmp_path / "fresh")
        os.mkdir(model_dir)
        lock = os.path.join(model_dir, ".lock")
        outside = _outside(tmp_path)
        what = {"symlink": "a symbolic link", "hard_link": "a file with 2 hard links",
                "fifo": "not a regular file (a FIFO)", "folder": "a folder"}[kind]
        if kind == "fifo":
            os.mkfifo(lock)
        elif kind == "folder":
            os.mkdir(lock)
        else:
            (os.symlink if kind == "symlink" else os.link)(outside, lock)
        code, _, err = _train(capsys, shapes_dir, model_dir, "--max_steps", "1")
        assert _error_line(code, err) == (
            f"{lock} cannot be used as the lock file ({what}); remove it (the next run creates a regular file). "
            f"Received: model_dir={model_dir!r}")
        with open(outside) as f:
            assert f.read() == "not the run's\n"
        assert sorted(os.listdir(model_dir)) == [".lock"]

    @pytest.mark.parametrize("name", ["checkpoints", "tb"])
    def test_a_file_where_the_run_writes_a_folder_is_one_line_before_training(self, shapes_dir, tmp_path, capsys,
                                                                              name):
        model_dir = str(tmp_path / "fresh")
        os.mkdir(model_dir)
        path = os.path.join(model_dir, name)
        open(path, "w").close()
        code, _, err = _train(capsys, shapes_dir, model_dir, "--max_steps", "4")
        assert _error_line(code, err) == (f"{path} is not a folder; remove or rename it, or use a new model_dir. "
                                          f"Received: model_dir={model_dir!r}")
        assert not os.path.exists(os.path.join(model_dir, "metrics.jsonl"))  # nothing trained

    def test_a_rerun_of_a_finished_run_reports_its_final_evaluation(self, shapes_dir, run_dir, capsys):
        code, out, _ = _train(capsys, shapes_dir, run_dir)
        first = json.loads(out.splitlines()[-1])
        assert code == 0 and first["status"] == "completed" and first["val_top1"] is not None
        shutil.rmtree(os.path.join(run_dir, "final"))  # as if killed after the last checkpoint, before final/
        evals = loop.read_metrics(run_dir, "eval")
        code, out, _ = _train(capsys, shapes_dir, run_dir)
        assert loop.read_metrics(run_dir, "eval") == evals  # repeated for the summary, not recorded twice
        again = json.loads(out.splitlines()[-1])
        assert code == 0 and (again["status"], again["step"]) == ("completed", 8)
        assert (again["val_top1"], again["val_top5"]) == (first["val_top1"], first["val_top5"])
        assert again["loss"] is None and again["images_per_sec"] is None  # no training step in this call
        assert os.path.isdir(os.path.join(run_dir, "final"))


class TestCheckpointFolder:
    @pytest.mark.parametrize("kind", ["fifo", "folder"])
    def test_a_pointer_that_is_not_a_regular_file_is_set_aside_as_garbled(self, shapes_dir, run_dir, capsys, kind):
        ckpts = os.path.join(run_dir, "checkpoints")
        pointer = os.path.join(ckpts, "checkpoint")
        os.remove(pointer)
        with _fifo(pointer) if kind == "fifo" else contextlib.nullcontext():
            if kind == "folder":
                os.mkdir(pointer)
            code, out, err = _train(capsys, shapes_dir, run_dir, "--max_steps", "6")
        assert code == 0, err[-3000:]
        what = "a FIFO" if kind == "fifo" else "a folder"
        assert (f"[train] the checkpoint pointer file cannot be read (not a regular file ({what})) (moved to "
                f"{os.path.join(ckpts, 'damaged')}); resuming from ckpt-6, the newest intact one") in err
        assert json.loads(out.splitlines()[-1])["step"] == 6
        assert checkpoint.read_pointer(ckpts) == (6, None)
        assert os.path.lexists(os.path.join(ckpts, "damaged", "checkpoint"))

    def test_a_data_shard_that_is_a_fifo_is_damaged_and_the_previous_checkpoint_used(self, shapes_dir, run_dir):
        ckpts = os.path.join(run_dir, "checkpoints")
        shard = os.path.join(ckpts, "ckpt-6.data-00000-of-00001")
        os.remove(shard)
        main = "import sys; from pf_keras_training import train; sys.exit(train.main(sys.argv[1:]))"
        with _fifo(shard):  # a process: TensorFlow blocks on a FIFO holding the GIL, which would stop _fifo's thread
            done = subprocess.run([sys.executable, "-c", main, *_argv(shapes_dir, run_dir, "--max_steps", "6")],
                                  env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""),
                                  capture_output=True, text=True, timeout=300)
        code, out, err = done.returncode, done.stdout, done.stderr
        assert code == 0, err[-3000:]
        note = [line for line in err.splitlines() if line.startswith("[train]")]
        assert len(note) == 1 and note[0].startswith(
            "[train] ckpt-6 (its .data-00000-of-00001 file cannot be read (not a regular file (a FIFO)))"), err
        assert note[0].endswith("resuming from ckpt-4, the newest intact one")
        assert json.loads(out.splitlines()[-1])["step"] == 6  # steps 5 and 6 trained again
        assert os.path.lexists(os.path.join(ckpts, "damaged", "ckpt-6.data-00000-of-00001"))
        assert checkpoint.verify(os.path.join(ckpts, "ckpt-6")) is None


class TestStudyFolder:
    def _base(self, shapes_dir: str):
        return study.study_recipe(dataset=f"folder:{shapes_dir}", image_size=32, epochs=1, batch_size=16,
                                  depths=(1, 1, 1, 1), width_mult=0.125,
                                  overrides={"schedule.steps_per_epoch": 2, "schedule.warmup_epochs": 0,
                                             "data.eval_examples": 8})

    def test_a_symlink_as_the_study_lock_is_refused_and_its_target_kept(self, shapes_dir, tmp_path):
        out = tmp_path / "study"
        out.mkdir()
        outside = _outside(tmp_path)
        os.symlink(outside, out / ".lock")
        with pytest.raises(ValueError, match=r"\.lock cannot be used as the lock file \(a symbolic link\)"):
            study.run_study([study.Cell("max", "max")], str(out), self._base(shapes_dir), tflite=False, verbose=False)
        with open(outside) as f:
            assert f.read() == "not the run's\n"
        assert sorted(os.listdir(out)) == [".lock"]

    def test_damaged_cell_files_are_measured_again_without_blocking_or_reading_them_whole(self, shapes_dir, tmp_path):
        out = str(tmp_path / "study")
        cells, base = [study.Cell("max", "max")], self._base(shapes_dir)
        first = study.run_study(cells, out, base, tflite=False, verbose=False)["results"][0]
        cell_dir = os.path.join(out, "cells", "max")
        result, speed = os.path.join(cell_dir, "result.json"), os.path.join(cell_dir, "speed.json")
        os.remove(result)
        os.remove(speed)
        with _fifo(result), _fifo(speed):
            again = study.run_study(cells, out, base, tflite=False, verbose=False)
            recorder = study._SpeedRecorder(speed)  # no step ran again, so the FIFO is still there
            assert recorder.speeds == []
            recorder.on_loop_end(1, {"images_per_sec": 10.0})
        assert again["trained"] == ["max"] and again["results"][0]["params"] == first["params"]
        assert os.path.isfile(result) and study._read_json(result)["val_top1"] == first["val_top1"]
        assert study._read_json(speed) == {"images_per_sec": [10.0]}
        # A 1 GB (sparse) result.json is damaged too, and is not read whole.
        with open(result, "r+b") as f:
            f.truncate(1 << 30)
        tracemalloc.start()
        try:
            assert study._read_json(result) is None
            assert tracemalloc.get_traced_memory()[1] < 1 << 20
        finally:
            tracemalloc.stop()
        assert study.run_study(cells, out, base, tflite=False, verbose=False)["trained"] == ["max"]
        assert os.path.getsize(result) < 1 << 16
        # A folder there could never be replaced by the new result: one line before anything runs.
        os.remove(result)
        os.mkdir(result)
        with pytest.raises(ValueError, match=r"result.json is a folder; remove it"):
            study.run_study(cells, out, base, tflite=False, verbose=False)
