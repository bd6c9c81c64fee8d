"""Tests of pf_keras/layers/transformer_stack.py."""

from __future__ import annotations

import keras
import pytest

from pf_keras.layers.transformer_stack import apply_transformer_stack, resolve_mixers


class TestResolveMixers:
    def test_patterns(self):
        assert resolve_mixers("alternating", 4) == ["attention", "max", "attention", "max"]
        assert resolve_mixers("attention", 2) == ["attention", "attention"]
        assert resolve_mixers("max", 2) == ["max", "max"]
        assert resolve_mixers(("max", "attention"), 2) == ["max", "attention"]

    @pytest.mark.parametrize(
        "mixers,match",
        [
            ("pool", "pattern in \\('alternating', 'attention', 'max'\\).*Received: mixers='pool'"),
            (["max"], "needs 2 entries.*Received: mixers=\\['max'\\]"),
            (["max", "conv"], "needs 2 entries, each in.*Received: mixers=\\['max', 'conv'\\]"),
        ],
    )
    def test_invalid(self, mixers, match):
        with pytest.raises(ValueError, match=match):
            resolve_mixers(mixers, 2)


class TestApplyTransformerStack:
    def test_names_kinds_and_rates(self):
        inputs = keras.Input((9, 8))
        outputs = apply_transformer_stack(
            inputs, num_heads=2, mixers=resolve_mixers("alternating", 3), drop_path_rates=[0.0, 0.1, 0.2],
            name_prefix="stage1_",
        )
        model = keras.Model(inputs, outputs)
        blocks = [layer for layer in model.layers if layer.name.startswith("stage1_block")]
        assert [b.name for b in blocks] == ["stage1_block0", "stage1_block1", "stage1_block2"]
        assert [b.mixer_kind for b in blocks] == ["attention", "max", "attention"]
        assert [b.drop_path_rate for b in blocks] == [0.0, 0.1, 0.2]

    def test_rates_length_checked(self):
        with pytest.raises(ValueError, match="one rate per block \\(2\\). Received: drop_path_rates=\\[0.1\\]"):
            apply_transformer_stack(keras.Input((4, 8)), num_heads=2, mixers=["max", "max"], drop_path_rates=[0.1])
