"""The hostile-checkpoint corpus: malformed and malicious ``torch.save`` files, written at test time.

Every case is a :class:`Case`: a writer ``write(path, marker)`` and the regular expression
the :class:`pf_keras.weights.CheckpointError` message must match (None: the file must read
fine). Every pickle starts with ``"payload": os.system("touch <marker>")``, so a test also
proves that nothing from the file ran: the marker must not exist afterwards.

No binary is committed: the files are built from :mod:`torch_save_writer`'s pickle
encoder and zip writer, then damaged byte by byte where a case needs it. The zip bombs
inflate to 64 MiB from about 64 KiB.

``WORST`` names the cases that would have cost the most memory or time, for the peak-memory
test (``tests/weights/hostile_test.py``).
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zipfile
from collections.abc import Callable

import numpy as np
from torch_save_writer import Call, Global, Persistent, Raw, encode, pickle_of, tensor, write_archive

F4 = np.arange(4, dtype="<f4").tobytes()  # a 4-element FloatStorage
BOMB_BYTES = 64 << 20  # what the zip bombs inflate to
MAX_ENTRIES_CLAIMED = 300_000  # above ReadLimits.max_members


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    write: Callable[[str, str], None]
    error: str | None  # regular expression of the message; None: reads fine
    heavy: bool = False  # only read in the peak-memory subprocess (seconds of work, 100s of MB)


def payload(marker: str) -> Call:
    """A call that creates ``marker`` if the pickle is run by ``pickle.load``."""
    return Call(Global("os", "system"), (f"touch {marker}",))


def _checkpoint(path: str, marker: str, entries: dict, storages: dict[str, bytes] | None = None, **kwargs) -> None:
    tree = {"payload": payload(marker), **entries}
    write_archive(path, pickle_of(tree), {"0": F4} if storages is None else storages, **kwargs)


def _one_tensor(offset=0, size=(4,), stride=(1,), *, storage_type="FloatStorage", numel=4, extra=()):
    def write(path: str, marker: str) -> None:
        _checkpoint(path, marker, {"w": tensor(storage_type, "0", numel, offset, size, stride, *extra)})

    return write


def _raw_pickle(body: bytes, *, prefix: bool = True):
    """A pickle ``{"payload": ..., "x": <body>}`` (prefix) or exactly ``body``."""

    def write(path: str, marker: str) -> None:
        data = (
            b"\x80\x02}(" + encode("payload") + encode(payload(marker)) + encode("x") + body + b"u." if prefix else body
        )
        write_archive(path, data, {"0": F4})

    return write


def _central_entry(data: bytes | bytearray, member: str) -> int:
    """Offset of ``member``'s central-directory header in the zip bytes ``data``."""
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + length] == member.encode():
            return at
        at = data.find(b"PK\x01\x02", at + 4)
    raise KeyError(member)


def _patch(path: str, member: str, *, file_size: int | None = None, flag_bits: int | None = None) -> None:
    with open(path, "rb") as f:
        data = bytearray(f.read())
    at = _central_entry(data, member)
    if file_size is not None:
        struct.pack_into("<I", data, at + 24, file_size)
    if flag_bits is not None:
        struct.pack_into("<H", data, at + 8, flag_bits)
    with open(path, "wb") as f:
        f.write(data)


