"""A strict check of a TensorFlow checkpoint's files, in Python, before TensorFlow reads them.

TensorFlow's checkpoint reader trusts what the ``.index`` says. Files damaged at random fail its checksums
cleanly, but an index whose block checksums match (written by anyone who recomputes them) can make it abort
the process (``CHECK`` failures on an unknown dtype, a negative or overflowing shape, a duplicated slice, an
entry that is no protobuf), crash it (a string length of 2^40 in a data shard), or allocate gigabytes (a
declared shape of 2^31 floats, a string of 2^32 bytes) from a file of a few KB. A resume reads every
checkpoint of the run folder, so one such file would kill every restart of the run.

:func:`problem` reads the ``.index`` as TensorFlow would (an SSTable: footer, index block, data blocks, each
entry's key and ``BundleEntryProto``) and refuses, naming the entry, anything TensorFlow's reader is not
known to handle safely: blocks out of the file or compressed (ours never are), restart points that are not
entry starts (a seek would read other entries than a scan), keys out of order or repeated, an unknown or
exotic dtype, a rank above 32, a negative dimension, a byte count that is not the element count times the
item size, a slice, an entry outside its shard's file, and string tensors whose declared lengths do not add
up to their byte count (read from the data shard). What passes is read by TensorFlow with its own checks
(the CRC32C of every tensor), within the size of the files.
"""

from __future__ import annotations

import os
import struct

from tensorflow.core.protobuf import tensor_bundle_pb2

from pf_keras import safe_open

MAX_INDEX_BYTES = 8 << 20  # a ViT-B run's index (weights, EMA, optimizer slots) is ~0.1 MB; bounds the entries parsed
MAX_RANK = 32
_MAGIC = 0xDB4775248B80FB57  # the SSTable footer's magic number
_FOOTER = 48
_TRAILER = 5  # a block's compression type byte and masked CRC32C
# DataType enum value -> bytes per element (None: a string tensor, laid out as lengths then bytes)
_ITEM_SIZE = {1: 4, 2: 8, 3: 4, 4: 1, 5: 2, 6: 1, 7: None, 8: 8, 9: 8, 10: 1, 14: 2, 17: 2, 18: 16, 19: 2,
              22: 4, 23: 8}


class _Bad(Exception):
    """Why the files are refused (one line)."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Bad("a malformed varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _block(buf: bytes, offset: int, size: int, what: str) -> bytes:
    if offset < 0 or size < 4 or offset + size + _TRAILER > len(buf) - _FOOTER:
        raise _Bad(f"its {what} lies outside the file")
    if buf[offset + size] != 0:
        raise _Bad(f"its {what} is compressed (type {buf[offset + size]}); checkpoints are written uncompressed")
    return buf[offset:offset + size]


def _entries(block: bytes, what: str) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of an SSTable block, checking that every restart point starts an entry."""
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * restarts
    if restarts < 1 or end < 0:
        raise _Bad(f"its {what} has a malformed restart array")
    points = struct.unpack_from(f"<{restarts}I", block, end)
    pos, key, out, starts = 0, b"", [], set()
    while pos < end:
        start = pos
        shared, pos = _varint(block, pos, end)
        unshared, pos = _varint(block, pos, end)
        length, pos = _varint(block, pos, end)
        if shared > len(key) or pos + unshared + length > end:
            raise _Bad(f"its {what} has a malformed entry")
        if shared == 0:
            starts.add(start)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        out.append((key, block[pos:pos + length]))
        pos += length
    if points[0] != 0 or any(p not in starts for p in points) or list(points) != sorted(set(points)):
        raise _Bad(f"its {what} has restart points that are no entry starts")
    return out


