"""Tests of pf_keras_export.export_lib: every format proven against Keras, uint8 input, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import randomised

import pf_keras
from pf_keras.weights.preset import write_preset
from pf_keras_export import formats, litert
from pf_keras_export import saved_model as saved_model_lib
from pf_keras_export.build import build_model
from pf_keras_export.export_lib import export_model

# Ops XNNPACK has no int8 kernel for in this LiteRT (documented in the README, "Export"); the hybrid's
# int8 average pools are rewritten as depthwise convs, so the int8 ResNets are fully delegated.
INT8_RESNET_CPU_OPS: set[str] = set()
INT8_TRANSFORMER_CPU_OPS = {"ADD", "BATCH_MATMUL", "GELU", "RSQRT", "SOFTMAX", "SQUARED_DIFFERENCE"}


def _by_format(report: dict) -> dict:
    return {entry["format"]: entry for entry in report["files"]}


def _check_proofs(report: dict, int8_cpu_ops: set[str]) -> None:
    files = _by_format(report)
    assert report["passed"]
    assert set(files) == {"saved_model", "fp32", "fp16", "dynamic", "int8", "int8_mixed"}
    assert files["saved_model"]["max_abs_diff"] <= 1e-5
    assert files["fp32"]["max_abs_diff"] <= 1e-4  # the bound, absolute
    assert files["fp32"]["top1_agreement"] == 1.0
    for fmt, entry in files.items():
        assert entry["passed"], (fmt, entry)
        tolerance = formats.FORMATS[fmt].tolerance
        assert entry["max_abs_diff"] <= tolerance.max_abs * entry["output_scale"]
        assert entry["mean_abs_diff"] <= tolerance.mean_abs * entry["output_scale"]
        assert entry["size_bytes"] > 0
        if fmt == "saved_model":
            continue
        assert entry["custom_ops"] == []
        assert not any(op.startswith("Flex") for op in entry["ops"])
        if fmt == "int8":
            assert set(entry["xnnpack"]["cpu_ops"]) <= int8_cpu_ops, entry["xnnpack"]
            assert entry["input"]["dtype"] == "int8" and entry["output"]["dtype"] == "int8"
        else:  # int8_mixed too: the ops without int8 kernels stay float, on the delegate
            if fmt == "int8_mixed":
                assert entry["input"]["dtype"] == entry["output"]["dtype"] == "float32"
                assert entry["ops"].get("QUANTIZE", 0) >= 1 and entry["ops"].get("DEQUANTIZE", 0) >= 1
            assert entry["xnnpack"]["fully_delegated"], (fmt, entry["xnnpack"])
            assert entry["xnnpack"]["cpu_ops"] == []


class TestExportModel:
    def test_resnet_every_format_is_proven(self, hybrid_export):
        _check_proofs(hybrid_export, INT8_RESNET_CPU_OPS)
        folder = os.path.dirname(_by_format(hybrid_export)["fp32"]["path"])
        assert sorted(os.listdir(folder)) == [
            "report.json", "resnet50_hybrid_dynamic.tflite", "resnet50_hybrid_fp16.tflite",
            "resnet50_hybrid_fp32.tflite", "resnet50_hybrid_int8.tflite", "resnet50_hybrid_int8_mixed.tflite",
            "saved_model",
        ]
        with open(os.path.join(folder, "report.json")) as f:
            stored = json.load(f)
        assert stored["int8"]["average_pools_as_depthwise"] == [
            "stage2_block1_spatial_avgpool", "stage3_block1_spatial_avgpool", "stage4_block1_spatial_avgpool",
        ]
        assert _by_format(hybrid_export)["int8"]["xnnpack"]["fully_delegated"]
        assert stored["passed"] and stored["params"] == pf_keras.profile(
            build_model("resnet50_hybrid", model_kwargs=stored["build"]["model_kwargs"], image_size=64)
        ).params
        assert {"tensorflow", "keras", "ai_edge_litert"} <= set(stored["versions"])

    def test_transformer_every_format_is_proven(self, vit_export):
        _check_proofs(vit_export, INT8_TRANSFORMER_CPU_OPS)
        # int8_mixed keeps in float (delegated) exactly the ops that int8 leaves on LiteRT's CPU kernels.
        files = _by_format(vit_export)
        assert {"BATCH_MATMUL", "GELU", "RSQRT", "SOFTMAX"} <= set(files["int8_mixed"]["ops"])
        assert {"BATCH_MATMUL", "GELU", "RSQRT", "SOFTMAX"} <= set(files["int8"]["xnnpack"]["cpu_ops"])

    def test_pit_float_files_are_fully_delegated(self, tmp_path):
        kwargs = {"patch_size": 8, "stride": 4, "head_dims": [8, 8], "depths": [2, 2], "num_heads": [2, 4],
                  "classes": 10, "classifier_activation": None}
        report = export_model("pit_ti_max", output_dir=str(tmp_path), formats="fp32,fp16", model_kwargs=kwargs,
                              image_size=32, require_full_delegation=True, verbose=False)
        assert report["passed"] and all(e["xnnpack"]["fully_delegated"] for e in report["files"])

    def test_max_resnet_int8_is_fully_delegated(self, tmp_path, small_resnet_kwargs):
        report = export_model("resnet50_max", output_dir=str(tmp_path), formats="int8",
                              model_kwargs=small_resnet_kwargs, image_size=64, int8_output_type="float",
                              dataset="synthetic", num_calibration=8, require_full_delegation=True, verbose=False)
        entry = _by_format(report)["int8"]
        assert entry["xnnpack"]["fully_delegated"] and entry["output"]["dtype"] == "float32"

    def test_uint8_input_with_preprocessing_matches_float_model(self, tmp_path, small_resnet_kwargs):
        # A "training run": a float model and its model folder final/ (build record + weights), as train writes it.
        float_model = randomised(build_model("resnet50_hybrid", model_kwargs=small_resnet_kwargs, image_size=64))
        write_preset(float_model, tmp_path / "run" / "final")

        report = export_model(str(tmp_path / "run" / "final"), output_dir=str(tmp_path / "out"), input_type="uint8",
                              formats="saved_model,fp32,int8,int8_mixed", num_calibration=8, verbose=False)
        files = _by_format(report)
        assert report["passed"] and report["input_type"] == "uint8"
        assert files["fp32"]["input"]["dtype"] == "uint8"
        int8_input = files["int8"]["input"]
        assert (int8_input["dtype"], int8_input["scale"], int8_input["zero_point"]) == ("uint8", 1.0, 0)

        pixels = np.random.default_rng(5).integers(0, 256, (3, 64, 64, 3)).astype(np.uint8)
        normalised = pf_keras.preprocess_input(pixels.astype(np.float32))
        expected = np.asarray(float_model(normalised, training=False))
        serve = saved_model_lib.load_serving_fn(files["saved_model"]["path"])
        from_saved_model = np.asarray(serve(image=pixels)["predictions"])
        np.testing.assert_allclose(from_saved_model, expected, atol=1e-4)

        runner = litert.interpreter(files["fp32"]["path"])
        np.testing.assert_allclose(litert.run_tflite(runner, pixels.astype(np.float32)), expected, atol=1e-4)
        assert files["fp32"]["xnnpack"]["cpu_ops"] == ["CAST"]  # uint8 -> float before the one partition
        assert files["int8_mixed"]["input"]["dtype"] == "uint8"  # calibrated on the uint8 signature itself
        assert files["int8_mixed"]["xnnpack"]["cpu_ops"] == ["CAST"]


class TestExportErrors:
    def test_unknown_format(self, tmp_path):
        match = r"`formats` must be a non-empty subset of .*Received: formats=\['fp32', 'bf16'\]"
        with pytest.raises(ValueError, match=match):
            export_model("resnet50_max", output_dir=str(tmp_path), formats="fp32,bf16")

    def test_unwritable_output_dir(self, tmp_path):
        blocker = tmp_path / "a_file"
        blocker.write_text("not a directory")
        with pytest.raises(ValueError, match=r"`output_dir` must be a writable directory .*Received: output_dir="):
            export_model("resnet50_max", output_dir=str(blocker / "out"), formats="fp32")

    def test_keras_weights_for_another_model(self, tmp_path, small_resnet_kwargs):
        weights = str(tmp_path / "max.weights.h5")
        build_model("resnet50_max", model_kwargs=small_resnet_kwargs, image_size=64).save_weights(weights)
        match = r"does not fit model 'resnet50_hybrid'.*holds 67 arrays, the model has 82 .*Received: weights="
        with pytest.raises(ValueError, match=match):
            export_model("resnet50_hybrid", output_dir=str(tmp_path / "out"), weights=weights,
                         model_kwargs=small_resnet_kwargs, image_size=64, formats="fp32")

    def test_keras_weights_of_another_size(self, tmp_path, small_resnet_kwargs):
        weights = str(tmp_path / "narrow.weights.h5")
        build_model("resnet50_max", model_kwargs=small_resnet_kwargs, image_size=64).save_weights(weights)
        wider = {**small_resnet_kwargs, "width_mult": 0.25}
        with pytest.raises(ValueError, match=r"weights file does not fit model 'resnet50_max'"):
            export_model("resnet50_max", output_dir=str(tmp_path / "out"), weights=weights, model_kwargs=wider,
                         image_size=64, formats="fp32")

    def test_a_runs_old_model_json_is_refused_with_the_new_route(self, tmp_path):
        (tmp_path / "model.json").write_text(json.dumps({"name": "resnet50_max", "kwargs": {"classes": 10}}))
        with pytest.raises(ValueError, match=r"model.json, which is no longer read: pass the run's model folder "
                                             r"instead \(--model RUN/final"):
            export_model("resnet50_max", output_dir=str(tmp_path), model_kwargs=str(tmp_path / "model.json"))
        (tmp_path / "final.weights.h5").write_bytes(b"")  # a whole run folder of an older pf-keras
        with pytest.raises(ValueError, match=r"is a training run of an older pf-keras \(model.json, no final/\): "
                                             r"rerun its pf-keras-train command"):
            export_model(str(tmp_path), output_dir=str(tmp_path / "out"), formats="fp32")

    def test_a_model_folder_brings_its_own_weights(self, tmp_path, small_resnet_kwargs):
        model = build_model("resnet50_max", model_kwargs=small_resnet_kwargs, image_size=64)
        write_preset(model, tmp_path / "final")
        model.save_weights(str(tmp_path / "w.weights.h5"))
        with pytest.raises(ValueError, match=r"A preset folder brings its own weights; drop `weights`"):
            export_model(str(tmp_path / "final"), output_dir=str(tmp_path / "out"), formats="fp32",
                         weights=str(tmp_path / "w.weights.h5"))

    def test_unknown_model_and_types(self, tmp_path):
        with pytest.raises(ValueError, match=r"Unknown model name.*Received: name='resnet51'"):
            export_model("resnet51", output_dir=str(tmp_path), formats="fp32")
        with pytest.raises(ValueError, match=r"`int8_output_type` must be one of .*Received: int8_output_type='int4'"):
            export_model("resnet50", output_dir=str(tmp_path), int8_output_type="int4")
        with pytest.raises(ValueError, match=r"`input_type` must be one of .*Received: input_type='int16'"):
            export_model("resnet50", output_dir=str(tmp_path), formats="fp32", input_type="int16")
