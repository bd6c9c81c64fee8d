"""Tests of pf_keras/models/specs.py and pf_keras/models/registry.py: one spec per model, read by everything."""

from __future__ import annotations

import inspect
import os
import re

import pytest

import pf_keras
from pf_keras.models import registry
from pf_keras.models.specs import FAMILY_BUILDERS, SPECS, ModelSpec, family_builder, load_manifest, models_table
from pf_keras.preprocessing import INTERPOLATIONS

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
PUBLISHED = ["resnet50", "resnet50_max", "resnet50_hybrid", "vit_ti_max", "vit_s_max", "vit_b_max",
             "pit_ti_max", "pit_s_max", "pit_b_max"]
TINY_RESNET = {"depths": (1, 1, 1, 1), "width_mult": 0.125, "input_shape": (64, 64, 3), "classes": 10}


class TestSpecs:
    def test_nine_published_models(self):
        assert sorted(SPECS) == sorted(PUBLISHED)
        assert pf_keras.list_models(pretrained=True) == ["pit_s_max", "resnet50_hybrid", "resnet50_max", "vit_s_max"]

    @pytest.mark.parametrize("name", PUBLISHED)
    def test_spec_is_complete_and_consistent(self, name):
        spec = SPECS[name]
        assert spec.name == name and spec.family in FAMILY_BUILDERS and spec.description
        builder_args = inspect.signature(family_builder(spec.family)).parameters
        assert set(spec.builder_args) <= set(builder_args)  # every builder argument is a real one
        manifest = load_manifest(name)
        assert manifest["name"] == name and manifest["params_trainable"] == spec.params  # paper == official code
        assert spec.macs_g > 0 and spec.license == "Apache-2.0" and spec.paper.startswith("https://arxiv.org/")
        assert spec.eval.size == 224 and spec.eval.crop_fraction == 0.875 and spec.eval.resize_size == 256
        assert spec.eval.interpolation == ("bilinear" if spec.family == "resnet" else "bicubic")
        assert spec.eval.interpolation in INTERPOLATIONS
        for checkpoint in spec.checkpoints:
            assert checkpoint.url.startswith("https://drive.google.com/file/d/") and checkpoint.drive_id
        if spec.checkpoints:
            assert spec.checkpoints[0].tag == "imagenet" and spec.checkpoints[0].top1 == spec.top1

    def test_manifests_ship_with_the_package(self):
        path = SPECS["resnet50"].manifest_path
        assert path.startswith(os.path.dirname(pf_keras.__file__)) and os.path.isfile(path)

    def test_unknown_spec(self):
        with pytest.raises(ValueError, match="Valid names: .*resnet50_max.*Received: name='r50'"):
            pf_keras.get_spec("r50")
        with pytest.raises(ValueError, match="published no ImageNet checkpoint for 'resnet50'"):
            SPECS["resnet50"].checkpoint()
        with pytest.raises(ValueError, match=r"has checkpoints \['imagenet', 'imagenet_longer'\]"):
            SPECS["resnet50_max"].checkpoint("imagenet21k")


class TestReadme:
    def test_model_table_is_generated_from_the_specs(self):
        with open(README, encoding="utf-8") as f:
            text = f.read()
        match = re.search(r"<!-- models-table:begin[^>]*-->\n(.*?)\n<!-- models-table:end -->", text, re.S)
        assert match, "README.md lacks the generated model table markers"
        assert match.group(1) == models_table(), "regenerate with: python -c 'from pf_keras.models.specs import " \
                                                 "models_table; print(models_table())'"


