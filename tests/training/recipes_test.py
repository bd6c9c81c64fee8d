"""Recipes: registered values, typed overrides, errors, lr scaling, JSON round trip."""

from __future__ import annotations

import dataclasses

import pytest

from training import recipes


class TestRecipes:
    def test_paper_values(self):
        r = recipes.get_recipe("resnet90")
        o = r.optim
        assert (o.name, o.base_lr, o.base_batch_size, o.weight_decay) == ("sgd", 0.2, 1024, 1e-4)
        assert (r.schedule.epochs, r.schedule.step_epochs, r.schedule.step_factor, r.schedule.warmup_epochs) == (
            90, 30, 0.1, 3)
        d = recipes.get_recipe("deit300")
        o = d.optim
        assert (o.name, o.base_lr, o.base_batch_size, o.weight_decay) == ("adamw", 5e-4, 512, 0.05)
        assert (d.data.randaugment_magnitude, d.data.mixup_alpha, d.data.cutmix_alpha, d.data.random_erasing) == (
            9, 0.8, 1.0, 0.25)
        assert (d.optim.label_smoothing, d.model.drop_path_rate, d.schedule.epochs, d.schedule.decay) == (
            0.1, 0.1, 300, "cosine")
        assert d.model.ema_decay > 0

    def test_overrides_are_typed(self):
        r = recipes.apply_overrides(recipes.get_recipe("resnet90"), {
            "optim.base_lr": "0.1", "schedule.epochs": "3", "data.hflip": "false", "model.kwargs": "width_mult=0.5",
            "data.data_dir": "none", "seed": "7"})
        assert r.optim.base_lr == 0.1 and r.schedule.epochs == 3 and r.data.hflip is False
        assert r.model.kwargs == {"width_mult": 0.5} and r.data.data_dir is None and r.seed == 7

    @pytest.mark.parametrize("key, value, message", [
        ("optim.base_lrr", "1", r"Unknown field in recipe section 'optim'.*Received: key='optim.base_lrr'"),
        ("optimizer.base_lr", "1", r"Unknown recipe section.*Received: key='optimizer.base_lr'"),
        ("epochs", "1", r"Unknown recipe key.*Received: key='epochs'"),
        ("schedule.epochs", "2.5", r"`schedule.epochs` must be an integer. Received: schedule.epochs='2.5'"),
        ("optim.base_lr", "fast", r"must be a number of type float. Received: optim.base_lr='fast'"),
        ("data.hflip", "maybe", r"must be a boolean.*Received: data.hflip='maybe'"),
        ("optim.name", "lamb", r"'sgd' or 'adamw'. Received: optim.name='lamb'"),
        ("schedule.decay", "poly", r"Received: schedule.decay='poly'"),
    ])
    def test_override_errors(self, key, value, message):
        with pytest.raises(ValueError, match=message):
            recipes.apply_overrides(recipes.get_recipe("resnet90"), {key: value})

    def test_unknown_recipe(self):
        with pytest.raises(ValueError, match=r"Valid names: \['deit300', 'demo', 'resnet90'\]. Received: recipe='r50'"):
            recipes.get_recipe("r50")

    def test_lr_scales_with_global_batch_and_schedule(self):
        r = recipes.apply_overrides(recipes.get_recipe("resnet90"), {"data.global_batch_size": "256"})
        assert recipes.scaled_lr(r) == pytest.approx(0.05)
        spe = 100
        assert recipes.learning_rate(r, 0, spe) == 0.0
        assert recipes.learning_rate(r, 150, spe) == pytest.approx(0.025)  # half-way through 3 warm-up epochs
        assert recipes.learning_rate(r, 10 * spe, spe) == pytest.approx(0.05)
        assert recipes.learning_rate(r, 45 * spe, spe) == pytest.approx(0.005)
        assert recipes.learning_rate(r, 89 * spe, spe) == pytest.approx(0.0005)  # x0.1 at 30 and 60
        d = recipes.get_recipe("deit300")
        assert recipes.learning_rate(d, 300 * spe, spe) == pytest.approx(1e-5)

    def test_json_round_trip(self):
        r = recipes.apply_overrides(recipes.get_recipe("demo"), {"model.kwargs": '{"depths": [1, 1, 1, 1]}'})
        back = recipes.from_dict(recipes.to_dict(r))
        assert recipes.to_dict(back) == recipes.to_dict(r)
        with pytest.raises(ValueError, match=r"Unknown fields in recipe section 'optim'"):
            recipes.from_dict({**recipes.to_dict(r), "optim": {"lr": 1}})

    def test_parse_kwargs(self):
        assert recipes.parse_kwargs('{"a": [1, 2]}') == {"a": [1, 2]}
        assert recipes.parse_kwargs("depths=(1,1,1,1),width_mult=0.125,name=x") == {
            "depths": [1, 1, 1, 1], "width_mult": 0.125, "name": "x"}
        with pytest.raises(ValueError, match=r"name=value. Received: model_kwargs='depths'"):
            recipes.parse_kwargs("depths")

    def test_recipes_are_frozen(self):
        with pytest.raises(dataclasses.FrozenInstanceError):
            recipes.get_recipe("resnet90").optim.base_lr = 1.0
