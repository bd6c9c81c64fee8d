"""The hostile-checkpoint corpus (``tests/hostile_checkpoints.py``) against the reader.

Every case is refused with exactly :class:`CheckpointError` and one line naming the file and
the problem, or (cases marked None) read correctly, and in every case the payload in the
pickle never ran. The worst files are read in a subprocess whose peak memory and time are
measured.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import zipfile

import hostile_checkpoints as hostile
import numpy as np
import pytest
from conftest import FIXTURES
from torch_save_writer import save_state_dict, write_archive

from pf_keras.weights import CheckpointError, ReadLimits, read_state_dict, read_torch_file
from pf_keras.weights.torch_reader import Placeholder

PEAK_BOUND = 256 << 20  # bytes above the interpreter's resident size while reading one file
TOTAL_BOUND = 512 << 20  # peak resident size of the whole reading process (Python + NumPy + all files)
TIME_BOUND = 60.0  # seconds per file (the bound; measured: about 4 s for the worst)


@pytest.fixture(autouse=True)
def _clear_keras_session():
    """Overrides conftest's: nothing here builds a Keras model, and clearing costs a second per test."""
    yield


def _refused(path, pattern: str, read=read_torch_file) -> str:
    with pytest.raises(CheckpointError) as info:
        read(path)
    message = str(info.value)
    assert type(info.value) is CheckpointError
    assert re.search(pattern, message), message
    assert "\n" not in message and len(message) < 600, message
    assert str(path) in message
    return message


class TestCorpus:
    @pytest.mark.parametrize("case", [c for c in hostile.CASES if not c.heavy], ids=lambda c: c.name)
    def test_case_is_refused_or_read_and_nothing_runs(self, case, tmp_path):
        path, marker = str(tmp_path / f"{case.name}.pth"), str(tmp_path / "PWNED")
        case.write(path, marker)
        if case.error is None:
            tree = read_torch_file(path)
            np.testing.assert_array_equal(tree["w"], np.arange(4, dtype=np.float32))
            assert tree["w"].dtype == np.float32 and tree["w"].dtype.isnative
            assert isinstance(tree["payload"], Placeholder) and tree["payload"].qualname == "os.system"
        else:
            _refused(path, case.error)
        assert not os.path.exists(marker)

    def test_state_dict_reader_refuses_the_same(self, tmp_path):
        path = str(tmp_path / "negative.pth")
        hostile.BY_NAME["negative_stride"].write(path, str(tmp_path / "PWNED"))
        _refused(path, r"tensor 'w' .*has stride -1", read=read_state_dict)

    @pytest.mark.parametrize("kind", sorted(hostile.PAYLOADS))
    def test_payload_never_runs(self, kind, tmp_path):
        path, marker = str(tmp_path / "payload.pth"), str(tmp_path / "PWNED")
        hostile.write_payload(path, marker, kind)
        tree = read_torch_file(path)
        assert not os.path.exists(marker)
        np.testing.assert_array_equal(tree["w"], np.arange(4, dtype=np.float32))
        assert isinstance(tree["payload"], Placeholder)
        _refused(path, r"No state dict found", read=read_state_dict)  # a placeholder is not a tensor

    def test_payload_is_live_under_plain_pickle(self, tmp_path):
        """The corpus is really hostile: plain pickle runs the payload (before failing at the storage)."""
        path, marker = str(tmp_path / "payload.pth"), str(tmp_path / "PWNED")
        hostile.write_payload(path, marker, "reduce_os_system")
        with zipfile.ZipFile(path) as archive:
            data = archive.read("payload/data.pkl")
        with pytest.raises((pickle.UnpicklingError, ModuleNotFoundError)):  # no persistent_load; no torch
            pickle.loads(data)  # noqa: S301 - deliberately unsafe, to prove the payload works
        assert os.path.exists(marker)


class TestValidFiles:
    def test_big_endian_and_every_dtype_round_trip(self, tmp_path):
        arrays = {
            "f32": np.array([[1.5, -2.0], [3.25, 4.0]], np.float32),
            "f64": np.array([0.1, -1e300], np.float64),
            "f16": np.array([1.5, -2.0], np.float16),
            "i64": np.array([1, -(2**40)], np.int64),
            "i32": np.array([7, -7], np.int32),
            "u8": np.array([0, 255], np.uint8),
            "bool": np.array([True, False]),
            "empty": np.zeros((0, 3), np.float32),
            "scalar": np.array(2.5, np.float32),
        }
        for order in ("little", "big"):
            path = str(tmp_path / f"{order}.pth")
            save_state_dict(path, arrays, keep_dtypes=True, byteorder=order)
            sd = read_state_dict(path)
            for key, value in arrays.items():
                assert sd[key].dtype == value.dtype and sd[key].dtype.isnative, (order, key)
                np.testing.assert_array_equal(sd[key], value, err_msg=f"{order} {key}")

    def test_views_do_not_alias_and_are_writable(self):
        t = read_torch_file(os.path.join(FIXTURES, "pth", "tensors.pth"))  # base, row and transposed share one storage
        base = np.arange(12, dtype=np.float32).reshape(3, 4)
        t["base"] += 100
        np.testing.assert_array_equal(t["row"], base[1])
        np.testing.assert_array_equal(t["transposed"], base.T)

    def test_limits_are_parameters(self):
        path = os.path.join(FIXTURES, "pth", "resnet_max_small.pth")
        _refused(
            path,
            r"more than 100 pickle opcodes",
            read=lambda p: read_torch_file(p, limits=ReadLimits(max_pickle_ops=100)),
        )
        _refused(
            path,
            r"ReadLimits.max_data_bytes",
            read=lambda p: read_torch_file(p, limits=ReadLimits(max_data_bytes=10_000)),
        )
        _refused(
            path,
            r"zip entries, more than the limit of 5",
            read=lambda p: read_torch_file(p, limits=ReadLimits(max_members=5)),
        )
        _refused(path, r"nests more than 1 marks", read=lambda p: read_torch_file(p, limits=ReadLimits(max_depth=1)))

    def test_missing_file_fifo_and_device_are_one_line(self, tmp_path):
        _refused(tmp_path / "absent.pth", r"absent.pth: not a regular file")
        os.mkfifo(tmp_path / "fifo.pth")  # opening it would block forever
        _refused(tmp_path / "fifo.pth", r"fifo.pth: not a regular file")
        _refused("/dev/zero", r"/dev/zero: not a regular file")


