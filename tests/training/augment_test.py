"""The port's augmentations against timm's, op by op, with the same images and parameters.

Reference outputs: ``tests/fixtures/timm/augment.npz`` from ``tests/fixtures/make_timm_augment.py``
(timm 1.0.31; the ops are unchanged since timm 0.3.2, which DeiT pins). Images on PIL's 0..255 scale.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from pf_keras_training import augment, recipes

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "timm",
                       "augment.npz")
with np.load(FIXTURE) as _data:
    REF = {k: _data[k] for k in _data.files}
IMAGES = REF["images"].astype(np.float32)
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def _ra_cases(prefix: str):
    for key in sorted(REF):
        if key.startswith(prefix + "/"):
            _, name, m, sign = key.split("/")
            yield pytest.param(name, float(m), int(sign), key, id=f"{name}-m{m}-{'neg' if int(sign) < 0 else 'pos'}")


_APPLY_OP = tf.function(augment.apply_op, reduce_retracing=True)  # traced once, not once per call


def _apply(name: str, m: float, sign: int) -> np.ndarray:
    index = tf.constant(augment.OP_NAMES.index(name))
    return np.stack([_APPLY_OP(tf.constant(im), index, tf.constant(m), tf.constant(float(sign))).numpy()
                     for im in IMAGES])


class TestRandAugmentOps:
    def test_op_set_is_timms_increasing_set(self):
        names = {k.split("/")[1] for k in REF if k.startswith("ra/")}
        assert set(augment.OP_NAMES) == names and len(augment.OP_NAMES) == 15
        assert augment.FILL == (124, 116, 104)  # timm's img_mean: round(255 * IMAGENET_DEFAULT_MEAN)

    @pytest.mark.parametrize("name, m, sign, key", list(_ra_cases("ra")))
    def test_op_matches_timm(self, name, m, sign, key):
        got, want = _apply(name, m, sign), REF[key].astype(np.float32)
        diff = np.abs(got - want)
        if name in GEOMETRIC:
            # TF's bilinear vs PIL's bilinear: the same inside the image; pixels next to the fill
            # border differ (PIL fills a sample whose centre falls outside, TF blends with the fill).
            assert diff.mean() < 2.0 and (diff > 1).mean() < 0.1, (diff.mean(), (diff > 1).mean())
        else:
            # PIL's integer arithmetic reproduced; one level where PIL's C float rounds a blend differently.
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())

    @pytest.mark.parametrize("name, m, sign, key", list(_ra_cases("ra_bicubic")))
    def test_geometric_ops_against_pil_bicubic(self, name, m, sign, key):
        # DeiT resamples RandAugment's geometry bicubically; TF has bilinear only (a documented difference).
        diff = np.abs(_apply(name, m, sign) - REF[key].astype(np.float32))
        assert diff.mean() < 4.5, diff.mean()

    def test_posterize_increasing_keeps_one_bit_at_m9(self):
        out = _apply("PosterizeIncreasing", 9.0, 1)
        assert set(np.unique(out)) <= {0.0, 128.0}  # 4 - int(4 * 0.9) = 1 bit

    def test_translate_fills_with_imagenet_mean(self):
        out = augment.translate_x(tf.constant(IMAGES[0]), 100.0).numpy()
        np.testing.assert_array_equal(out[:, -1], np.broadcast_to(np.float32(augment.FILL), out[:, -1].shape))

    def test_rand_augment_draws(self):
        image = tf.constant(IMAGES[0])
        seed = tf.constant([3, 4], tf.int64)
        a = augment.rand_augment(image, seed, magnitude=9, magnitude_std=0.5)
        np.testing.assert_array_equal(a.numpy(), augment.rand_augment(image, seed, magnitude=9, magnitude_std=0.5))
        np.testing.assert_array_equal(augment.rand_augment(image, seed, magnitude=9, prob=0.0).numpy(), IMAGES[0])
        one_op = tf.function(lambda s: augment.rand_augment(image, s, magnitude=9, num_ops=1, prob=0.5))
        changed = [not np.array_equal(one_op(tf.constant([i, 0], tf.int64)).numpy(), IMAGES[0]) for i in range(60)]
        assert 0.25 < np.mean(changed) < 0.75  # each op applied with probability 0.5 (Invert etc. always change it)


class TestColorJitter:
    @pytest.mark.parametrize("k", range(3))
    def test_matches_torchvision_on_pil(self, k):
        got = np.stack([augment.jitter(tf.constant(im), REF["jitter_factors"][k], REF["jitter_orders"][k]).numpy()
                        for im in IMAGES])
        np.testing.assert_array_equal(got, REF[f"jitter/{k}"].astype(np.float32))

    def test_factors_and_order_are_drawn_per_seed(self):
        image = tf.constant(IMAGES[1])
        outs = {augment.color_jitter(image, 0.4, tf.constant([i, 1], tf.int64)).numpy().tobytes() for i in range(8)}
        assert len(outs) == 8


class TestRandomErasing:
    def test_box_distribution_matches_timm(self):
        ref = REF["erasing_boxes"].astype(np.float64)  # top, left, h, w of 2000 timm boxes on 224x224
        sample = tf.function(lambda i: augment.erasing_box(tf.constant([224, 224]), tf.stack([i, 5]))[0])
        boxes = tf.map_fn(sample, tf.range(2000, dtype=tf.int64), fn_output_signature=tf.float32).numpy()
        for col, name in enumerate(("top", "left", "height", "width")):
            for q in (0.1, 0.5, 0.9):  # quantiles within sampling noise (2000 draws each)
                a, b = np.quantile(boxes[:, col], q), np.quantile(ref[:, col], q)
                assert abs(a - b) <= 0.06 * 224, (name, q, a, b)
        area = boxes[:, 2] * boxes[:, 3] / 224**2
        assert 0.015 < area.min() and area.max() < 0.34 and abs(area.mean() - 0.176) < 0.01

    def test_pixel_mode_fills_normal_noise(self):
        image = tf.zeros([224, 224, 3])
        out = augment.random_erasing(image, tf.constant([1, 2], tf.int64), 1.0).numpy()
        erased = out[np.any(out != 0, axis=-1)]
        assert erased.size > 0 and abs(erased.std() - float(np.mean(REF["erasing_noise_std"]))) < 0.05
        np.testing.assert_array_equal(augment.random_erasing(image, tf.constant([1, 2], tf.int64), 0.0), image)


class TestMixupCutmix:
    @pytest.mark.parametrize("lam", [0.3, 0.77])
    @pytest.mark.parametrize("use_cutmix", [0, 1])
    def test_batch_and_targets_match_timm(self, lam, use_cutmix):
        x = np.transpose(REF["mix/batch"], (0, 2, 3, 1))
        labels = REF["mix/labels"]
        tag = f"mix/{lam}/{use_cutmix}"
        targets = augment.smooth_one_hot(tf.constant(labels), 10, 0.1)
        if use_cutmix:
            cy, cx = REF[f"{tag}/centre"]
            box, lam_used = augment.cutmix_box(12, 16, lam, cy, cx, round_up=True)  # the fixture's timm 1.0.31
            mixed = augment.cutmix(tf.constant(x), box)
        else:
            mixed, lam_used = augment.mixup(tf.constant(x), lam), lam
        np.testing.assert_allclose(mixed.numpy(), np.transpose(REF[f"{tag}/x"], (0, 2, 3, 1)), rtol=0, atol=1e-6)
        np.testing.assert_allclose(augment.mix_targets(targets, lam_used).numpy(), REF[f"{tag}/targets"],
                                   rtol=0, atol=1e-6)

    @pytest.mark.parametrize("lam", [0.2, 0.55, 0.9, 0.999])
    def test_cutmix_box_and_corrected_lambda(self, lam):
        cy, cx = REF[f"cut/{lam}/centre"]
        box, corrected = augment.cutmix_box(24, 32, lam, cy, cx, round_up=True)  # timm >= 1.0.29, the fixture's
        np.testing.assert_array_equal(box.numpy(), REF[f"cut/{lam}/box"])
        assert float(corrected) == pytest.approx(float(REF[f"cut/{lam}/lam"]), abs=1e-6)
        # DeiT's timm (<= 1.0.28): the upper edges are at most one row/column lower.
        old, _ = augment.cutmix_box(24, 32, lam, cy, cx)
        assert np.all(np.abs(old.numpy() - box.numpy()) <= [0, 1, 0, 1])

    def test_sampler_switches_and_lambda_is_beta(self):
        cfg = recipes.get_recipe("deit300").data
        images = tf.random.stateless_normal([4, 12, 16, 3], [1, 2])
        targets = augment.smooth_one_hot(tf.constant([0, 1, 2, 3]), 10, 0.1)
        mix = tf.function(lambda s, c: augment.mix_batch(images, targets, s, c))
        cut = 0
        for i in range(200):
            mixed, t = mix(tf.constant([i, 3], tf.int64), cfg)
            np.testing.assert_allclose(tf.reduce_sum(t, -1), 1.0, atol=1e-5)
            cut += bool(np.any(mixed.numpy() == tf.reverse(images, [0]).numpy()))
        assert 0.38 < cut / 200 < 0.62  # switch probability 0.5
        mixup_only = dataclasses.replace(cfg, cutmix_alpha=0.0)
        lams = [(float(mix(tf.constant([i, 4], tf.int64), mixup_only)[1][0, 0]) - 0.01) / 0.9
                for i in range(300)]  # the weight of the image's own smoothed label
        # Beta(0.8, 0.8): mean 0.5, variance 1 / (4 (2 alpha + 1)) = 0.096
        assert abs(np.mean(lams) - 0.5) < 0.06 and abs(np.var(lams) - 0.096) < 0.025