def _read_index(path: str) -> list[tuple[bytes, bytes]]:
    buf = safe_open.read_bytes(path, MAX_INDEX_BYTES)
    if len(buf) < _FOOTER or struct.unpack_from("<Q", buf, len(buf) - 8)[0] != _MAGIC:
        raise _Bad("its .index file is no checkpoint index (no table footer)")
    footer = len(buf) - _FOOTER
    pos = footer
    for _ in range(2):  # the metaindex handle (unused by the reader), then the index block's
        offset, pos = _varint(buf, pos, footer + 40)
        size, pos = _varint(buf, pos, footer + 40)
    index = _entries(_block(buf, offset, size, "index block"), "index block")
    entries: list[tuple[bytes, bytes]] = []
    for _, handle in index:
        offset, at = _varint(handle, 0, len(handle))
        size, at = _varint(handle, at, len(handle))
        entries += _entries(_block(buf, offset, size, "data block"), "data block")
    keys = [key for key, _ in entries]
    if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
        raise _Bad("its .index keys are out of order or repeated")
    return entries


def _name(key: bytes) -> str:
    return repr(key.decode("utf-8", "replace")[:120])


def _check_string(shard: str, entry, elements: int, name: str) -> None:
    """A string tensor is ``elements`` varint64 lengths, a 4-byte checksum, then the bytes: they must add up."""
    with open(safe_open.open_fd(shard), "rb") as f:
        f.seek(entry.offset)
        data = f.read(entry.size)
    if len(data) != entry.size:
        raise _Bad(f"entry {name} lies outside its .data file")
    pos, total = 0, 0
    for _ in range(elements):
        length, pos = _varint(data, pos, len(data))
        total += length
    if pos + 4 + total != entry.size:
        raise _Bad(f"entry {name}: its strings' lengths ({total} bytes) do not fill its {entry.size} bytes")


def problem(prefix: str, shards: dict[int, str]) -> str | None:
    """None if the checkpoint ``prefix`` passes the checks above, else why not (one line).

    ``shards``: shard number -> path of each ``.data`` file, already found to be regular files.
    """
    try:
        entries = _read_index(prefix + ".index")
        if not entries or entries[0][0] != b"":
            raise _Bad("its .index has no header entry")
        header = tensor_bundle_pb2.BundleHeaderProto()
        header.ParseFromString(entries[0][1])
        if header.num_shards != len(shards) or header.endianness != header.LITTLE:
            raise _Bad(f"its header names {header.num_shards} shard(s) ({len(shards)} present) or big-endian data")
        sizes = {shard: os.path.getsize(path) for shard, path in shards.items()}
        for key, value in entries[1:]:
            name = _name(key)
            entry = tensor_bundle_pb2.BundleEntryProto()
            try:
                entry.ParseFromString(value)
            except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends: not an entry
                raise _Bad(f"entry {name} is not a tensor entry") from None
            if entry.dtype not in _ITEM_SIZE:
                raise _Bad(f"entry {name} has dtype {entry.dtype}, not one a checkpoint of this run holds")
            dims = [d.size for d in entry.shape.dim]
            if entry.shape.unknown_rank or len(dims) > MAX_RANK or any(d < 0 for d in dims):
                raise _Bad(f"entry {name} has shape {dims[:8]}{'...' * (len(dims) > 8)}")
            if entry.slices:
                raise _Bad(f"entry {name} is sliced; checkpoints of this run are not")
            elements = 1
            for d in dims:
                elements *= d
            item = _ITEM_SIZE[entry.dtype]
            if entry.shard_id not in sizes or entry.offset < 0 or entry.offset + entry.size > sizes[entry.shard_id]:
                raise _Bad(f"entry {name} lies outside its .data file")
            if item is None:
                if entry.size < elements + 4:
                    raise _Bad(f"entry {name}: {elements} strings cannot fit in {entry.size} bytes")
                _check_string(shards[entry.shard_id], entry, elements, name)
            elif entry.size != elements * item:
                raise _Bad(f"entry {name}: shape {dims} of {item}-byte values is not its {entry.size} bytes")
    except _Bad as bad:
        return str(bad)
    except OSError as error:
        return f"it cannot be read ({error.strerror or error})"
    except Exception as error:  # noqa: BLE001 - the header protobuf: DecodeError
        return f"its .index is malformed ({type(error).__name__})"
    return None
