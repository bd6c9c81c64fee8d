"""Atomic result files: a full disk leaves no partial file and keeps the previous version."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import fill_disk

from pf_keras import create_model, fileio


def _tiny():
    return create_model("resnet50_hybrid", weights=None, depths=[1, 1, 1, 1], width_mult=0.125, classes=10,
                        input_shape=(32, 32, 3))




def test_save_weights_round_trip(tmp_path):
    model = _tiny()
    path = tmp_path / "m.weights.h5"
    fileio.save_weights(model, path)
    other = _tiny()
    other.load_weights(path)
    for a, b in zip(model.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert os.listdir(tmp_path) == ["m.weights.h5"]


def test_full_disk_keeps_previous_version_and_leaves_no_temp(small_disk):
    path = small_disk / "report.json"
    fileio.write_json(path, {"version": 1})
    fill_disk(small_disk, leave=1024)
    with pytest.raises(fileio.WriteError, match=r"cannot write .*report\.json \(ENOSPC"):
        fileio.write_bytes(path, b"x" * 200_000)
    assert path.read_text() == '{\n  "version": 1\n}\n'
    assert sorted(os.listdir(small_disk)) == ["filler.bin", "report.json"]


def test_full_disk_weights(small_disk):
    with pytest.raises(fileio.WriteError, match="ENOSPC"):
        fileio.save_weights(_tiny(), small_disk / "m.weights.h5")
    assert os.listdir(small_disk) == []


def test_directory_replaced_whole(tmp_path):
    target = tmp_path / "saved_model"
    for name in ("a", "b"):
        with fileio.atomic_path(target, directory=True) as temp:
            os.makedirs(temp)
            (open(os.path.join(temp, name), "w")).close()
    assert os.listdir(target) == ["b"]
    assert os.listdir(tmp_path) == ["saved_model"]


def test_failed_block_removes_temp(tmp_path):
    with pytest.raises(RuntimeError), fileio.atomic_path(tmp_path / "x.bin") as temp:
        open(temp, "wb").write(b"partial")
        raise RuntimeError("writer died")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_results_get_the_permissions_of_a_new_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        fileio.write_text(tmp_path / "report.json", "{}")
        with fileio.atomic_path(tmp_path / "saved_model", directory=True) as temp:
            os.makedirs(temp, mode=0o700)
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "report.json").st_mode & 0o777 == 0o666 & ~umask
    assert os.stat(tmp_path / "saved_model").st_mode & 0o777 == 0o777 & ~umask


def test_a_folder_replacing_a_file_leaves_nothing_behind(tmp_path):
    (tmp_path / "saved_model").write_text("a file in the folder's place")
    with fileio.atomic_path(tmp_path / "saved_model", directory=True) as temp:
        os.makedirs(temp)
    assert os.path.isdir(tmp_path / "saved_model") and os.listdir(tmp_path) == ["saved_model"]
