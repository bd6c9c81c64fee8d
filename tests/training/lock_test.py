"""One run per model_dir: the advisory lock, with real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from pf_keras_training import lock, recipes, train

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_worker.py")


def _env() -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env


class TestRunLock:
    def test_second_lock_in_one_process_is_refused(self, tmp_path):
        with lock.RunLock(str(tmp_path)):
            with pytest.raises(ValueError, match=rf"in use by another run \(PID {os.getpid()} on "):
                lock.RunLock(str(tmp_path))
        lock.RunLock(str(tmp_path)).release()  # released: free again

    def test_a_second_run_exits_2_naming_the_holder_and_a_killed_holder_leaves_no_block(self, shapes_dir,
                                                                                       make_recipe, tmp_path, capsys):
        recipe = make_recipe(f"folder:{shapes_dir}", **{"data.eval_examples": 8, "schedule.epochs": 1})
        model_dir = str(tmp_path / "run")
        marker = tmp_path / "paused"
        spec = tmp_path / "holder.json"
        spec.write_text(json.dumps({"recipe": recipes.to_dict(recipe), "model_dir": model_dir, "pause_at_step": 3,
                                    "marker": str(marker)}))
        holder = subprocess.Popen([sys.executable, WORKER, str(spec)], env=_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 120
            while not marker.exists():  # the holder trains, and waits at step 3 holding the lock
                assert holder.poll() is None, holder.communicate()[0][-3000:]
                assert time.time() < deadline
                time.sleep(0.05)
            # The second run is the command's main() in this process: the lock is held by another process either way.
            capsys.readouterr()
            code = train.main(["--recipe", "demo", "--model_kwargs", "depths=[1,1,1,1],width_mult=0.125", "--dataset",
                               f"folder:{shapes_dir}", "--model_dir", model_dir])
            stderr = capsys.readouterr().err
            assert code == 2, stderr[-3000:]
            assert stderr.splitlines()[-1] == (
                f"pf-keras-train: error: {model_dir} is in use by another run (PID {holder.pid} on "
                f"{socket.gethostname()}); "
                f"one run per model_dir. Wait for it to end, stop it, or use another --model_dir. "
                f"Received: model_dir={model_dir!r}")
            assert "Traceback" not in stderr
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
        finally:
            if holder.poll() is None:
                holder.kill()
        assert os.path.exists(os.path.join(model_dir, ".lock"))  # the stale file does not block
        summary = train.run(recipe, model_dir, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"), verbose=False,
                            max_steps=1)
        assert summary["step"] == 1
