"""Shared setup of the export tests: small exported models, run once per session and shared.

The export front end is the installed package ``pf_keras_export`` (the repository's
``export/`` folder, installed editable by ``make setup``).
"""

from __future__ import annotations

import pytest


def small_resnet() -> dict:
    """A ResNet small enough to export in seconds; logits out, so comparisons see raw outputs."""
    return {"depths": [1, 1, 1, 1], "width_mult": 0.125, "classes": 10, "classifier_activation": None}


def small_vit() -> dict:
    return {"patch_size": 8, "hidden_dim": 32, "depth": 2, "num_heads": 2, "classes": 10,
            "classifier_activation": None}


@pytest.fixture(name="small_resnet_kwargs")
def _small_resnet_kwargs() -> dict:
    return small_resnet()


@pytest.fixture(scope="session")
def hybrid_export(tmp_path_factory) -> dict:
    """resnet50_hybrid (small, 64x64) exported to every format, float input."""
    from pf_keras_export.export_lib import export_model

    out = tmp_path_factory.mktemp("hybrid")
    return export_model("resnet50_hybrid", output_dir=str(out), model_kwargs=small_resnet(), image_size=64,
                        num_calibration=16, verbose=False)


@pytest.fixture(scope="session")
def vit_export(tmp_path_factory) -> dict:
    """vit_ti_max (small, 32x32) exported to every format, float input."""
    from pf_keras_export.export_lib import export_model

    out = tmp_path_factory.mktemp("vit")
    return export_model("vit_ti_max", output_dir=str(out), model_kwargs=small_vit(), image_size=32, verbose=False)
