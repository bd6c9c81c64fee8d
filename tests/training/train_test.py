"""train.run end to end: bad files, the builtin dataset learning, flags and impossible settings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

import pf_keras
from pf_keras import fileio
from pf_keras_training import benchmark, evaluate, loop, recipes, train

# TensorFlow's C++ start-up and runtime lines (absl before InitializeLog, oneDNN, cuInit/cudart, cpu_feature_guard).
NOISE = re.compile(r"absl::InitializeLog|oneDNN|cuInit|cuda|cpu_feature_guard|rebuild TensorFlow|^[IWE]0000 ",
                   re.MULTILINE)
VOCABULARY = {"--model", "--model_kwargs", "--dataset", "--data_dir", "--image_size", "--batch_size", "--json",
              "--verbose", "--debug"}


@pytest.fixture
def bad_folder(tmp_path, images, shapes_dir):
    """The shapes dataset's first two classes plus, in train and val, a truncated JPEG, an empty
    file, a PNG named .JPEG and a CMYK JPEG."""
    from PIL import Image

    root = tmp_path / "bad"
    for split in ("train", "val"):
        for name in ("circle", "square"):
            src = os.path.join(shapes_dir, split, name)
            (root / split / name).mkdir(parents=True)
            for file in sorted(os.listdir(src)):
                (root / split / name / file).write_bytes(open(os.path.join(src, file), "rb").read())
        sample = np.asarray(Image.open(os.path.join(shapes_dir, split, "circle", sorted(os.listdir(
            os.path.join(shapes_dir, split, "circle")))[0])))
        folder = root / split / "circle"
        (folder / "x_truncated.JPEG").write_bytes(images.truncated_jpeg(sample))
        (folder / "x_empty.JPEG").write_bytes(b"")
        (folder / "x_png.JPEG").write_bytes(images.png(sample))
        (folder / "x_cmyk.JPEG").write_bytes(images.jpeg(sample, mode="CMYK"))
    return str(root)


class TestRun:
    def test_bad_files_are_skipped_and_reported(self, bad_folder, make_recipe, tmp_path, capsys):
        recipe = make_recipe(f"folder:{bad_folder}", **{"data.global_batch_size": 8, "schedule.steps_per_epoch": 0})
        summary = train.run(recipe, str(tmp_path / "run"), strategy=loop.create_strategy("one_device"))
        assert summary["status"] == "completed"
        assert summary["step"] == 2 * (52 // 8)  # 2 x 24 good + 4 odd files per split
        assert summary["skipped"] >= 2  # the empty and the truncated file, each time they are read
        evals = loop.read_metrics(str(tmp_path / "run"), "eval")
        assert evals[-1]["val_skipped"] == 2 and evals[-1]["val_examples"] == 10  # 8 good + PNG + CMYK
        assert loop.read_metrics(str(tmp_path / "run"), "train")[-1]["skipped_total"] == summary["skipped"]
        out = capsys.readouterr().out
        assert "2 skipped" in out and "skipped files" in out

    def test_builtin_dataset_learns(self, tmp_path, monkeypatch):
        monkeypatch.setenv("PF_KERAS_CACHE", str(tmp_path / "cache"))
        # 2 epochs: 0.56 val top-1 here (3 epochs: 0.63), far above chance at a third less CPU time.
        recipe = recipes.apply_overrides(recipes.get_recipe("demo"), {"schedule.epochs": "2"})
        summary = train.run(recipe, str(tmp_path / "run"), strategy=loop.create_strategy("one_device"), verbose=False)
        assert summary["val_top1"] > 0.4, summary  # 10 classes: chance is 0.1
        assert os.path.exists(tmp_path / "run" / "final" / "model.weights.h5")

    def test_model_dir_with_another_recipe_is_refused(self, shapes_dir, make_recipe, tmp_path):
        model_dir = str(tmp_path / "run")
        recipe = make_recipe(f"folder:{shapes_dir}", **{"schedule.epochs": 1, "data.eval_examples": 8})
        train.run(recipe, model_dir, strategy=loop.create_strategy("one_device"), verbose=False, max_steps=2)
        changed = recipes.apply_overrides(recipe, {"optim.base_lr": "0.5"})
        with pytest.raises(ValueError, match=r"another recipe.*\['optim.base_lr'\]. Received: model_dir="):
            train.run(changed, model_dir, strategy=loop.create_strategy("one_device"), verbose=False)

    @pytest.mark.parametrize(("content", "message"), [
        ("[]", r"A recipe must be a JSON object. Received: list"),
        ('{"data": 5}', r"Recipe section 'data' must be a JSON object. Received: int"),
        ('{"data": {}}', r"A recipe needs every top-level key"),
        ("null", r"A recipe must be a JSON object. Received: NoneType"),
    ])
    def test_a_damaged_recipe_json_is_one_error_naming_it(self, shapes_dir, make_recipe, tmp_path, content, message):
        model_dir = tmp_path / "run"
        model_dir.mkdir()
        (model_dir / "recipe.json").write_text(content)
        recipe = make_recipe(f"folder:{shapes_dir}")
        with pytest.raises(ValueError, match=r"recipe.json \(the run's recipe\) is damaged: " + message):
            train.run(recipe, str(model_dir), strategy=loop.create_strategy("one_device"), verbose=False)

    def test_impossible_settings(self, shapes_dir, make_recipe, tmp_path):
        one = loop.create_strategy("one_device")
        big = make_recipe(f"folder:{shapes_dir}", **{"data.global_batch_size": 512, "schedule.steps_per_epoch": 0})
        with pytest.raises(ValueError, match=r"smaller than one global batch. Received: data.global_batch_size=512"):
            train.run(big, str(tmp_path / "a"), strategy=one, verbose=False)
        with pytest.raises(ValueError, match=r"Received: mixed_precision='float8'"):
            train.run(big, str(tmp_path / "b"), strategy=one, mixed_precision="float8")
        reserved = make_recipe(f"folder:{shapes_dir}", **{"model.kwargs": "input_shape=[64,64,3]"})
        with pytest.raises(ValueError, match=r"Received: model kwargs \['input_shape'\]"):
            train.run(reserved, str(tmp_path / "c"), strategy=one, verbose=False)


class TestFlags:
    def _flags(self, **kw):
        values = {key: None for key in train._SHORTCUTS}
        values.update(recipe="resnet90", sync_bn=False, set=[], model_kwargs="")
        values.update(kw)
        return types.SimpleNamespace(**values)

    def test_shortcuts_set_and_model_kwargs(self):
        recipe = train.recipe_from_flags(self._flags(
            model="resnet50_max", epochs=2, warmup_epochs=0.5, batch_size=64, dataset="builtin",
            set=["optim.momentum=0.95"], model_kwargs='{"depths": [1, 1, 1, 1]}', sync_bn=True))
        assert (recipe.model.name, recipe.schedule.epochs, recipe.data.global_batch_size) == ("resnet50_max", 2, 64)
        assert recipe.optim.momentum == 0.95 and recipe.model.sync_bn
        assert recipe.model.kwargs == {"depths": [1, 1, 1, 1]}
        assert json.loads(recipes.dumps(recipe))["model"]["kwargs"] == {"depths": [1, 1, 1, 1]}

    def test_bad_set_item(self):
        with pytest.raises(ValueError, match=r"section.field=value. Received: set='momentum'"):
            train.recipe_from_flags(self._flags(set=["momentum"]))
        with pytest.raises(ValueError, match=r"Unknown field in recipe section 'optim'"):
            train.recipe_from_flags(self._flags(set=["optim.momentun=0.9"]))


class TestCommandLine:
    @pytest.mark.parametrize("tool, prog, extra", [
        (train, "pf-keras-train", {"--weights", "--model_dir"}),
        (evaluate, "pf-keras-evaluate", {"--weights", "--model_dir", "--output_dir"}),
        (benchmark, "pf-keras-train-benchmark", {"--output_dir"}),
    ])
    def test_help_lists_the_shared_vocabulary_and_no_tensorflow_flags(self, tool, prog, extra, capsys):
        with pytest.raises(SystemExit) as exit_info:
            tool.main(["--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: {prog} ")
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_]*", out))
        assert VOCABULARY | extra <= flags, VOCABULARY | extra - flags
        assert not flags & {"--helpfull", "--flagfile", "--logtostderr", "--v", "--output"}  # absl's, old names

    def test_installed_command_from_another_folder_is_quiet(self, tmp_path):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "PF_KERAS"))}
        command = [os.path.join(os.path.dirname(sys.executable), "pf-keras-evaluate"), "--model", "resnet50_max",
                   "--model_kwargs", "depths=[1,1,1,1],width_mult=0.125", "--image_size", "32", "--dataset",
                   "synthetic", "--batch_size", "8", "--eval_examples", "8", "--json"]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stderr == "", done.stderr[-3000:]
        result = json.loads(done.stdout)
        assert result["model"] == "resnet50_max" and result["examples"] == 8 and 0 <= result["top1"] <= 1
        # --verbose lets TensorFlow's start-up lines through (shown on a run that stops at once: an unknown model)
        verbose = subprocess.run([command[0], "--model", "nope", "--dataset", "synthetic", "--verbose"], cwd=tmp_path,
                                 env=env, capture_output=True, text=True, timeout=300)
        assert verbose.returncode == 2 and NOISE.search(verbose.stderr), verbose.stderr[-3000:]
        assert verbose.stderr.splitlines()[-1].startswith("pf-keras-evaluate: error: Unknown model name.")

    def test_train_then_evaluate_scripts(self, shapes_dir, tmp_path, capsys):
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "TF_CONFIG", "PF_KERAS"))}
        env["CUDA_VISIBLE_DEVICES"] = ""  # no TensorFlow log setting: the commands are quiet by themselves
        model_dir = str(tmp_path / "run")
        cmd = [sys.executable, "training/train.py", "--recipe", "demo", "--model", "resnet50_max",
               "--model_kwargs", "depths=[1,1,1,1],width_mult=0.125", "--dataset", f"folder:{shapes_dir}",
               "--strategy", "mirrored", "--num_replicas", "2", "--batch_size", "16", "--epochs", "1",
               "--steps_per_epoch", "3", "--set", "data.eval_examples=16", "--model_dir", model_dir]
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        assert NOISE.search(done.stderr) is None, done.stderr[-3000:]
        assert "MirroredStrategy: 2 replicas" in done.stdout and "img/s" in done.stdout and "ETA" in done.stdout
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["status"] == "completed" and summary["step"] == 3
        # The evaluate command on that run, in this process (its quiet start as a process is checked by
        # test_installed_command_from_another_folder_is_quiet).
        output = str(tmp_path / "eval")
        capsys.readouterr()
        assert evaluate.main(["--model_dir", model_dir, "--dataset", f"folder:{shapes_dir}", "--batch_size", "8",
                              "--output_dir", output, "--json"]) == 0
        with open(os.path.join(output, "evaluate.json")) as f:
            result = json.load(f)
        assert json.loads(capsys.readouterr().out) == result  # --json: the result is the only output
        assert result["model"] == "resnet50_max" and result["examples"] == 40 and 0 <= result["top1"] <= 1


# ---------------------------------------------------------------- user errors: one line, exit 2


def _cli_args(shapes_dir: str, model_dir: str, *extra: str) -> list[str]:
    return ["--recipe", "demo", "--model_kwargs", "depths=[1,1,1,1],width_mult=0.125", "--dataset",
            f"folder:{shapes_dir}", "--batch_size", "16", "--epochs", "1", "--steps_per_epoch", "2",
            "--set", "data.eval_examples=8", "--model_dir", model_dir, *extra]


def _one_error_line(capsys, prog: str = "pf-keras-train") -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0][len(f"{prog}: error: "):]


class TestProcessStart:
    @pytest.mark.parametrize("closed", [1, 2])
    def test_a_closed_standard_stream_is_no_error(self, tmp_path, shapes_dir, closed):
        # Started with stdout (or stderr) closed, as from a daemon: the run trains, writes its model and exits 0.
        command = [os.path.join(os.path.dirname(sys.executable), "pf-keras-train"), "--recipe", "demo",
                   "--model", "resnet50_max", "--model_kwargs", "depths=[1,1,1,1],width_mult=0.125", "--batch_size",
                   "16", "--epochs", "1", "--steps_per_epoch", "2", "--set", "data.eval_examples=8",
                   "--dataset", f"folder:{shapes_dir}", "--model_dir", "run"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
        result = subprocess.run(command, cwd=tmp_path, env=env, timeout=300, preexec_fn=lambda: os.close(closed))
        assert result.returncode == 0
        assert (tmp_path / "run" / "final" / "config.json").is_file()


class TestProcessEnvironment:
    def test_a_model_dir_tensorflow_cannot_name_is_refused_before_anything_is_written(self, tmp_path, shapes_dir):
        # Under LC_ALL=C with PYTHONUTF8=0 Python reads run_é as ASCII with surrogates, which TensorFlow's
        # writers cannot take: the run failed after writing recipe.json, settings.json and .lock, with a
        # message about "converting unicode string".
        command = [os.path.join(os.path.dirname(sys.executable), "pf-keras-train"), "--recipe", "demo",
                   "--model", "resnet50_max", "--model_kwargs", "depths=[1,1,1,1],width_mult=0.125", "--batch_size",
                   "16", "--epochs", "1", "--steps_per_epoch", "2", "--dataset", f"folder:{shapes_dir}",
                   "--model_dir", "run_é"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "LC_", "LANG"))}
        result = subprocess.run(command, cwd=tmp_path, env={**env, "LC_ALL": "C", "PYTHONUTF8": "0"},
                                capture_output=True, timeout=300)
        err = result.stderr.decode().strip().splitlines()
        assert result.returncode == 2 and len(err) == 1, err
        assert "`model_dir` is not UTF-8 text here" in err[0] and os.listdir(tmp_path) == []

    def test_a_user_error_on_a_full_stderr_still_exits_2(self, tmp_path):
        with open("/dev/full", "w") as full:
            result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "pf-keras-train"), "--lr", "nan"],
                                    cwd=tmp_path, stderr=full, stdout=subprocess.DEVNULL, timeout=300)
        assert result.returncode == 2


class TestCommandLineErrors:
    @pytest.mark.parametrize("flag, value, message", [
        ("--lr", "nan", "`optim.base_lr` must be a finite number. Received: optim.base_lr=nan"),
        ("--warmup_epochs", "inf", "`schedule.warmup_epochs` must be a finite number. Received: "
                                   "schedule.warmup_epochs=inf"),
        ("--set", "optim.momentum=nan", "`optim.momentum` must be a finite number."),
        ("--batch_size", "abc", "argument --batch_size: invalid int value: 'abc' (see pf-keras-train --help)"),
        ("--sigterm_stall_s", "nan", "`sigterm_stall_s` must be a finite number > 0."),
    ])
    def test_bad_values_are_one_line_and_exit_2(self, shapes_dir, tmp_path, capsys, flag, value, message):
        code = train.main(_cli_args(shapes_dir, str(tmp_path / "run"), flag, value))
        assert code == 2
        assert message in _one_error_line(capsys)

    def test_debug_shows_the_traceback(self, shapes_dir, tmp_path, capsys):
        assert train.main(_cli_args(shapes_dir, str(tmp_path / "run"), "--lr", "nan", "--debug")) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and err.rstrip().endswith("optim.base_lr=nan")

    @pytest.mark.parametrize("name, content", [("bad.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 64),
                                               ("bad.pth", b"PK\x03\x04 not a zip at all"),
                                               ("empty.weights.h5", b"")])
    def test_a_corrupt_init_weights_file_is_one_line(self, shapes_dir, tmp_path, capsys, name, content):
        path = tmp_path / name
        path.write_bytes(content)
        code = train.main(_cli_args(shapes_dir, str(tmp_path / "run"), "--weights", str(path)))
        assert code == 2
        line = _one_error_line(capsys)
        assert line.startswith(f"cannot start from init_weights {path}: ")
        assert line.endswith(f"Received: model.init_weights={str(path)!r}")


class TestAtomicResults:
    def _trainer(self, recipe, source):
        model = train.build_model(recipe, source.num_classes)
        optimizer = loop.build_optimizer(recipe, model, mixed_precision="float32")
        return loop.Trainer(strategy=loop.create_strategy("one_device"), model=model, optimizer=optimizer,
                            recipe=recipe, steps_per_epoch=2)

    def test_full_disk_while_writing_the_final_weights(self, shapes_dir, make_recipe, small_disk):
        from conftest import fill_disk

        from pf_keras_training import data

        recipe = make_recipe(f"folder:{shapes_dir}", **{"model.ema_decay": 0.9})
        source = data.resolve_source(recipe.data)
        trainer = self._trainer(recipe, source)
        model_dir = small_disk / "run"
        model_dir.mkdir()
        previous = {"final_ema.weights.h5": b"previous ema", "final/config.json": b'{"previous": true}\n'}
        (model_dir / "final").mkdir()
        for name, content in previous.items():
            (model_dir / name).write_bytes(content)

        def files():
            return {os.path.relpath(os.path.join(d, n), model_dir): open(os.path.join(d, n), "rb").read()
                    for d, _, names in os.walk(model_dir) for n in names}

        fill_disk(str(small_disk), leave=32 * 1024)
        with pytest.raises(fileio.WriteError, match=r"cannot write .*final_ema.weights.h5 \(ENOSPC: No space left "
                                                    r"on device\); the previous version, if any, is intact$"):
            train._save_final(recipe, str(model_dir), trainer, source)
        assert files() == previous  # no temporaries
        trainer.ema = None  # the EMA file aside: the model folder final/ is replaced whole or not at all
        with pytest.raises(fileio.WriteError, match=r"ENOSPC: No space left on device"):
            train._save_final(recipe, str(model_dir), trainer, source)
        assert files() == previous

    def test_the_final_preset_folder_rebuilds_the_trained_model(self, shapes_dir, make_recipe, tmp_path, capsys):
        from pf_keras_training import data

        recipe = make_recipe(f"folder:{shapes_dir}")
        source = data.resolve_source(recipe.data)
        trainer = self._trainer(recipe, source)
        for w in trainer.model.trainable_weights:  # not the builder's initialisation
            w.assign_add(np.full(w.shape, 0.01, w.dtype))
        train._save_final(recipe, str(tmp_path), trainer, source)
        rebuilt = pf_keras.create_model(str(tmp_path / "final"))  # no side channel: the folder alone
        assert rebuilt.count_params() == trainer.model.count_params() and rebuilt.output_shape == (None, 10)
        for r, w in zip(rebuilt.weights, trainer.model.weights, strict=True):
            np.testing.assert_array_equal(r.numpy(), w.numpy())
        assert pf_keras.build_record(rebuilt) == pf_keras.build_record(trainer.model)
        assert sorted(os.listdir(tmp_path)) == ["final"]  # no side channel (model.json, final.weights.h5)
        name, weights, kwargs, extra = evaluate._from_model_dir(str(tmp_path))
        assert (name, weights, extra["image_size"]) == (recipe.model.name, str(tmp_path / "final"), 32)
        assert kwargs["depths"] == [1, 1, 1, 1] and "classes" not in kwargs
        assert evaluate.main(["--model_dir", str(tmp_path), "--dataset", f"folder:{shapes_dir}", "--batch_size", "8",
                              "--eval_examples", "8", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["examples"] == 8

    def test_export_and_gradcam_rebuild_the_trained_model_from_final(self, shapes_dir, make_recipe, tmp_path,
                                                                        capsys):
        """train -> export (the run folder as --model) and train -> gradcam: the same outputs as the trained model."""
        from PIL import Image

        from pf_keras import gradcam
        from pf_keras.cli import run_cli
        from pf_keras_export.build import build_model
        from pf_keras_export.export_lib import export_model
        from pf_keras_training import data

        recipe = make_recipe(f"folder:{shapes_dir}")
        source = data.resolve_source(recipe.data)
        trainer = self._trainer(recipe, source)
        for w in trainer.model.trainable_weights:  # not the builder's initialisation
            w.assign_add(np.full(w.shape, 0.01, w.dtype))
        train._save_final(recipe, str(tmp_path / "run"), trainer, source)
        x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
        trained = trainer.model.predict(x, verbose=0)
        for model in (str(tmp_path / "run"), str(tmp_path / "run" / "final")):  # the run folder or its final/
            np.testing.assert_array_equal(build_model(model).predict(x, verbose=0), trained)
        report = export_model(str(tmp_path / "run"), output_dir=str(tmp_path / "export"), formats="fp32",
                              verbose=False)
        assert report["passed"] and report["build"]["record"] == pf_keras.build_record(trainer.model).to_json()
        image = np.random.default_rng(1).integers(0, 256, (32, 32, 3)).astype(np.uint8)  # at the model's size
        expected, classes = gradcam.grad_cam(trainer.model, pf_keras.preprocess_input(image[None].astype("float32")))
        Image.fromarray(image).save(tmp_path / "x.png")
        assert run_cli(gradcam.main, ["--model", str(tmp_path / "run"), "--output_dir", str(tmp_path / "cams"),
                                      str(tmp_path / "x.png")]) == 0
        assert f"class {int(classes[0])} ({source.class_names[int(classes[0])]})" in capsys.readouterr().out
        rebuilt, _ = gradcam._load_run(str(tmp_path / "run"), None)
        heat, _ = gradcam.grad_cam(rebuilt, pf_keras.preprocess_input(image[None].astype("float32")))
        np.testing.assert_allclose(heat, expected, atol=1e-6)

    def test_a_damaged_final_preset_is_one_line(self, shapes_dir, tmp_path, capsys):
        final = tmp_path / "final"
        final.mkdir()
        config = {"model": "resnet50_max", "family": "resnet", "config": {"input_shape": 3}}
        (final / "config.json").write_text(json.dumps(config))
        (final / "model.weights.h5").write_bytes(b"")
        (final / "metadata.json").write_text("{}")
        assert evaluate.main(["--model_dir", str(tmp_path), "--dataset", f"folder:{shapes_dir}"]) == 2
        assert _one_error_line(capsys, "pf-keras-evaluate") == (
            f"{final}/config.json has no usable input_shape (TypeError). Received: model_dir={str(tmp_path)!r}")

    def test_final_ema_weights_are_the_ema_and_the_model_keeps_its_own(self, shapes_dir, make_recipe, tmp_path):
        from pf_keras_training import data

        recipe = make_recipe(f"folder:{shapes_dir}", **{"model.ema_decay": 0.9})
        source = data.resolve_source(recipe.data)
        trainer = self._trainer(recipe, source)
        for e in trainer.ema:
            e.assign_add(np.ones(e.shape, e.dtype.as_numpy_dtype))  # EMA != the model's own weights
        own = [w.numpy() for w in trainer.model.weights]
        train._save_final(recipe, str(tmp_path), trainer, source)
        for w, o in zip(trainer.model.weights, own, strict=True):  # swapped back (loop.Trainer.ema_weights)
            np.testing.assert_array_equal(w.numpy(), o)
        clone = train.build_model(recipe, source.num_classes)
        clone.load_weights(str(tmp_path / "final_ema.weights.h5"))
        for c, e in zip(clone.weights, trainer.ema, strict=True):
            np.testing.assert_array_equal(c.numpy(), e.numpy().astype(c.dtype))

    def test_full_disk_while_appending_a_metrics_record(self, small_disk):
        from conftest import fill_disk

        path = str(small_disk / "metrics.jsonl")
        loop.append_line(path, '{"step": 1}')
        fill_disk(str(small_disk), leave=0)
        with pytest.raises(fileio.WriteError, match=r"cannot append to .*metrics.jsonl \(ENOSPC"):
            loop.append_line(path, json.dumps({"step": 2, "pad": "x" * 100_000}))
        with open(path) as f:
            assert f.read() == '{"step": 1}\n'


class TestBadData:
    def test_all_undecodable_training_files_stop_with_one_line_and_few_log_lines(self, tmp_path, images):
        import subprocess
        import sys

        root = tmp_path / "bad"
        for split in ("train", "val"):
            (root / split / "a").mkdir(parents=True)
        for i in range(6):
            (root / "train" / "a" / f"x{i}.JPEG").write_bytes(b"" if i % 2 else b"\xff\xd8 truncated")
        (root / "val" / "a" / "ok.JPEG").write_bytes(images.jpeg(np.full((40, 40, 3), 90, np.uint8)))
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", CUDA_VISIBLE_DEVICES="")  # every TF log line shows
        env.pop("TF_CONFIG", None)
        cmd = [sys.executable, "training/train.py", "--recipe", "demo", "--model_kwargs",
               "depths=[1,1,1,1],width_mult=0.125", "--dataset", f"folder:{root}", "--batch_size", "2",
               "--steps_per_epoch", "2", "--model_dir", str(tmp_path / "run")]
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 2, done.stderr[-3000:]
        lines = done.stderr.splitlines()
        errors = [line for line in lines if line.startswith("pf-keras-train: error: ")]
        assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert errors[0].startswith(f"pf-keras-train: error: The train data yielded no decodable image in 6 "
                                    f"consecutive files of {root}/train (6 files listed); ")
        # (libjpeg's messages come from pipeline threads still running and may land on the same line)
        assert "the pixel limit. Received: max_consecutive_skips=1000" in errors[0]
        # TF's start-up lines, then libjpeg's own line per corrupt JPEG that the parallel pipeline read before
        # the stop (~160 here): bounded, where the old pipeline looped forever, logging every file.
        assert len(lines) < 1000, len(lines)