class TestFuzz:
    """Seeded random damage to a real torch.save file: every outcome is a value or one CheckpointError line."""

    @pytest.mark.parametrize("target", ["pickle", "file"])
    def test_mutations_never_escape(self, tmp_path, target):
        import random

        source = os.path.join(FIXTURES, "pth", "tensors.pth")
        with zipfile.ZipFile(source) as archive:
            pickled = archive.read("tensors/data.pkl")
            storages = {n.rsplit("/", 1)[1]: archive.read(n) for n in archive.namelist() if "/data/" in n}
        with open(source, "rb") as f:
            whole = f.read()
        rng = random.Random(8)
        path = str(tmp_path / "fuzz.pth")
        outcomes = {"read": 0, "refused": 0}
        for _ in range(150):
            data = bytearray(pickled if target == "pickle" else whole)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.2:
                data = data[: rng.randrange(len(data))]
            if target == "pickle":
                write_archive(path, bytes(data), storages, root="tensors")
            else:
                with open(path, "wb") as f:
                    f.write(data)
            try:
                read_torch_file(path)
                outcomes["read"] += 1
            except CheckpointError as error:
                assert "\n" not in str(error) and path in str(error)
                outcomes["refused"] += 1
        assert outcomes["refused"] > 50, outcomes


_PEAK_SCRIPT = r"""
import json, os, sys, time, types

# Import the reader alone (numpy, zipfile, pickletools), not pf_keras/__init__ and its Keras.
for name in ("pf_keras", "pf_keras.weights"):
    package = types.ModuleType(name)
    package.__path__ = [os.path.join(os.getcwd(), *name.split("."))]
    sys.modules[name] = package
from pf_keras.weights.errors import CheckpointError
from pf_keras.weights.torch_reader import read_torch_file

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

results, highest = [], status("VmHWM:")  # (ru_maxrss would include the forked parent's pages)
for path in sys.argv[1:]:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current resident size
    base = status("VmRSS:")
    start = time.perf_counter()
    try:
        read_torch_file(path)
        error = None
    except CheckpointError as e:
        error = str(e)
    seconds = time.perf_counter() - start
    results.append({"path": path, "seconds": seconds, "peak": status("VmHWM:") - base, "error": error})
    highest = max(highest, status("VmHWM:"))
assert "keras" not in sys.modules
print(json.dumps({"files": results, "maxrss": highest}))
"""


def test_worst_files_peak_memory_and_time(tmp_path):
    """Reads the costliest files of the corpus in one subprocess; each stays under PEAK_BOUND and TIME_BOUND."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs /proc/self/clear_refs to measure the peak of each read")
    paths = []
    for name in hostile.WORST:
        paths.append(str(tmp_path / f"{name}.pth"))
        hostile.BY_NAME[name].write(paths[-1], str(tmp_path / "PWNED"))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, *paths],
        capture_output=True,
        text=True,
        timeout=len(paths) * TIME_BOUND,
        cwd=root,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"whole process: peak resident {report['maxrss'] / 2**20:.0f} MiB")
    assert report["maxrss"] < TOTAL_BOUND
    for entry in report["files"]:
        case = hostile.BY_NAME[os.path.basename(entry["path"])[: -len(".pth")]]
        print(f"{case.name}: {entry['seconds']:.2f} s, peak +{entry['peak'] / 2**20:.0f} MiB")
        assert entry["peak"] < PEAK_BOUND, entry
        assert entry["seconds"] < TIME_BOUND, entry
        if case.error is None:
            assert entry["error"] is None, entry
        else:
            assert entry["error"] and re.search(case.error, entry["error"]), entry
    assert not os.path.exists(tmp_path / "PWNED")


def test_one_error_type_exported_everywhere():
    import pf_keras

    assert pf_keras.CheckpointError is CheckpointError and issubclass(CheckpointError, ValueError)
