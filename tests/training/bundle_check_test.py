"""Crafted checkpoints (index and data edited, checksums recomputed) are refused by ``checkpoint.verify`` in one
line, before TensorFlow's reader aborts the process, crashes or allocates gigabytes on them; a resume falls back
to the newest intact checkpoint. The files are written here: an SSTable writer with CRC32C in pure Python."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import tensor_bundle_pb2

from pf_keras_training import bundle_check, checkpoint

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def _crc32c(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _block(entries, restarts=None) -> bytes:
    body, starts = bytearray(), []
    for key, value in entries:  # every entry a restart point (no shared key prefix)
        starts.append(len(body))
        body += _varint(0) + _varint(len(key)) + _varint(len(value)) + key + value
    starts = restarts if restarts is not None else (starts or [0])
    return bytes(body) + struct.pack(f"<{len(starts)}I", *starts) + struct.pack("<I", len(starts))


def _table(entries, *, compression: int = 0, restarts=None) -> bytes:
    """An SSTable of ``entries`` as TensorFlow's reader takes it: one data block, empty metaindex, index, footer."""
    out = bytearray()

    def put(block: bytes, kind: int = 0) -> bytes:
        offset = len(out)
        out.extend(block + bytes([kind]) + struct.pack("<I", _mask(_crc32c(block + bytes([kind])))))
        return _varint(offset) + _varint(len(block))

    data = put(_block(entries, restarts), compression)
    meta = put(_block([]))
    index = put(_block([(entries[-1][0], data)]))
    out += (meta + index).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    return bytes(out)


def _string_tensor(lengths, body: bytes) -> tuple[bytes, int]:
    """The data-file bytes of a string tensor (lengths, their checksum, the bytes) and its entry's crc32c."""
    crc = 0
    for length in lengths:
        crc = _crc32c(struct.pack("<I", length) if length <= 0xFFFFFFFF else struct.pack("<Q", length), crc)
    head = b"".join(_varint(length) for length in lengths) + struct.pack("<I", _mask(crc))
    full = _crc32c(struct.pack("<I", _mask(crc)), crc)
    return head + body, _mask(_crc32c(body, full))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint of float, int64 and string variables: (prefix, [(key, value)] of its index, data bytes)."""
    folder = tmp_path_factory.mktemp("bundle")
    ckpt = tf.train.Checkpoint(w=tf.Variable(np.arange(12, dtype=np.float32).reshape(3, 4)),
                               step=tf.Variable(12345, dtype=tf.int64), tag=tf.Variable(b"pf-keras"))
    prefix = ckpt.write(str(folder / "ckpt-1"))
    entries = bundle_check._read_index(prefix + ".index")
    with open(prefix + ".data-00000-of-00001", "rb") as f:
        return prefix, entries, f.read()


def _key(entries, part: bytes) -> bytes:
    return next(key for key, _ in entries if part in key)


def _entry(entries, key: bytes) -> tensor_bundle_pb2.BundleEntryProto:
    entry = tensor_bundle_pb2.BundleEntryProto()
    entry.ParseFromString(dict(entries)[key])
    return entry


def _write(folder, name: str, entries, data: bytes, **table) -> str:
    prefix = str(folder / name / "ckpt-2")
    os.makedirs(os.path.dirname(prefix))
    with open(prefix + ".index", "wb") as f:
        f.write(_table(entries, **table))
    with open(prefix + ".data-00000-of-00001", "wb") as f:
        f.write(data)
    return prefix


def _edited(entries, key: bytes, edit) -> list:
    entry = _entry(entries, key)
    value = edit(entry)
    return [(k, (value if isinstance(value, bytes) else entry.SerializeToString()) if k == key else v)
            for k, v in entries]


def _crafted(saved, folder) -> dict[str, tuple[str, str]]:
    """name -> (prefix, the words its refusal must contain). Each one aborted, crashed or over-allocated in
    TensorFlow 2.21's reader (checked before this check existed), except the block-level ones."""
    _, entries, data = saved
    w, tag = _key(entries, b"w/"), _key(entries, b"tag/")

    def shape(*dims):
        def edit(entry):
            del entry.shape.dim[:]
            for d in dims:
                entry.shape.dim.add().size = d
        return edit

    def sliced(entry):
        entry.slices.add().extent.add(start=0, length=-5)

    long_string, long_crc = _string_tensor([1 << 40], b"")
    string_data = data + long_string

    def long_tag(entry):
        entry.offset, entry.size, entry.crc32c = len(data), len(long_string), long_crc

    cases = {
        "not_an_entry": (_edited(entries, w, lambda e: b"\xff\xff\xff"), data, {}, "is not a tensor entry"),
        "unknown_dtype": (_edited(entries, w, lambda e: setattr(e, "dtype", 101)), data, {}, "has dtype 101"),
        "negative_dim": (_edited(entries, w, shape(-1, 12)), data, {}, "has shape [-1, 12]"),
        "overflowing_shape": (_edited(entries, w, shape(1 << 32, 1 << 32)), data, {}, "is not its 48 bytes"),
        "too_many_dims": (_edited(entries, w, shape(*[1] * 300)), data, {}, "has shape [1, 1, 1, 1"),
        "huge_shape": (_edited(entries, w, shape(1 << 40)), data, {}, "is not its 48 bytes"),
        "sliced": (_edited(entries, w, sliced), data, {}, "is sliced"),
        "string_of_2_40_bytes": (_edited(entries, tag, long_tag), string_data, {},
                                 "lengths (1099511627776 bytes) do not fill"),
        "outside_the_data_file": (_edited(entries, w, lambda e: setattr(e, "offset", 1 << 40)), data, {},
                                  "lies outside its .data file"),
        "compressed_block": (entries, data, {"compression": 1}, "is compressed"),
        "restart_inside_an_entry": (entries, data, {"restarts": [0, 3]}, "restart points that are no entry starts"),
        "keys_out_of_order": (list(reversed(entries[1:])) + entries[:1], data, {}, "out of order"),
    }
    return {name: (_write(folder, name, e, d, **table), words) for name, (e, d, table, words) in cases.items()}


