"""pf_keras.safe_open: FIFOs, devices, folders, symlinks and huge files are refused without blocking."""

from __future__ import annotations

import errno
import os

import pytest

from pf_keras import safe_open


def test_regular_files_and_json_are_read(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"a": [1, 2]}')
    assert safe_open.read_json(path) == {"a": [1, 2]}
    assert safe_open.read_bytes(path, 100) == b'{"a": [1, 2]}'
    link = tmp_path / "link.json"
    link.symlink_to(path)
    assert safe_open.read_json(link) == {"a": [1, 2]}  # reading follows symlinks to regular files


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_what_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    path = tmp_path / "x.json"
    if kind == "fifo":
        os.mkfifo(path)  # a plain open() for reading would block until a writer appears
    elif kind == "device":
        path.symlink_to("/dev/zero")  # would never end
    else:
        path.mkdir()
    with pytest.raises(safe_open.NotRegularFileError, match="not a regular file"):
        safe_open.read_json(path)
    with pytest.raises(safe_open.NotRegularFileError):
        os.close(safe_open.open_fd(path, os.O_RDONLY))


def test_writes_into_our_folder_never_follow_a_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / ".lock"
    link.symlink_to(victim)
    with pytest.raises(OSError) as info:
        safe_open.open_fd(link, os.O_RDWR | os.O_CREAT, follow=False)
    assert info.value.errno == errno.ELOOP and victim.read_text() == "keep me"
    fifo = tmp_path / "metrics.jsonl"
    os.mkfifo(fifo)  # opening a FIFO for writing would block until a reader appears
    with pytest.raises(OSError):
        safe_open.open_fd(fifo, os.O_WRONLY | os.O_APPEND | os.O_CREAT, follow=False)


def test_size_limit_and_deep_json(tmp_path):
    path = tmp_path / "big.json"
    with open(path, "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB declared, nothing read
    with pytest.raises(OSError) as info:
        safe_open.read_json(path)
    assert info.value.errno == errno.EFBIG
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        safe_open.read_json(path)
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError):
        safe_open.read_json(path)
