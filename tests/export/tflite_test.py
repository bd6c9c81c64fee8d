"""Tests of pf_keras_export.tflite and .saved_model: formats, int8 types, the serving signature."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pf_keras_export import litert
from pf_keras_export import saved_model as saved_model_lib
from pf_keras_export.build import build_model
from pf_keras_export.images import procedural_images
from pf_keras_export.tflite import export_tflite


class TestTflite:
    def test_int8_float_io(self, tmp_path, small_resnet_kwargs):
        model = build_model("resnet50_max", model_kwargs=small_resnet_kwargs, image_size=32)
        path = export_tflite(model, str(tmp_path / "m_int8.tflite"), "int8", int8_input_type="float",
                             calibration_images=procedural_images(2, 32), int8_output_type="float")
        interpreter = litert.interpreter(path)
        assert interpreter.get_input_details()[0]["dtype"] == np.float32
        assert interpreter.get_output_details()[0]["dtype"] == np.float32
        assert list(interpreter.get_input_details()[0]["shape"]) == [1, 32, 32, 3]  # batch 1, static

    def test_fp16_halves_the_file(self, hybrid_export):
        sizes = {e["format"]: os.path.getsize(e["path"]) for e in hybrid_export["files"]}
        assert sizes["fp16"] < 0.6 * sizes["fp32"]

    def test_errors(self, tmp_path, small_resnet_kwargs):
        model = build_model("resnet50_max", model_kwargs=small_resnet_kwargs, image_size=64)
        with pytest.raises(ValueError, match=r"`fmt` must be one of .*Received: fmt='int4'"):
            export_tflite(model, str(tmp_path / "m.tflite"), "int4")
        with pytest.raises(ValueError, match=r"int8 export needs calibration images"):
            export_tflite(model, str(tmp_path / "m.tflite"), "int8")
        with pytest.raises(ValueError, match=r"uint8 input needs the normalisation inside the model"):
            export_tflite(model, str(tmp_path / "m.tflite"), "fp32", input_type="uint8")


class TestSavedModel:
    def test_signature(self, tmp_path, small_resnet_kwargs):
        model = build_model("resnet50_max", model_kwargs=small_resnet_kwargs, image_size=64, input_type="uint8")
        path = saved_model_lib.export_saved_model(model, str(tmp_path / "sm"), input_type="uint8")
        serve = saved_model_lib.load_serving_fn(path)
        spec = serve.structured_input_signature[1]["image"]
        assert spec.dtype.name == "uint8" and spec.shape.as_list() == [None, 64, 64, 3]
        pixels = procedural_images(2, 64)
        out = serve(image=pixels)["predictions"].numpy()
        np.testing.assert_allclose(out, model(pixels.astype(np.float32)), atol=1e-5)

    def test_unknown_size(self):
        import pf_keras

        model = pf_keras.create_model("resnet50_max", depths=(1, 1, 1, 1), width_mult=0.125, include_top=False)
        with pytest.raises(ValueError, match=r"known input size .*Received: input_shape=\(None, None, None, 3\)"):
            saved_model_lib.export_saved_model(model, "/tmp/unused")


class TestInt8Rewrite:
    def test_average_pools_become_exact_depthwise_convs(self, small_resnet_kwargs):
        from pf_keras_export.tflite import average_pools_as_depthwise

        model = build_model("resnet50_hybrid", model_kwargs=small_resnet_kwargs, image_size=64)
        rewritten, names = average_pools_as_depthwise(model)
        assert names == [f"stage{i}_block1_spatial_avgpool" for i in (2, 3, 4)]
        assert all(type(rewritten.get_layer(n)).__name__ == "DepthwiseConv2D" for n in names)
        x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
        np.testing.assert_allclose(rewritten(x), model(x), atol=1e-6)
        same, none = average_pools_as_depthwise(build_model("resnet50_max", model_kwargs=small_resnet_kwargs,
                                                            image_size=64))
        assert none == [] and same.name == "resnet50_max"
