"""evaluate.py: the same numbers as the trainer's own eval, from the files a run leaves."""

from __future__ import annotations

import json
import os

import pytest

from training import evaluate, loop, train


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
