"""Tests of training/study.py: a 2-cell grid end to end, its outputs, and resume without retraining."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil

import pytest

from pf_keras_training import study


def _base(shapes_dir: str):
    overrides = {"schedule.steps_per_epoch": 2, "steps_per_loop": 1, "schedule.warmup_epochs": 0}
    base = study.study_recipe(dataset=f"folder:{shapes_dir}", image_size=32, epochs=1, batch_size=16,
                              depths=(1, 2, 1, 1), width_mult=0.125, overrides=overrides)
    assert dict(base.model.kwargs) == {"depths": [1, 2, 1, 1], "width_mult": 0.125}
    return base


class TestStudy:
    def test_two_cell_grid_writes_table_and_plot_and_resumes(self, shapes_dir, tmp_path):
        out = str(tmp_path / "study")
        cells = [study.Cell("max", "max"), study.parse_cell("mixed=regular,max+max,identity,average")]
        base = _base(shapes_dir)
        first = study.run_study(cells, out, base, tflite=False, verbose=False)  # TFLite: test_tflite_latency
        assert first["trained"] == ["max", "mixed"]
        by_name = {r["name"]: r for r in first["results"]}
        assert by_name["mixed"]["block_kinds"] == ["regular", ["max", "max"], "identity", "average"]
        for r in first["results"]:
            assert 0.0 <= r["val_top1"] <= 1.0 and r["steps"] == 2
            assert r["tflite_ms"] is None and r["train_images_per_sec"] > 0
        # The mixed cell's stage-1 3x3 conv costs exactly its params and MACs over the all-max cell.
        filters = 8  # int(64 * 0.125)
        assert by_name["mixed"]["params"] - by_name["max"]["params"] == 9 * filters * filters + 2 * filters
        assert by_name["mixed"]["macs"] - by_name["max"]["macs"] == 8 * 8 * 9 * filters * filters
        with open(first["paths"]["md"]) as f:
            md = f.read()
        assert md.startswith("| config | block kinds | val top-1 (%) | params | MMACs | TFLite ms | train img/s |")
        assert "| mixed | regular,max+max,identity,average |" in md and "| n/a |" in md
        with open(first["paths"]["csv"]) as f:
            rows = list(csv.reader(f))
        assert [row[0] for row in rows] == ["config", "max", "mixed"]
        with open(first["paths"]["json"]) as f:
            assert [r["name"] for r in json.load(f)] == ["max", "mixed"]
        with open(first["paths"]["png"], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"

        # Resume: finished cells are not retrained (their training folder is not even needed).
        max_result = os.path.join(out, "cells", "max", "result.json")
        stamp = os.stat(max_result).st_mtime_ns
        shutil.rmtree(os.path.join(out, "cells", "max", "train"))
        os.remove(os.path.join(out, "cells", "mixed", "result.json"))  # as if killed before the result
        second = study.run_study(cells, out, base, tflite=False, verbose=False)
        assert second["trained"] == ["mixed"]  # resumed from its finished checkpoint: no new steps
        assert not os.path.exists(os.path.join(out, "cells", "max", "train"))
        assert os.stat(max_result).st_mtime_ns == stamp
        assert {r["name"]: r["steps"] for r in second["results"]} == {"max": 2, "mixed": 2}
        assert study.run_study(cells, out, base, tflite=False, verbose=False)["trained"] == []

        # A damaged result (its settings intact) is measured again, not handed to the table.
        mixed_result = os.path.join(out, "cells", "mixed", "result.json")
        with open(mixed_result) as f:
            damaged = json.load(f)
        damaged["params"] = "many"
        with open(mixed_result, "w") as f:
            json.dump(damaged, f)
        third = study.run_study(cells, out, base, tflite=False, verbose=False)
        assert third["trained"] == ["mixed"]
        assert {r["name"]: r["params"] for r in third["results"]} == {n: r["params"] for n, r in by_name.items()}

        # Other settings in the same out_dir are refused in one line.
        other = study.study_recipe(dataset=f"folder:{shapes_dir}", image_size=32, epochs=2, batch_size=16,
                                   depths=(1, 2, 1, 1), width_mult=0.125, overrides={"schedule.steps_per_epoch": 2})
        with pytest.raises(ValueError, match="run with other settings.*Received: out_dir="):
            study.run_study(cells, out, other, tflite=False, verbose=False)

    def test_tflite_latency(self):
        import pf_keras

        model = pf_keras.ResNet50(depths=(1, 1, 1, 1), width_mult=0.125, input_shape=(32, 32, 3), classes=4)
        assert 0 < study.tflite_latency_ms(model, 32, runs=3, warmup=1) < 1000

    def test_second_study_in_the_same_folder_is_refused(self, shapes_dir, tmp_path):
        out = str(tmp_path / "locked")
        os.makedirs(out)
        with open(os.path.join(out, ".lock"), "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            with pytest.raises(ValueError, match="Another study is running"):
                study.run_study([study.Cell("max", "max")], out, _base(shapes_dir), verbose=False)


class TestCells:
    def test_parse(self):
        assert study.parse_cell("conv=regular") == study.Cell("conv", "regular")
        assert study.parse_cell("m=max,max,efficient+max,average").block_kinds == [
            "max", "max", ["efficient", "max"], "average"]

    @pytest.mark.parametrize(
        "text,match",
        [
            ("conv", "NAME=SPEC"),
            ("a b=max", "NAME=SPEC"),
            ("c=max,max", "one kind or 4 comma-separated"),
            ("c=avg", "Block kinds must be in .*Received: 'avg'"),
        ],
    )
    def test_bad_cells(self, text, match):
        with pytest.raises(ValueError, match=match):
            study.parse_cell(text)

    def test_default_grid_covers_every_kind(self):
        from pf_keras.blocks import BLOCK_KINDS

        assert sorted(study.DEFAULT_GRID.values()) == sorted(BLOCK_KINDS)

    def test_cells_are_checked_against_the_depths_before_training(self, tmp_path):
        with pytest.raises(ValueError, match="Stage 2 has 1 blocks but 2 block kinds"):
            study.run_study([study.parse_cell("m=max,max+max,max,max")], str(tmp_path), study.study_recipe(),
                            verbose=False)
        assert not os.path.exists(tmp_path / "cells")

    def test_duplicate_names(self, tmp_path):
        with pytest.raises(ValueError, match="unique names"):
            study.run_study([study.Cell("a", "max")] * 2, str(tmp_path), study.study_recipe(), verbose=False)


class TestSpeedRecord:
    @pytest.mark.parametrize("content", ['{"images_per_sec": "fast"}', '{"images_per_sec": [1.5, "x"]}', "[3]",
                                         '{"images_per_sec": [NaN]}', '{"images_per_sec": [-2.0]}', "{tru"])
    def test_a_damaged_speed_file_is_started_afresh(self, tmp_path, content):
        path = tmp_path / "speed.json"
        path.write_text(content)
        recorder = study._SpeedRecorder(str(path))
        assert recorder.speeds == []
        recorder.on_loop_end(3, {"images_per_sec": 120.0})
        assert json.loads(path.read_text()) == {"images_per_sec": [120.0]}

    def test_a_resumed_cell_keeps_its_earlier_speeds(self, tmp_path):
        path = tmp_path / "speed.json"
        path.write_text('{"images_per_sec": [100, 110.5]}')
        assert study._SpeedRecorder(str(path)).speeds == [100.0, 110.5]


class TestCommand:
    @pytest.mark.parametrize(
        "argv,message",
        [
            (["--cell", "a=maxx"], "Block kinds must be in"),
            (["--depths", "1,x,1,1"], "--depths must be 4 comma-separated ints"),
            (["--set", "optim.nope=1"], "Unknown field in recipe section 'optim'"),
        ],
    )
    def test_user_errors_are_one_line(self, tmp_path, capsys, argv, message):
        from pf_keras.cli import run_cli

        assert run_cli(study.main, ["--out_dir", str(tmp_path / "s"), *argv], prog="study") == 2
        err = capsys.readouterr().err
        assert err.startswith("study: error: ") and message in err and err.count("\n") == 1

    @pytest.mark.large  # a study process, then the rerun in this one
    def test_sigterm_mid_cell_exits_143_and_the_rerun_resumes_it(self, shapes_dir, tmp_path, capsys):
        import signal
        import subprocess
        import sys
        import time

        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        out = str(tmp_path / "s")
        argv = [sys.executable, os.path.join(repo, "training", "study.py"), "--output_dir", out, "--cell", "max=max",
                "--dataset", f"folder:{shapes_dir}", "--epochs", "1", "--batch_size", "16", "--width_mult", "0.125",
                "--set", "schedule.steps_per_epoch=40", "--set", "steps_per_loop=1", "--no_tflite"]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        speed = os.path.join(out, "cells", "max", "speed.json")
        deadline = time.time() + 240
        while not os.path.exists(speed) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 143, err[-2000:]
        assert "preempted at step" in err
        assert not os.path.exists(os.path.join(out, "cells", "max", "result.json"))
        capsys.readouterr()  # the same command again, in this process
        assert study.main(argv[2:]) == 0
        assert "trained 1 of 1 cells" in capsys.readouterr().out
        with open(os.path.join(out, "cells", "max", "result.json")) as f:
            assert json.load(f)["steps"] == 40
