"""Shared test helpers: the PyTorch parity fixtures copied from the official code."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # `make test` runs pytest-xdist workers, one per core
    # The cores shared out between the workers (and their subprocesses) before TensorFlow starts: N workers x N
    # intra-op threads on N cores only thrash. The inter-op pool keeps its default, so collectives never starve.
    _cores = len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(_cores, 1)))

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def load_fixture(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, arrays) of ``tests/fixtures/<name>.{json,npz}``."""
    with open(os.path.join(FIXTURES, f"{name}.json")) as f:
        meta = json.load(f)
    with np.load(os.path.join(FIXTURES, f"{name}.npz")) as data:
        arrays = {k: data[k] for k in data.files}
    return meta, arrays


def state_dict_of(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The PyTorch state dict stored under ``sd/`` in a fixture."""
    return {k[len("sd/") :]: v for k, v in arrays.items() if k.startswith("sd/")}


def load_published_manifest(name: str) -> dict:
    """Keys, shapes and parameter count of an official model (the package's copy, ``pf_keras/data/published``)."""
    from pf_keras.models.specs import load_manifest

    return load_manifest(name)


def randomised(model, seed: int = 0, std: float = 0.1):
    """Assigns seeded normal weights (variances shifted to stay positive) and returns ``model``."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0, std, w.shape).astype("float32") + (1.0 if "variance" in w.path else 0.0))
    return model


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 2, 3, 1))


# Under xdist the slowest tests (multi-process training, the JAX subprocess) start first: one of them started last
# would leave the other worker idle until it ends.
SLOW_FIRST = ("tests/training/", "tests/backend_test.py")


def pytest_collection_modifyitems(items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: not item.nodeid.startswith(SLOW_FIRST))


@pytest.fixture(autouse=True)
def _clear_keras_session():
    import keras

    # Fresh Keras names and global state for every test; without the full gc.collect() (0.15 s a test with
    # TensorFlow loaded, a sixth of the suite's CPU time): Python's own collector still runs.
    keras.utils.clear_session(free_memory=False)
    yield


@pytest.fixture
def small_disk(tmp_path):
    """A folder on its own 256 KiB tmpfs, to provoke ENOSPC for real (needs root, as here and in CI).

    Fill it with :func:`fill_disk` to leave a chosen number of bytes free.
    """
    import subprocess

    mount = tmp_path / "small_disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_disk(folder, leave: int = 0) -> None:
    """Fills the file system of ``folder`` until about ``leave`` bytes are free."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(os.path.join(folder, "filler.bin"), "wb") as f:
        try:
            f.write(b"\0" * max(free - leave, 0))
        except OSError:
            pass


def live_input_iterators() -> set[int]:
    """ids of the live tf.data iterators (a distributed iterator holds one per device), collected or not."""
    import gc

    return {id(o) for o in gc.get_objects() if type(o).__name__ in ("OwnedIterator", "OwnedMultiDeviceIterator")}