def _write_bomb_member(archive: zipfile.ZipFile, name: str, head: bytes, total: int, fill: bytes) -> None:
    """A deflated member ``head + fill * ...`` of ``total`` bytes, streamed (never held in memory)."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=True) as stream:
        stream.write(head)
        block = fill * ((1 << 20) // len(fill))
        left = total - len(head)
        while left > 0:
            stream.write(block[:left])
            left -= len(block)


def _bomb(path: str, marker: str, *, in_pickle: bool, lie: bool) -> None:
    root = os.path.basename(path).split(".")[0]
    numel = 4 if lie else BOMB_BYTES // 4
    head = b"\x80\x02}(" + encode("payload") + encode(payload(marker))
    tail = encode("w") + encode(tensor("FloatStorage", "0", numel, 0, (numel,), (1,))) + b"u."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.compression = zipfile.ZIP_DEFLATED
        if in_pickle:  # "N0" (None, pop) forever: a valid pickle prefix that never ends
            _write_bomb_member(archive, f"{root}/data.pkl", head, BOMB_BYTES, b"N0")
            archive.writestr(f"{root}/data/0", F4)
        else:
            archive.writestr(f"{root}/data.pkl", head + tail)
            _write_bomb_member(archive, f"{root}/data/0", b"", BOMB_BYTES, b"\0")
        archive.writestr(f"{root}/byteorder", "little")
    if lie:  # the central directory claims a small member; the stream still inflates to 64 MiB
        _patch(path, f"{root}/{'data.pkl' if in_pickle else 'data/0'}", file_size=1000 if in_pickle else 16)


def _many_small_bombs(path: str, marker: str) -> None:
    """64 deflated storages of 1 MiB of zeros each (about 1 KiB compressed): each under the ratio, not together."""
    count, numel = 64, (1 << 20) // 4
    entries = {f"w{i}": tensor("FloatStorage", str(i), numel, 0, (numel,), (1,)) for i in range(count)}
    zeros = bytes(1 << 20)
    _checkpoint(path, marker, entries, {str(i): zeros for i in range(count)}, compression=zipfile.ZIP_DEFLATED)


def _crc_error(path: str, marker: str) -> None:
    _checkpoint(path, marker, {"w": tensor("FloatStorage", "0", 4, 0, (4,), (1,))})
    with open(path, "rb") as f:
        data = bytearray(f.read())
    at = data.find(F4)
    data[at + 5] ^= 0xFF
    with open(path, "wb") as f:
        f.write(data)


def _truncated(fraction: float):
    def write(path: str, marker: str) -> None:
        _checkpoint(path, marker, {"w": tensor("FloatStorage", "0", 4, 0, (4,), (1,))})
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(int(size * fraction))

    return write


def _truncated_pickle(path: str, marker: str) -> None:
    data = pickle_of({"payload": payload(marker), "w": tensor("FloatStorage", "0", 4, 0, (4,), (1,))})
    write_archive(path, data[: len(data) * 2 // 3], {"0": F4})


def _duplicate_member(path: str, marker: str) -> None:
    _checkpoint(path, marker, {"w": tensor("FloatStorage", "0", 4, 0, (4,), (1,))})
    root = os.path.basename(path).split(".")[0]
    import warnings

    with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        archive.writestr(f"{root}/data/0", np.full(4, 7, "<f4").tobytes())


def _too_many_entries(path: str, marker: str) -> None:
    """Only end records (zip64 and classic) claiming MAX_ENTRIES_CLAIMED entries."""
    record = struct.pack(
        "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, MAX_ENTRIES_CLAIMED, MAX_ENTRIES_CLAIMED, 0, 0
    )
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, 0, 1)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with open(path, "wb") as f:
        f.write(record + locator + eocd)


def _huge_directory(path: str, marker: str) -> None:
    """An end record claiming one entry in a 100 MiB central directory (zipfile parses by size)."""
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, 100 << 20, 0, 0)
    with open(path, "wb") as f:
        f.write(eocd)


def _storage_redeclared(path: str, marker: str) -> None:
    entries = {
        "a": tensor("FloatStorage", "0", 4, 0, (4,), (1,)),
        "b": tensor("LongStorage", "0", 2, 0, (2,), (1,)),  # the same member as two int64s
    }
    _checkpoint(path, marker, entries)


def _legacy(path: str, marker: str) -> None:
    import pickle

    with open(path, "wb") as f:
        f.write(pickle.dumps({"a": 1}, protocol=2))


def _empty(path: str, marker: str) -> None:
    open(path, "wb").close()


def _encrypted(path: str, marker: str) -> None:
    _checkpoint(path, marker, {"w": tensor("FloatStorage", "0", 4, 0, (4,), (1,))})
    _patch(path, f"{os.path.basename(path).split('.')[0]}/data/0", flag_bits=0x1)


def _two_pickles(path: str, marker: str) -> None:
    _checkpoint(path, marker, {"w": tensor("FloatStorage", "0", 4, 0, (4,), (1,))})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("other/data.pkl", pickle_of({}))


def _pickle_too_large(path: str, marker: str) -> None:
    filler = b"N0" * (9 << 20)  # 18 MiB of (None, pop)
    write_archive(path, b"\x80\x02" + encode(payload(marker)) + b"0" + filler + b"N.", {})


def _deep_lists(path: str, marker: str) -> None:
    write_archive(path, b"\x80\x02" + encode(payload(marker)) + b"0" + b"]" * 100_000 + b"a" * 99_999 + b".", {})


def _deep_tuples(path: str, marker: str) -> None:
    write_archive(path, b"\x80\x02" + encode(payload(marker)) + b"0" + b")" + b"\x85" * 100_000 + b".", {})


def _memo_bomb(path: str, marker: str) -> None:
    # LONG_BINPUT 0x7fffffff: the C unpickler grows its memo array to 2**32 slots (32 GB).
    body = encode(tensor("FloatStorage", "0", 4, 0, (4,), (1,))) + b"r" + struct.pack("<I", 0x7FFFFFFF)
    write_archive(
        path, b"\x80\x02}(" + encode("payload") + encode(payload(marker)) + encode("w") + body + b"u.", {"0": F4}
    )


def _object_bomb(path: str, marker: str) -> None:
    # As many empty lists as the opcode limit allows, all kept alive in one list.
    count = 2_000_000
    write_archive(path, b"\x80\x02" + encode(payload(marker)) + b"0](" + b"]" * count + b"e.", {})


def _placeholder_bomb(path: str, marker: str) -> None:
    # As many calls of a global as the opcode limit allows (3 opcodes each), all kept in one list.
    calls = b"h\x00)R" * 700_000
    write_archive(path, b"\x80\x02" + encode(payload(marker)) + b"0cos\nsystem\nq\x00](" + calls + b"e.", {})


def _bzip2(path: str, marker: str) -> None:
    _checkpoint(path, marker, {"w": tensor("FloatStorage", "0", 4, 0, (4,), (1,))}, compression=zipfile.ZIP_BZIP2)


_V2 = Global("torch._utils", "_rebuild_tensor_v2")
_STORAGE = Persistent(("storage", Global("torch", "FloatStorage"), "0", "cpu", 4))
_HOOKS = Call(Global("collections", "OrderedDict"), ())

CASES = [
    # Tensor views against their storage.
    Case(
        "view_longer_than_storage",
        _one_tensor(size=(64,)),
        r"reaches element 63 .*past the end of its 4-element storage",
    ),
    Case("negative_stride", _one_tensor(offset=3, stride=(-1,)), r"has stride -1 \(negative\); ints in \[0, 2\*\*62\)"),
    Case("negative_offset", _one_tensor(offset=-1), r"has offset -1 \(negative\)"),
    Case(
        "offset_past_end",
        _one_tensor(offset=3, size=(2,)),
        r"reaches element 4 .*past the end of its 4-element storage",
    ),
    Case("scalar_offset_out_of_range", _one_tensor(offset=4, size=(), stride=()), r"reaches element 4 "),
    Case("stride0_huge", _one_tensor(size=(2**28,), stride=(0,)), r"would copy 1073741824 bytes"),
    Case("shape_2_40", _one_tensor(size=(2**40,)), r"reaches element 1099511627775 "),
    Case("shape_2_40_broadcast", _one_tensor(size=(2**20, 2**20), stride=(0, 0)), r"would copy 4398046511104 bytes"),
    Case("huge_int_size", _one_tensor(size=(2**80,)), r"has size <int of 81 bits> \(2\*\*62 or more\)"),
    Case("zero_size_huge_dims", _one_tensor(size=(0, 2**61), stride=(1, 1)), r"over 2\*\*62 bytes even without"),
    Case("bool_offset", _one_tensor(offset=True), r"has offset True \(not an int\)"),
    Case("float_stride", _one_tensor(stride=(1.0,)), r"has stride 1.0 \(not an int\)"),
    Case("sizes_and_strides_differ", _one_tensor(size=(2, 2)), r"has 2 sizes and 1 strides"),
    Case("too_many_dims", _one_tensor(size=(1,) * 40, stride=(1,) * 40), r"has 40 sizes"),
    Case("size_not_a_tuple", _one_tensor(size="abcd"), r"has size 'abcd' and stride \(1,\); tuples expected"),
    # Storages against their members.
    Case("storage_size_mismatch", _one_tensor(numel=8, size=(8,)), r"holds 16 bytes; 32 expected"),
    Case(
        "missing_data_member",
        lambda p, m: _checkpoint(p, m, {"w": tensor("FloatStorage", "9", 4, 0, (4,), (1,))}),
        r"data/9': is missing from the archive",
    ),
    Case(
        "unknown_storage_type",
        _one_tensor(storage_type="ComplexFloatStorage"),
        r"unknown storage type 'torch.ComplexFloatStorage'",
    ),
    Case("storage_redeclared", _storage_redeclared, r"storage 'storage_redeclared/data/0': is declared twice"),
    Case(
        "byteorder_unknown",
        lambda p, m: _checkpoint(p, m, {"w": tensor("FloatStorage", "0", 4, 0, (4,), (1,))}, byteorder="middle"),
        r"is b'middle'; only 'little' and 'big'",
    ),
    Case(
        "big_endian",
        lambda p, m: _checkpoint(
            p,
            m,
            {"w": tensor("FloatStorage", "0", 4, 0, (4,), (1,))},
            {"0": np.arange(4, dtype=">f4").tobytes()},
            byteorder="big",
        ),
        None,
    ),
    # Pickle structure.
    Case(
        "storage_type_as_callable",
        lambda p, m: _checkpoint(p, m, {"w": Call(Global("torch", "FloatStorage"), (4,))}),
        r"tensor 'w': the storage type torch.FloatStorage is used where a callable is expected",
    ),
    Case(
        "callable_as_storage",
        lambda p, m: _checkpoint(p, m, {"w": Call(_V2, (_V2, 0, (4,), (1,), False, _HOOKS))}),
        r"tensor 'w': is built from a _Function where a storage is expected",
    ),
    Case(
        "wrong_arity",
        lambda p, m: _checkpoint(p, m, {"w": Call(_V2, (_STORAGE, 0, (4,)))}),
        r"_rebuild_tensor_v2 takes 6 or 7 arguments, got 3",
    ),
    Case(
        "pid_wrong_shape",
        lambda p, m: _checkpoint(
            p,
            m,
            {
                "w": Call(
                    _V2, (Persistent(("storage", Global("torch", "FloatStorage"), "0")), 0, (4,), (1,), False, _HOOKS)
                )
            },
        ),
        r"persistent id: is a tuple of 3",
    ),
    Case("pid_text", _raw_pickle(b"P0\n"), r"persistent id: is a str"),
    Case(
        "parameter_of_non_tensor",
        lambda p, m: _checkpoint(p, m, {"w": Call(Global("torch._utils", "_rebuild_parameter"), ("x", False, _HOOKS))}),
        r"_rebuild_parameter wraps a str",
    ),
    Case("truncated_pickle", _truncated_pickle, r"malformed or truncated pickle at byte \d+|pickle ends without STOP"),
    Case("ext_opcode", _raw_pickle(b"\x82\x01"), r"pickle opcode EXT1 at byte \d+ is not allowed"),
    Case(
        "build_on_tensor",
        _raw_pickle(encode(tensor("FloatStorage", "0", 4, 0, (4,), (1,))) + b"}b"),
        r"pickle sets the state of a ndarray",
    ),
    Case(
        "call_of_call",
        _raw_pickle(encode(Call(payload("/nonexistent"), ()))),
        r"calls the result of a call of os.system",
    ),
    Case(
        "colliding_int_keys",
        _raw_pickle(b"}(" + encode(2**61 - 1 + 5) + b"N" + encode(5) + b"Nu"),
        r"dict key 2305843009213693956 is not a string, bytes, None, bool, 32-bit int",
    ),
    Case("float_key", _raw_pickle(b"}(" + encode(0.5) + b"Nu"), r"dict key 0.5 is not a string"),
    Case("deep_lists", _deep_lists, r"object tree nested more than 100 deep"),
    Case("deep_tuples", _deep_tuples, r"nests tuples more than 100 deep"),
    Case("deep_marks", _raw_pickle(b"(" * 1000), r"nests more than 100 marks"),
    Case("memo_get_missing", _raw_pickle(b"h\x07"), r"reads memo entry 7, which was never stored"),
    Case("memo_bomb", _memo_bomb, None),
    Case("placeholder_bomb", _placeholder_bomb, r"more than 2000000 pickle opcodes", heavy=True),
    Case("object_bomb", _object_bomb, r"more than 2000000 pickle opcodes", heavy=True),
    Case("pickle_too_large", _pickle_too_large, r"is 18874\d+ bytes, over the limit of 16777216", heavy=True),
    # The zip container.
    Case("crc_error", _crc_error, r"data/0': is damaged \(BadZipFile: Bad CRC-32"),
    Case("truncated_archive", _truncated(0.6), r"not a PyTorch zip checkpoint"),
    Case("truncated_to_nothing", _empty, r"not a PyTorch zip checkpoint"),
    Case("legacy_pickle", _legacy, r"not a PyTorch zip checkpoint"),
    Case("duplicate_member", _duplicate_member, r"data/0': appears twice in the archive"),
    Case("two_data_pkl", _two_pickles, r"has 2 data.pkl members"),
    Case("encrypted_member", _encrypted, r"data/0': is encrypted"),
    Case("bzip2_member", _bzip2, r"uses compression method 12"),
    Case("huge_directory", _huge_directory, r"zip central directory of 104857600 bytes, more than 100000 entries"),
    Case("too_many_entries", _too_many_entries, r"300000 zip entries, more than the limit of 100000"),
    Case("pickle_zip_bomb", lambda p, m: _bomb(p, m, in_pickle=True, lie=False), r"compression-ratio limit"),
    Case(
        "pickle_zip_bomb_lying",
        lambda p, m: _bomb(p, m, in_pickle=True, lie=True),
        r"data.pkl': is damaged \(BadZipFile: Bad CRC-32",
    ),
    Case("data_zip_bomb", lambda p, m: _bomb(p, m, in_pickle=False, lie=False), r"compression-ratio limit"),
    Case(
        "many_small_bombs", _many_small_bombs, r"deflated members would inflate to \d+ bytes, over 10 x the file size"
    ),
    Case("data_zip_bomb_lying", lambda p, m: _bomb(p, m, in_pickle=False, lie=True), r"data/0': is damaged"),
]

BY_NAME = {case.name: case for case in CASES}

# The files that cost the most before the limits (memory: bombs, broadcasts, objects; time: opcodes).
WORST = [
    "stride0_huge",
    "shape_2_40_broadcast",
    "pickle_zip_bomb_lying",
    "data_zip_bomb",
    "many_small_bombs",
    "memo_bomb",
    "object_bomb",
    "placeholder_bomb",
    "pickle_too_large",
    "deep_lists",
]

# Payload variants: every way a pickle can call something; none may run.
PAYLOADS = {
    "reduce_os_system": lambda marker: Call(Global("os", "system"), (f"touch {marker}",)),
    "reduce_builtins_exec": lambda marker: Call(Global("builtins", "exec"), (f"open({marker!r}, 'w')",)),
    "newobj_popen": lambda marker: Raw(encode(Global("subprocess", "Popen")) + encode((["touch", marker],)) + b"\x81"),
    "inst_os_system": lambda marker: Raw(b"(" + encode(f"touch {marker}") + b"ios\nsystem\n"),
    "obj_os_system": lambda marker: Raw(b"(" + encode(Global("os", "system")) + encode(f"touch {marker}") + b"o"),
    "build_setstate": lambda marker: Raw(
        encode(Call(Global("os", "system"), ("true",))) + encode({"x": marker}) + b"b"
    ),
    "stack_global_protocol4": lambda marker: Raw(b"\x8c\x02os\x8c\x06system\x93" + encode((f"touch {marker}",)) + b"R"),
}


def write_payload(path: str, marker: str, kind: str) -> None:
    """A valid checkpoint (one tensor ``w``) whose ``"payload"`` entry is the payload ``kind``."""
    tree = {"payload": PAYLOADS[kind](marker), "w": tensor("FloatStorage", "0", 4, 0, (4,), (1,))}
    write_archive(path, pickle_of(tree), {"0": F4})
