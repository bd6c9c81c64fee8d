"""Tests of the speed tools: scripts/input_pipeline_benchmark.py and the PyTorch side of training/benchmark.py."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from pf_keras_training import benchmark

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestInputPipelineBenchmark:
    def test_times_a_generated_jpeg_folder_without_python_ops(self, tmp_path, capsys):
        script = _load_script("input_pipeline_benchmark")
        folder = tmp_path / "jpegs"
        assert script.main(["--images", "6", "--image_size", "32", "--batch_size", "2", "--batches", "1",
                            "--threads", "1", "--repeats", "1", "--folder", str(folder)]) == 0
        out = capsys.readouterr().out
        assert "Python ops in the folder pipeline: none" in out
        assert "load average" in out
        stages = re.findall(r"^\s+1 (.+?)\s+(\d+)\s+(\d+)\s+([\d.]+)$", out, re.M)
        assert [s[0] for s in stages] == ["read", "decode+crop", "+resize", "train per-image", "train"]
        assert all(float(v) > 0 for s in stages for v in s[1:])
        jpegs = sorted((folder / "train").rglob("*.jpg"))
        assert len(jpegs) == 6
        assert tf.io.extract_jpeg_shape(tf.io.read_file(str(jpegs[0]))).numpy().tolist() == [375, 500, 3]

    def test_python_op_check_sees_a_generator(self):
        script = _load_script("input_pipeline_benchmark")
        generated = tf.data.Dataset.from_generator(lambda: iter([1, 2]), output_signature=tf.TensorSpec([], tf.int32))
        assert "GeneratorDataset" in script.python_ops_in(generated)
        assert script.python_ops_in(tf.data.Dataset.range(3).map(lambda x: x + 1)) == []


class TestTorchSide:
    @pytest.mark.parametrize(
        "python,folder,models,kwargs,match",
        [
            ("/nonexistent/python", "PFLAYER", ["resnet50"], {}, "`torch_python` must be an executable"),
            (sys.executable, "/nonexistent", ["resnet50"], {}, "`pflayer_dir` must be a PfLayer checkout"),
            (sys.executable, "PFLAYER", ["vit_s_max"], {}, "runs the published"),
            (sys.executable, "PFLAYER", ["resnet50"], {"width_mult": 0.5}, "without model_kwargs"),
        ],
    )
    def test_checked_before_any_timing(self, tmp_path, python, folder, models, kwargs, match):
        (tmp_path / "resnet_pf.py").write_text("")
        folder = str(tmp_path) if folder == "PFLAYER" else folder
        with pytest.raises(ValueError, match=match):
            benchmark.check_torch_side(python, folder, models, kwargs, "float32")

    def test_torch_script_refuses_a_missing_checkout_before_importing_torch(self, tmp_path):
        proc = subprocess.run([sys.executable, benchmark.TORCH_SCRIPT, "--pflayer_dir", str(tmp_path), "--model",
                               "resnet50"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "no resnet_pf.py" in proc.stderr

    def test_failed_torch_side_is_one_line(self, tmp_path):
        (tmp_path / "resnet_pf.py").write_text("raise SystemExit('broken checkout')\n")
        with pytest.raises(ValueError, match="The PyTorch side failed for resnet50"):
            benchmark.torch_throughput("resnet50", torch_python=sys.executable, pflayer_dir=str(tmp_path),
                                       image_size=32, batch_size=2, steps=1, warmup_steps=0)
