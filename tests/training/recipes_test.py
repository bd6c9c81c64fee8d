"""Recipes: registered values, typed overrides, errors, lr scaling, JSON round trip."""

from __future__ import annotations

import dataclasses
import math

import pytest

from pf_keras_training import recipes


class TestRecipes:
    def test_resnet90_is_the_official_timm_command(self):
        # timm 0.5.4 train.py --opt sgd --lr 0.2 --weight-decay 1e-4 --batch-size 256 (x4) --sched step
        # --epochs 90 --decay-epochs 30 --warmup-epochs 3 --smoothing 0, timm defaults otherwise.
        r = recipes.get_recipe("resnet90")
        o, s, d = r.optim, r.schedule, r.data
        assert (o.name, o.nesterov, o.momentum, o.base_lr, o.base_batch_size, o.weight_decay, o.label_smoothing) == (
            "sgd", True, 0.9, 0.2, 1024, 1e-4, 0.0)
        assert (s.epochs, s.decay, s.step_epochs, s.step_factor, s.warmup_epochs, s.warmup_init_lr) == (
            90, "step", 30, 0.1, 3, 1e-4)
        assert (s.per_step, s.lag_epochs) == (False, 0)
        assert (d.global_batch_size, d.train_interpolation, d.color_jitter, d.crop_scale_min, d.hflip) == (
            1024, "random", 0.4, 0.08, True)
        assert (d.randaugment_magnitude, d.mixup_alpha, d.cutmix_alpha, d.random_erasing, d.repeated_augment) == (
            0, 0, 0, 0, 1)
        assert r.model.ema_decay == 0 and r.model.name == "resnet50_hybrid"

    def test_deit300_is_deit_main_defaults(self):
        r = recipes.get_recipe("deit300")
        o, s, d = r.optim, r.schedule, r.data
        assert (o.name, o.base_lr, o.base_batch_size, o.weight_decay, o.epsilon, o.beta_1, o.beta_2) == (
            "adamw", 5e-4, 512, 0.05, 1e-8, 0.9, 0.999)
        assert (o.label_smoothing, o.clip_norm) == (0.1, 0.0)
        assert (s.epochs, s.decay, s.warmup_epochs, s.warmup_init_lr, s.min_lr, s.per_step, s.lag_epochs) == (
            300, "cosine", 5, 1e-6, 1e-5, False, 1)
        assert (d.train_interpolation, d.color_jitter, d.randaugment_magnitude, d.randaugment_magnitude_std,
                d.randaugment_num_ops) == ("bicubic", 0.0, 9, 0.5, 2)
        assert (d.mixup_alpha, d.cutmix_alpha, d.mix_prob, d.mix_switch_prob, d.random_erasing, d.repeated_augment) == (
            0.8, 1.0, 1.0, 0.5, 0.25, 3)
        assert (r.model.drop_path_rate, r.model.ema_decay, d.global_batch_size) == (0.1, 0.99996, 1024)
        assert recipes.scaled_lr(r) == pytest.approx(1e-3)  # DeiT: 5e-4 * 256 * 4 / 512

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
        ("data.train_interpolation", "lanczos", r"Received: data.train_interpolation='lanczos'"),
        ("data.repeated_augment", "0", r"Received: data.repeated_augment=0"),
        ("schedule.lag_epochs", "-1", r"Received: schedule.lag_epochs=-1"),
        ("data.crop_ratio_max", "1e301", r"must lie in \[0.01, 100\]. Received: .*data.crop_ratio_max=1e\+301"),
        # Values that are not text (a recipe dict, JSON) must have the field's type: one ValueError, no TypeError.
        ("optim.base_lr", None, r"`optim.base_lr` must be of type float. Received: optim.base_lr=None"),
        ("schedule.epochs", [3], r"`schedule.epochs` must be of type int. Received: schedule.epochs=\[3\]"),
        ("schedule.epochs", True, r"`schedule.epochs` must be of type int. Received: schedule.epochs=True"),
        ("data.hflip", 1, r"`data.hflip` must be of type bool"),
        ("optim.name", {"a": 1}, r"`optim.name` must be of type str"),
    ])
    def test_override_errors(self, key, value, message):
        with pytest.raises(ValueError, match=message):
            recipes.apply_overrides(recipes.get_recipe("resnet90"), {key: value})

    def test_unknown_recipe(self):
        with pytest.raises(ValueError, match=r"Valid names: \['deit300', 'demo', 'resnet90'\]. Received: recipe='r50'"):
            recipes.get_recipe("r50")

    def test_resnet90_schedule_is_timm_step_lr_per_epoch(self):
        r = recipes.apply_overrides(recipes.get_recipe("resnet90"), {"data.global_batch_size": "256"})
        assert recipes.scaled_lr(r) == pytest.approx(0.05)
        spe = 100
        # StepLRScheduler(decay_t=30, decay_rate=0.1, warmup_t=3, warmup_lr_init=1e-4), stepped per epoch:
        # warm-up lr = 1e-4 + t * (0.05 - 1e-4) / 3 for the whole of epoch t.
        warm = [1e-4 + t * (0.05 - 1e-4) / 3 for t in range(3)]
        for step, expected in [(0, warm[0]), (99, warm[0]), (100, warm[1]), (150, warm[1]), (299, warm[2]),
                               (300, 0.05), (10 * spe, 0.05), (29 * spe + 99, 0.05), (30 * spe, 0.005),
                               (45 * spe, 0.005), (89 * spe + 99, 0.0005)]:
            assert recipes.learning_rate(r, step, spe) == pytest.approx(expected, rel=1e-12), step

    def test_deit300_schedule_is_cosine_one_epoch_late(self):
        r = recipes.get_recipe("deit300")
        spe, peak, lo = 10, 1e-3, 1e-5

        def timm_cosine(t):  # CosineLRScheduler._get_lr(t), warmup_prefix False, cycle_limit 1
            if t < 5:
                return 1e-6 + t * (peak - 1e-6) / 5
            return lo + 0.5 * (peak - lo) * (1 + math.cos(math.pi * t / 300))

        # DeiT: lr_scheduler.step(epoch) after epoch `epoch`, so epoch e trains at _get_lr(e - 1) (e >= 1).
        for epoch in (0, 1, 2, 5, 6, 150, 299):
            expected = timm_cosine(max(epoch - 1, 0))
            for step in (epoch * spe, epoch * spe + spe - 1):
                assert recipes.learning_rate(r, step, spe) == pytest.approx(expected, rel=1e-12), (epoch, step)
        per_step = recipes.apply_overrides(r, {"schedule.per_step": "true", "schedule.lag_epochs": "0"})
        assert recipes.learning_rate(per_step, 25, spe) == pytest.approx(1e-6 + 2.5 * (peak - 1e-6) / 5)
        assert recipes.learning_rate(per_step, 300 * spe, spe) == pytest.approx(lo)

    def test_in_graph_lr_matches(self):
        import tensorflow as tf

        from pf_keras_training import loop

        for name in ("resnet90", "deit300", "demo"):
            r = recipes.get_recipe(name)
            spe = 7
            for step in (0, 3, 7, 20, 35, 36, 200, 209, 210, 1000, 2100):
                got = float(loop.lr_at(r, tf.constant(step, tf.int64), spe))
                assert got == pytest.approx(recipes.learning_rate(r, step, spe), rel=1e-5, abs=1e-9), (name, step)

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
        with pytest.raises(ValueError, match=r"k=v pairs \(k=v,k2=v2\) or a JSON file path. Received: "
                                             r"model_kwargs=.depths."):
            recipes.parse_kwargs("depths")

    def test_recipes_are_frozen(self):
        with pytest.raises(dataclasses.FrozenInstanceError):
            recipes.get_recipe("resnet90").optim.base_lr = 1.0