class TestListModels:
    def test_patterns_and_pretrained(self):
        assert pf_keras.list_models("*max*") == [n for n in sorted(PUBLISHED) if "max" in n]
        assert pf_keras.list_models("pit_?_max") == ["pit_b_max", "pit_s_max"]
        assert pf_keras.list_models("[rv]*", pretrained=True) == ["resnet50_hybrid", "resnet50_max", "vit_s_max"]
        assert pf_keras.list_models("*max*", pretrained=False) == ["pit_b_max", "pit_ti_max", "vit_b_max",
                                                                   "vit_ti_max"]
        assert pf_keras.list_models("RESNET*") == []  # case-sensitive, like the names
        assert pf_keras.list_models() == sorted(PUBLISHED)
        with pytest.raises(ValueError, match="shell-style pattern string.*Received: pattern=3"):
            pf_keras.list_models(3)
        with pytest.raises(ValueError, match="None, True or False. Received: pretrained='yes'"):
            pf_keras.list_models(pretrained="yes")

    def test_registered_builders_are_listed_and_built(self, monkeypatch):
        monkeypatch.setattr(registry, "_REGISTRY", {})
        registry.register_model("my_net")(lambda **kwargs: pf_keras.ResNet((1, 1, 1, 1), "max", width_mult=0.125,
                                                                           name="my_net", **kwargs))
        assert "my_net" in pf_keras.list_models("my*") and "my_net" in pf_keras.list_models(pretrained=False)
        assert "my_net" not in pf_keras.list_models(pretrained=True)
        assert pf_keras.create_model("my_net", input_shape=(64, 64, 3)).name == "my_net"
        with pytest.raises(ValueError, match="already registered"):
            registry.register_model("resnet50_max")(lambda **kwargs: None)


class TestOneEntryAddsAModel:
    def test_tenth_model(self, monkeypatch):
        spec = ModelSpec("resnet26_max", "resnet", "ResNet-26 with max-pool bottlenecks",
                         {"depths": (2, 2, 2, 2), "block_kinds": "max", "width_mult": 1.0}, 0, 0.0, None, None)
        monkeypatch.setitem(SPECS, "resnet26_max", spec)
        assert "resnet26_max" in pf_keras.list_models("resnet26*", pretrained=False)
        model = pf_keras.create_model("resnet26_max", width_mult=0.125, input_shape=(64, 64, 3), classes=10)
        assert model.name == "resnet26_max"
        assert [layer.name for layer in model.layers if layer.name.endswith("_out")][-1] == "stage4_block2_out"
        assert "| `resnet26_max` | resnet |" in models_table()
        assert pf_keras.profile("resnet26_max", width_mult=0.125, image_size=64).params > 0


class TestNoReverseMatching:
    def test_generic_builder_never_finds_a_preset(self):
        # The published architecture built through the generic builder is just an architecture.
        with pytest.raises(ValueError, match="published configurations, built by name.*Received: weights='imagenet'"):
            pf_keras.ResNet((3, 4, 6, 3), "max", weights="imagenet")

    def test_spec_arguments_are_overridable(self):
        model = pf_keras.create_model("resnet50", block_kinds="max", **TINY_RESNET)
        assert model.name == "resnet50"
        assert "stage1_block1_spatial_conv" not in [layer.name for layer in model.layers]

    def test_imagenet_refuses_overrides_by_name(self, monkeypatch):
        monkeypatch.setenv("PF_KERAS_OFFLINE", "1")
        with pytest.raises(ValueError, match="published configurations.*Received: block_kinds='regular', "
                                             "weights='imagenet'"):
            pf_keras.create_model("resnet50_max", block_kinds="regular", weights="imagenet")
        # Equal values in another container type are no override.
        with pytest.raises(ValueError, match="PF_KERAS_OFFLINE"):
            pf_keras.create_model("resnet50_max", depths=[3, 4, 6, 3], weights="imagenet")


class TestProfileReadsTheSpec:
    @pytest.mark.large  # full-size resnet50_max
    def test_profile_table_prints_the_paper_numbers(self):
        table = pf_keras.profiling.profile_table(["resnet50_max"], image_size=64)
        assert re.search(r"\| resnet50_max \| 14.23 \| 0\.\d\d \| 14.23 \| 2.26 \|", table)


@pytest.mark.large
class TestPublishedNumbers:
    @pytest.mark.parametrize("name", PUBLISHED)
    def test_built_models_match_their_spec(self, name):
        spec = SPECS[name]
        result = pf_keras.profile(name)
        assert result.params == spec.params
        assert abs(result.macs / 1e9 - spec.macs_g) / spec.macs_g <= 0.01
