"""Tests of pf_keras/weights/safe_pickle.py: plain data round-trips every protocol; nothing is ever called."""

from __future__ import annotations

import pickle

import pytest

from pf_keras.weights.errors import CheckpointError
from pf_keras.weights.safe_pickle import Placeholder, load


class _NothingResolved:
    """A resolver that knows no global: everything becomes a Placeholder."""

    def find_global(self, module, name):
        return None

    def call(self, func, args, kwargs, key):
        raise AssertionError("never reached: only placeholders exist")

    def persistent_load(self, pid, key):
        raise CheckpointError(f"no persistent ids here: {pid!r}")


def _load(data: bytes, **limits):
    return load(data, _NothingResolved(), where="test", **{"max_ops": 10_000, "max_depth": 20, **limits})


@pytest.fixture(autouse=True)
def _clear_keras_session():
    """Overrides conftest's: nothing here builds a Keras model."""
    yield


PLAIN = {
    "ints": [0, 1, -1, 255, 65535, -(2**31), 2**31, 2**70, -(2**70)],
    "floats": [0.0, -1.5, 1e300, float("inf")],
    "text": ["", "a", "ünï©ødé", "x" * 300],
    "nested": {"a": [1, (2, 3)], 5: {"b": None, "c": (True, False)}, "t": ((), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4))},
    "shared": None,
}
PLAIN["shared"] = [PLAIN["nested"], PLAIN["nested"]]  # memo references


class TestRoundTrip:
    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    def test_plain_data_equals_pickle(self, protocol):
        data = pickle.dumps(PLAIN, protocol=protocol)
        assert _load(data) == pickle.loads(data) == PLAIN

    @pytest.mark.parametrize("protocol", [4, 5])
    def test_bytes_sets_and_frozensets(self, protocol):
        value = {"b": b"\x00\xff" * 10, "s": {1, "a"}, "f": frozenset({2, ("x", 3)})}
        assert _load(pickle.dumps(value, protocol=protocol)) == value

    def test_shared_references_stay_shared(self):
        tree = _load(pickle.dumps(PLAIN, protocol=2))
        assert tree["shared"][0] is tree["shared"][1]

    def test_cycles_are_allowed(self):
        cyclic: list = [1]
        cyclic.append(cyclic)
        tree = _load(pickle.dumps(cyclic, protocol=2))
        assert tree[1] is tree


class TestNothingRuns:
    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    def test_reduce_newobj_build_give_placeholders(self, protocol):
        import argparse
        import os

        class Exploit:
            def __reduce__(self):
                return (os.system, ("exit 3",))

        value = {"call": Exploit(), "object": argparse.Namespace(lr=0.1)}
        tree = _load(pickle.dumps(value, protocol=protocol))
        assert isinstance(tree["call"], Placeholder) and tree["call"].qualname in ("posix.system", "os.system")
        assert tree["call"].args == ("exit 3",)
        namespace = tree["object"]
        assert isinstance(namespace, Placeholder) and namespace.state == {"lr": 0.1}
        if protocol >= 2:  # NEWOBJ on the class
            assert namespace.qualname == "argparse.Namespace" and namespace.args == ()
        else:  # copyreg._reconstructor(cls, object, None)
            assert namespace.qualname in ("copyreg._reconstructor", "copy_reg._reconstructor")  # fix_imports
            assert namespace.args[0].qualname == "argparse.Namespace" and namespace.args[0].args is None


class TestKeysAreCheapToHash:
    """A key is hashed whole at every insertion: shared nested tuples (``t = (t, t)``, 2 bytes a level) would cost
    2**levels steps per insertion (40 levels: days), so keys are scalars or flat tuples of at most 16."""

    DAG = b"K\x01\x85" + b"2\x86" * 40  # (1,), then 40 x DUP TUPLE2: t = (t, t)

    @pytest.mark.parametrize("data", [
        b"\x80\x02}" + DAG + b"Ns.",  # dict key
        b"\x80\x04\x8f(" + DAG + b"\x90.",  # set member (ADDITEMS)
        b"\x80\x04(" + DAG + b"\x91.",  # frozenset member
        b"\x80\x02}(" + b"K\x01" * 17 + b"tNs.",  # a flat tuple of 17
    ], ids=["dict_key", "set_member", "frozenset_member", "long_flat_tuple"])
    def test_nested_or_long_tuple_keys_are_refused(self, data):
        with pytest.raises(CheckpointError, match=r"is not a string, bytes, None, bool, 32-bit int or a flat tuple "
                                                  r"of at most 16 of those"):
            _load(data, max_depth=100)

    def test_flat_tuple_keys_and_nested_tuple_values_are_read(self):
        value = {(1, "a", None, b"x", True) + (0,) * 11: 1, "v": ((1, 2), ((3,),))}
        assert _load(pickle.dumps(value, protocol=4)) == value


class TestRefusals:
    @pytest.mark.parametrize(
        "data, message",
        [
            (b"\x80\x02" + b"N0" * 60 + b"N.", r"more than 100 pickle opcodes"),
            (b"\x80\x02" + b"(" * 21, r"nests more than 20 marks"),
            (b"\x80\x02]" + b"]" * 30 + b"a" * 30 + b".", r"object tree nested more than 20 deep"),
            (b"\x80\x02\x82\x01.", r"opcode EXT1 at byte 2 is not allowed"),
            (b"\x80\x02\x97.", r"opcode NEXT_BUFFER at byte 2 is not allowed"),
            (b"\x80\x02h\x05.", r"reads memo entry 5, which was never stored"),
            (b"\x80\x02}G?\xe0\x00\x00\x00\x00\x00\x00Ns.", r"dict key 0.5 is not a string"),
            (b"\x80\x02]Nb.", r"sets the state of a list"),
            (b"\x80\x02NNa.", r"appends to a NoneType"),
            (b"\x80\x02.", r"pops from an empty stack"),
            (b"\x80\x02N", r"malformed or truncated pickle"),
            (b"\x80\x02cos\nsystem\n)R)R.", r"calls the result of a call of os.system"),
            (b"\x80\x02X\x01\x00\x00\x00aQ.", r"no persistent ids here"),
        ],
        ids=["ops", "marks", "depth", "ext", "buffer", "memo", "float_key", "build", "append", "empty", "eof", "call2",
             "persid"],
    )  # fmt: skip
    def test_refused_with_one_line(self, data, message):
        with pytest.raises(CheckpointError, match=message) as info:
            _load(data, max_ops=100)
        assert type(info.value) is CheckpointError and "\n" not in str(info.value)
