"""Helpers of the training tests: 2 logical CPUs, tiny datasets and recipes."""

from __future__ import annotations

import dataclasses
import io
import socket

import numpy as np
import pytest
import tensorflow as tf

from pf_keras_training import builtin_data, recipes

# The mirrored tests need two logical CPU devices, which must exist before TensorFlow starts.
try:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # already initialised by another test module: loop.configure_cpu_replicas reports it
    pass

TINY_MODEL = {"depths": (1, 1, 1, 1), "width_mult": 0.125}


def tiny_recipe(dataset: str, **overrides) -> recipes.Recipe:
    """The demo recipe shrunk for tests: a tiny R50-hybrid on 32x32 images, batch 16, 6 steps/epoch."""
    recipe = recipes.get_recipe("demo")
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, kwargs=dict(TINY_MODEL)))
    base = {"data.dataset": dataset, "data.global_batch_size": 16, "data.image_size": 32,
            "schedule.epochs": 2, "schedule.steps_per_epoch": 6, "schedule.warmup_epochs": 0,
            "schedule.decay": "constant", "optim.base_lr": 2e-3, "optim.base_batch_size": 16,
            "steps_per_loop": 3, "checkpoint_every_steps": 4}
    base.update(overrides)
    return recipes.apply_overrides(recipe, base)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> str:
    """A small builtin-style dataset: 10 classes x 24 train / 4 val images (40x40 JPEGs)."""
    return builtin_data.generate(str(tmp_path_factory.mktemp("shapes") / "data"), train_per_class=24, val_per_class=4)


@pytest.fixture(scope="session")
def make_recipe():
    """:func:`tiny_recipe` as a fixture."""
    return tiny_recipe


def jpeg_bytes(array: np.ndarray, mode: str = "RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def truncated_jpeg(array: np.ndarray) -> bytes:
    """A JPEG cut right after its start-of-scan header: no image data at all."""
    data = jpeg_bytes(array)
    sos = data.index(b"\xff\xda")
    length = int.from_bytes(data[sos + 2:sos + 4], "big")
    return data[: sos + 2 + length + 4]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class Images:
    """Encoders for the bad-file tests."""

    jpeg = staticmethod(jpeg_bytes)
    png = staticmethod(png_bytes)
    truncated_jpeg = staticmethod(truncated_jpeg)


@pytest.fixture
def images() -> type[Images]:
    return Images


@pytest.fixture
def port_picker():
    return free_port


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over 2 logical CPUs for the whole session: two strategies over the
    same devices in one process share collective group keys, and their all-reduces collide."""
    from pf_keras_training import loop

    return loop.create_strategy("mirrored", num_replicas=2)
