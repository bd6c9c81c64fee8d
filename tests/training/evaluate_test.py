"""evaluate.py: the same numbers as the trainer's own eval, from the files a run leaves."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tiny_tfds

from pf_keras_training import evaluate, loop, train

PfTinyDamaged = tiny_tfds.builder(
    "PfTinyDamaged", num_classes=2, encoding="png", sizes={"train": 4, "validation": 6},
    image=lambda split, i: np.full((20, 24, 3), 40 * i, np.uint8))


class TestEvaluate:
    def test_matches_the_runs_last_eval(self, shapes_dir, make_recipe, tmp_path):
        model_dir = str(tmp_path / "run")
        recipe = make_recipe(f"folder:{shapes_dir}", **{"schedule.epochs": 1})
        train.run(recipe, model_dir, strategy=loop.create_strategy("one_device"), verbose=False)
        name, weights, kwargs, extra = evaluate._from_model_dir(model_dir)
        assert name == "resnet50_hybrid" and extra["image_size"] == 32
        result = evaluate.evaluate(name, weights=weights, dataset=f"folder:{shapes_dir}", model_kwargs=kwargs,
                                   batch_size=16, **extra)
        last = loop.read_metrics(model_dir, "eval")[-1]
        assert result["top1"] == pytest.approx(last["val_top1"], abs=1e-6)
        assert result["top5"] == pytest.approx(last["val_top5"], abs=1e-6)
        assert result["examples"] == 40 and result["interpolation"] == "bilinear"
        json.dumps(result)
        assert os.path.exists(weights)

    def test_batch_must_divide_by_replicas(self, shapes_dir, mirrored_strategy):
        with pytest.raises(ValueError, match=r"divisible by the number of replicas \(2\). Received: batch_size=5"):
            evaluate.evaluate("resnet50_max", weights=None, dataset=f"folder:{shapes_dir}", batch_size=5,
                              image_size=32, model_kwargs={"depths": (1, 1, 1, 1), "width_mult": 0.125},
                              strategy=mirrored_strategy)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("pf-keras-evaluate: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0][len("pf-keras-evaluate: error: "):]


class TestEvaluateErrors:
    def test_an_unfinished_run_dir_is_one_line(self, shapes_dir, tmp_path, capsys):
        model_dir = tmp_path / "run"
        (model_dir / "checkpoints").mkdir(parents=True)  # a run still training: no final/
        code = evaluate.main(["--model_dir", str(model_dir), "--dataset", f"folder:{shapes_dir}"])
        assert code == 2
        assert _error_line(capsys).startswith(f"{model_dir} is neither a preset folder nor a finished training run: "
                                              f"pf-keras-train writes the model folder final/ when it ends")

    @pytest.mark.parametrize(("crop_fraction", "message"), [
        ("x", r"metadata.json: `eval_transform.crop_fraction` must be a number. Received: crop_fraction='x'"),
        (1e-300, r"`crop_fraction` must leave size / crop_fraction at most 65536 pixels"),
    ])
    def test_a_tampered_preset_eval_transform_is_one_line(self, shapes_dir, tmp_path, capsys, crop_fraction,
                                                           message):
        import re

        import pf_keras
        from pf_keras.weights.preset import write_preset

        folder = write_preset(pf_keras.create_model("resnet50_max", depths=(1, 1, 1, 1), width_mult=0.125,
                                                    input_shape=(32, 32, 3), classes=10), tmp_path / "preset",
                              metadata={"eval_transform": {"crop_fraction": crop_fraction}})
        code = evaluate.main(["--model", folder, "--dataset", f"folder:{shapes_dir}", "--batch_size", "8"])
        assert code == 2 and re.search(message, _error_line(capsys))

    def test_a_dataset_with_other_or_reordered_classes_is_refused(self, shapes_dir, tmp_path, capsys):
        import shutil

        import pf_keras
        from pf_keras.weights.preset import write_preset

        classes = sorted(os.listdir(os.path.join(shapes_dir, "val")))
        folder = write_preset(pf_keras.create_model("resnet50_max", depths=(1, 1, 1, 1), width_mult=0.125,
                                                    input_shape=(32, 32, 3), classes=10), tmp_path / "preset",
                              metadata={"class_names": classes})
        renamed = tmp_path / "renamed"
        shutil.copytree(shapes_dir, renamed)
        for split in ("train", "val"):  # the first class sorts last now: every label moves
            os.rename(renamed / split / classes[0], renamed / split / f"zz_{classes[0]}")
        code = evaluate.main(["--model", folder, "--dataset", f"folder:{renamed}", "--batch_size", "8"])
        assert code == 2 and _error_line(capsys).startswith(
            f"The dataset's classes are not the model's (class 0: the model's "
            f"{classes[0]!r}, the dataset's {classes[1]!r})")
        assert evaluate.main(["--model", folder, "--dataset", f"folder:{shapes_dir}", "--batch_size", "8"]) == 0

    def test_a_damaged_tfds_shard_or_a_fifo_in_its_folder_is_one_line(self, tmp_path, capsys):
        PfTinyDamaged(data_dir=str(tmp_path)).download_and_prepare()
        folder = tmp_path / "pf_tiny_damaged" / "1.0.0"
        argv = ["--model", "resnet50_max", "--model_kwargs", "depths=[1,1,1,1],width_mult=0.125", "--dataset",
                "pf_tiny_damaged", "--data_dir", str(tmp_path), "--batch_size", "2", "--image_size", "32"]
        assert evaluate.main(argv) == 0
        capsys.readouterr()
        shard = next(folder.glob("*validation.tfrecord*"))
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF  # a flipped bit: its record's CRC fails
        shard.write_bytes(bytes(data))
        assert evaluate.main(argv) == 2
        line = _error_line(capsys)
        assert line.startswith("The val data of TFDS pf_tiny_damaged") and "is damaged (corrupted record at " in line
        shard = next(folder.glob("*train.tfrecord*"))
        shard.write_bytes(shard.read_bytes()[:-7])  # a truncated shard, met while training
        code = train.main(["--recipe", "demo", "--model", "resnet50_max", "--model_kwargs",
                           "depths=[1,1,1,1],width_mult=0.125", "--dataset", "pf_tiny_damaged", "--data_dir",
                           str(tmp_path), "--batch_size", "2", "--image_size", "32", "--epochs", "1",
                           "--steps_per_epoch", "4", "--json", "--model_dir", str(tmp_path / "run")])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("pf-keras-train: error: ")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
        assert "The train data of TFDS pf_tiny_damaged" in lines[0] and "is damaged (" in lines[0]
        os.remove(folder / "dataset_info.json")
        os.mkfifo(folder / "dataset_info.json")  # TFDS would block reading it
        assert evaluate.main(argv) == 2
        assert "is not a file or a folder (a FIFO or a device would block the reader)" in _error_line(capsys)

    def test_a_run_from_before_final_is_one_line(self, shapes_dir, tmp_path, capsys):
        model_dir = tmp_path / "run"
        model_dir.mkdir()
        (model_dir / "model.json").write_text('{"name": "resnet50_max", "kwargs": {}}')
        (model_dir / "final.weights.h5").write_bytes(b"")
        for flag in ("--model_dir", "--model"):
            assert evaluate.main([flag, str(model_dir), "--dataset", f"folder:{shapes_dir}"]) == 2
            assert _error_line(capsys).startswith(
                f"{model_dir} is a training run of an older pf-keras (model.json, no final/): rerun its "
                f"pf-keras-train command with --model_dir {model_dir}; it resumes at the last checkpoint")

    def test_batch_size_zero_is_one_line(self, shapes_dir, capsys):
        code = evaluate.main(["--model", "resnet50_max", "--dataset", f"folder:{shapes_dir}", "--batch_size", "0"])
        assert code == 2
        assert _error_line(capsys) == "`batch_size` must be >= 1. Received: batch_size=0"

    @pytest.mark.parametrize("where", ["a_file", "under_a_file"])
    def test_an_unwritable_output_dir_is_refused_before_evaluating(self, shapes_dir, tmp_path, capsys, where):
        (tmp_path / "file").write_text("x")
        output = {"a_file": tmp_path / "file", "under_a_file": tmp_path / "file" / "out"}[where]
        code = evaluate.main(["--model", "resnet50_max", "--model_kwargs", "depths=[1,1,1,1],width_mult=0.125",
                              "--image_size", "32", "--dataset", f"folder:{shapes_dir}", "--output_dir", str(output)])
        assert code == 2
        line = _error_line(capsys)
        assert line.startswith("`output_dir` cannot be written (") and line.endswith(f"output_dir={str(output)!r}")
        assert "top-1" not in capsys.readouterr().out  # nothing was evaluated

    def test_a_val_split_without_decodable_images_is_an_error(self, tmp_path, images):
        for split in ("train", "val"):
            (tmp_path / "d" / split / "a").mkdir(parents=True)
            (tmp_path / "d" / split / "a" / "x.JPEG").write_bytes(b"broken")
        with pytest.raises(ValueError, match=r"no decodable image \(1 files skipped\).*Received: val_examples=0"):
            evaluate.evaluate("resnet50_max", weights=None, dataset=f"folder:{tmp_path / 'd'}", batch_size=2,
                              image_size=32, model_kwargs={"depths": (1, 1, 1, 1), "width_mult": 0.125})


class TestEvaluateCommand:
    def test_image_size_defaults_to_input_shape_in_model_kwargs_as_in_export(self, capsys, tmp_path):
        code = evaluate.main(["--model", "resnet50_max", "--model_kwargs",
                              "depths=[1,1,1,1],width_mult=0.125,input_shape=[32,32,3]", "--dataset", "synthetic",
                              "--batch_size", "4", "--eval_examples", "4", "--json", "--output_dir", str(tmp_path)])
        assert code == 0
        result = json.loads(capsys.readouterr().out)
        assert result["image_size"] == 32 and result["examples"] == 4
        assert json.loads((tmp_path / "evaluate.json").read_text()) == result
