"""Tests of the speed tools: scripts/input_pipeline_benchmark.py, scripts/profile_train_step.py and the PyTorch side
of training/benchmark.py."""

from __future__ import annotations

import gzip
import importlib.util
import json
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


class TestProfileTrainStep:
    def test_conv_rates_per_layer_and_kernel_slowest_first(self):
        script = _load_script("profile_train_step")
        events = [("model/stem_conv_1/convolution", "_MklNativeConv2D", 1000.0),
                  ("gradient_tape/model/stem_conv_1/Conv2DBackpropFilter", "_MklNativeConv2DBackpropFilter", 4000.0),
                  ("model/stem_bn/FusedBatchNormV3", "_MklNativeFusedBatchNormV3", 9999.0),  # not a conv kernel
                  ("other_scope/MatMul", "_MklMatMul", 50.0)] * 2  # two steps; the last in no conv layer's scope
        events += [("model/head_conv/MatMul", "_MklMatMul", 100.0)] * 6  # 3 matmuls per step
        rows = script.conv_rates(events, {"stem_conv": 2_000_000, "head_conv": 300_000}, steps=2)
        # stem: 2 MMAC in 1 ms forward (2 GMAC/s), in 4 ms filter gradient (0.5 GMAC/s); head: 3 x 0.3 MMAC in 0.3 ms
        assert [(layer, kind) for _, layer, kind, _ in rows] == [
            ("stem_conv", "Conv2DBackpropFilter"), ("stem_conv", "Conv2D"), ("head_conv", "MatMul")]
        assert [round(rate, 3) for rate, *_ in rows] == [0.5, 2.0, 3.0]
        assert [round(ms, 3) for *_, ms in rows] == [4.0, 1.0, 0.3]

    def test_profiles_a_small_resnet_and_lists_its_matmul_convolutions(self, capsys):
        script = _load_script("profile_train_step")
        assert script.main(["--model", "resnet50_hybrid", "--model_kwargs", "depths=[1,1,1,1],width_mult=0.125",
                            "--image_size", "32", "--batch_size", "4", "--steps", "1", "--top", "100"]) == 0
        out = capsys.readouterr().out
        assert "train_loop traced 1x" in out
        table = out.split("slowest convolution kernels")[1]
        rows = re.findall(r"^(\w+)\s+(\w+)\s+([\d.]+)\s+([\d.e+-]+)$", table, re.M)
        rates = [float(r[3]) for r in rows]
        assert rows and rates == sorted(rates) and min(rates) > 0
        kernels = {(layer, kind) for layer, kind, _, _ in rows}
        # At 32x32 the last stage's 1x1-output convolutions train as matmuls (pf_keras.layers.Conv2D) ...
        assert {("stage4_block1_shortcut_conv", "MatMul"), ("stage4_block1_expand_conv", "MatMul")} <= kernels
        assert not any(layer == "stage4_block1_expand_conv" and kind != "MatMul" for layer, kind in kernels)
        # ... and the others as convolutions, the stem without an input gradient.
        assert {("stem_conv", "Conv2D"), ("stem_conv", "Conv2DBackpropFilter")} <= kernels
        assert ("stem_conv", "Conv2DBackpropInput") not in kernels

    @pytest.mark.parametrize("argv,match", [
        (["--model_kwargs", "{bad json"], "`model_kwargs` must be a JSON object"),
        (["--model_kwargs", "depths=[1,1]"], "`depths` must be 4 positive ints"),
        (["--model", "resnet51"], "resnet51"),
        (["--steps", "0"], "must be >= 1"),
    ])
    def test_bad_arguments_are_one_line_and_exit_2(self, capsys, argv, match):
        script = _load_script("profile_train_step")
        assert script.main(["--image_size", "32", "--batch_size", "2", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("profile_train_step.py: ") and match in err


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


class TestGpuTraceSummary:
    @staticmethod
    def _trace(path, kernels, device=True):
        first = "/device:GPU:0" if device else "/host:CPU"
        events = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": first}},
                  {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
                  {"ph": "X", "pid": 2, "ts": 0, "dur": 5000.0, "name": "PjitFunction(step)"}]
        events += [{"ph": "X", "pid": 1, "ts": i, "dur": dur, "name": name} for i, (name, dur) in enumerate(kernels)]
        with gzip.open(path, "wt") as f:
            json.dump({"traceEvents": events}, f)

    def test_device_time_per_step_by_class_and_fusion(self, tmp_path, capsys):
        script = _load_script("gpu_trace_summary")
        kernels = [("input_reduce_fusion_3", 300.0), ("input_reduce_fusion_7", 100.0),
                   ("loop_select_fusion_21", 1000.0), ("sm90_xmma_fprop_implicit_gemm_bf16", 500.0),
                   ("Memset 3", 100.0)] * 2
        self._trace(tmp_path / "a.trace.json.gz", kernels)
        assert script.main([str(tmp_path), "--steps", "2"]) == 0
        out = capsys.readouterr().out
        assert "2.00 ms of device kernels per step, 5 kernels per step" in out  # the host event is not counted
        assert ("elementwise fusions 1.00 ms (50 %), conv/GEMM kernels 0.50 ms (25 %), "
                "reduction fusions 0.40 ms (20 %), memset/copy 0.10 ms (5 %)") in out
        assert re.search(r"0\.40 ms\s+2x  input_reduce_fusion$", out, re.M)

    # gzip's header holds a time: mtime=0 and explicit ids keep the test ids equal on every xdist worker
    @pytest.mark.parametrize("content", [b"not gzip", gzip.compress(b'{"traceEvents": 3}', mtime=0),
                                         gzip.compress(b"[" * 100000, mtime=0), b"", "host"],
                             ids=["not_gzip", "events_not_a_list", "deeply_nested", "empty", "host_events_only"])
    def test_bad_trace_is_one_line_and_exit_2(self, tmp_path, content):
        path = tmp_path / "b.trace.json.gz"
        if content == "host":
            self._trace(path, [("loop_fusion", 10.0)], device=False)
        else:
            path.write_bytes(content)
        proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "gpu_trace_summary.py"), str(path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("gpu_trace_summary: "), proc.stderr


_TORCH_PYTHON = os.environ.get("PF_KERAS_TORCH_PYTHON")


@pytest.mark.skipif(not _TORCH_PYTHON, reason="needs PF_KERAS_TORCH_PYTHON (a Python with torch)")
class TestTorchThroughputModes:
    """torch_throughput.py's modes on a stand-in checkout (a tiny torch model named like the official ones)."""

    @pytest.mark.parametrize("mode,dtype", [("train", "float32"), ("train", "bfloat16"), ("infer", "bfloat16")])
    def test_cpu_modes(self, tmp_path, mode, dtype):
        (tmp_path / "resnet_pf.py").write_text(
            "import torch\n"
            "def resnet50_max():\n"
            "    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),\n"
            "                               torch.nn.MaxPool2d(3, 1, 1), torch.nn.AdaptiveAvgPool2d(1),\n"
            "                               torch.nn.Flatten(), torch.nn.Linear(8, 1000))\n")
        proc = subprocess.run([_TORCH_PYTHON, benchmark.TORCH_SCRIPT, "--pflayer_dir", str(tmp_path), "--model",
                               "resnet50_max", "--image_size", "16", "--batch_size", "4", "--steps", "2",
                               "--mode", mode, "--dtype", dtype], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-1000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        key = "train_images_per_sec" if mode == "train" else "infer_images_per_sec"
        assert result[key] > 0 and (result["device"], result["dtype"], result["batch_size"]) == ("cpu", dtype, 4)

    def test_cuda_without_a_gpu_is_one_line(self, tmp_path):
        (tmp_path / "resnet_pf.py").write_text("def resnet50():\n    raise SystemExit('not reached')\n")
        proc = subprocess.run([_TORCH_PYTHON, benchmark.TORCH_SCRIPT, "--pflayer_dir", str(tmp_path), "--model",
                               "resnet50", "--device", "cuda"], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        assert proc.returncode == 2 and "torch sees no CUDA device" in proc.stderr.strip().splitlines()[-1]