def test_an_intact_checkpoint_and_its_rewritten_index_pass(saved, tmp_path):
    prefix, entries, data = saved
    assert bundle_check.problem(prefix, {0: prefix + ".data-00000-of-00001"}) is None
    assert checkpoint.verify(prefix) is None
    rewritten = _write(tmp_path, "same", entries, data)  # our writer's table: TensorFlow reads it back
    assert checkpoint.verify(rewritten) is None
    assert int(tf.train.load_checkpoint(rewritten).get_tensor(_key(entries, b"step/").decode())) == 12345


def test_crafted_checkpoints_are_one_line_not_a_dead_process(saved, tmp_path):
    cases = _crafted(saved, tmp_path)
    script = ("import json, sys\n"
              "from pf_keras_training import checkpoint\n"
              "cases = json.loads(sys.argv[1])\n"
              "print(json.dumps({name: checkpoint.verify(prefix) for name, prefix in cases.items()}))\n")
    done = subprocess.run([sys.executable, "-c", script, json.dumps({n: p for n, (p, _) in cases.items()})],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    reasons = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (_, words) in cases.items():
        assert reasons[name] is not None and words in reasons[name], (name, reasons[name])
        assert "\n" not in reasons[name]


def test_a_resume_sets_a_crafted_newest_checkpoint_aside_and_uses_the_intact_one(saved, tmp_path):
    _, entries, data = saved
    model_dir = tmp_path / "run"
    folder = model_dir / "checkpoints"
    folder.mkdir(parents=True)
    ckpt = tf.train.Checkpoint(w=tf.Variable(np.zeros((3, 4), np.float32)), step=tf.Variable(0, dtype=tf.int64),
                               tag=tf.Variable(b""))
    checkpointer = checkpoint.Checkpointer(str(model_dir), tf.distribute.get_strategy(), w=ckpt.w, step=ckpt.step,
                                           tag=ckpt.tag)
    ckpt.step.assign(7)
    checkpointer.save(1)
    ckpt.step.assign(0)
    w = _key(entries, b"w/")
    crafted = _table(_edited(entries, w, lambda e: setattr(e, "dtype", 101)))
    (folder / "ckpt-2.index").write_bytes(crafted)
    (folder / "ckpt-2.data-00000-of-00001").write_bytes(data)
    chosen, note = checkpointer.choose()
    assert chosen == str(folder / "ckpt-1")
    assert note.startswith("ckpt-2 (entry ") and "has dtype 101" in note and note.endswith(
        "resuming from ckpt-1, the newest intact one")
    checkpointer.restore(chosen)
    assert int(ckpt.step.numpy()) == 7
    assert sorted(os.listdir(folder / "damaged")) == ["ckpt-2.data-00000-of-00001", "ckpt-2.index"]
