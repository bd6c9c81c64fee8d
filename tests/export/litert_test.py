"""Tests of pf_keras_export.litert: the op list and XNNPACK coverage read from the flatbuffer, loading errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from pf_keras_export import litert


def _runtime_cpu_ops(path: str) -> tuple[list[str], int]:
    """(ops LiteRT runs itself, number of XNNPACK partitions), from the interpreter's node list.

    The oracle of these tests only: it reads the private ``_get_ops_details`` (the public API has
    no execution-plan view), which is why production code does not. XNNPACK replaces each
    partition by one DELEGATE node and keeps the original nodes listed; walking back from each
    DELEGATE node's outputs to its inputs through the original producers finds its nodes.
    """
    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()
    original = [op for op in ops if op["op_name"] != "DELEGATE"]
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    producer = {int(t): op["index"] for op in original for t in op["outputs"]}
    by_index = {op["index"]: op for op in original}
    delegated: set[int] = set()
    for node in delegates:
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor not in producer or producer[tensor] in delegated:
                continue
            delegated.add(producer[tensor])
            stack.extend(int(t) for t in by_index[producer[tensor]]["inputs"] if t >= 0)
    return [op["op_name"] for op in original if op["index"] not in delegated], len(delegates)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class TestXnnpackCoverage:
    def test_agrees_with_the_runtime(self, hybrid_export, vit_export):
        checked = 0
        for report in (hybrid_export, vit_export):
            for entry in report["files"]:
                if entry["format"] == "saved_model":
                    continue
                coverage = litert.xnnpack_coverage(_read(entry["path"]))
                runtime_cpu_ops, partitions = _runtime_cpu_ops(entry["path"])
                # The same nodes, int8 ADDs refused for their quantization scales included (LayerNorm's epsilon).
                assert sorted(coverage["cpu_ops"]) == sorted(runtime_cpu_ops), entry["path"]
                assert coverage["fully_delegated"] == (not runtime_cpu_ops and partitions == 1), entry["path"]
                assert coverage["total_nodes"] == coverage["delegated_nodes"] + len(coverage["cpu_ops"])
                checked += 1
        assert checked == 10
        int8 = litert.xnnpack_coverage(_read(next(e["path"] for e in vit_export["files"] if e["format"] == "int8")))
        # XNNPACK has no int8 LayerNorm pieces, GELU or softmax, and refuses LayerNorm's
        # int8 ``variance + epsilon`` (input/output scale ratio ~1e-6, outside [2^-10, 2^8)).
        assert not int8["fully_delegated"]
        assert set(int8["cpu_ops"]) - {"BATCH_MATMUL"} == {"ADD", "GELU", "RSQRT", "SOFTMAX", "SQUARED_DIFFERENCE"}
        # (an int8 BATCH_MATMUL is delegated when calibration gave its second input a zero point of 0: either way
        # the static coverage matched the runtime above)

    def test_op_list_is_read_from_the_file(self, hybrid_export):
        entry = next(e for e in hybrid_export["files"] if e["format"] == "fp32")
        ops, custom = litert.tflite_ops(_read(entry["path"]))
        assert custom == [] and ops == entry["ops"]
        assert {"CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "ADD", "MEAN", "FULLY_CONNECTED"} <= set(ops)
        assert sum(ops.values()) == len(_runtime_cpu_ops(entry["path"])[0]) + entry["xnnpack"]["delegated_nodes"]


class TestDamagedFiles:
    def test_not_a_flatbuffer(self):
        with pytest.raises(ValueError, match=r"not a .tflite flatbuffer \(no TFL3 identifier; 270 bytes\)"):
            litert.tflite_ops(b"definitely not a flatbuffer" * 10)

    def test_truncated_flatbuffer(self, hybrid_export):
        content = _read(next(e["path"] for e in hybrid_export["files"] if e["format"] == "fp32"))
        with pytest.raises(ValueError, match=r"damaged .tflite flatbuffer"):
            litert.xnnpack_coverage(content[:4096])

    def test_corrupted_bytes_are_read_or_refused_with_value_error(self, hybrid_export):
        import random

        content = _read(next(e["path"] for e in hybrid_export["files"] if e["format"] == "fp32"))
        rng = random.Random(0)
        refused = 0
        for i in range(200):
            damaged = bytearray(content[: rng.randrange(8, len(content))] if i % 3 == 0 else content)
            for _ in range(0 if i % 3 == 0 else 20):
                damaged[rng.randrange(8, 4000)] = rng.randrange(256)
            try:
                litert.tflite_ops(bytes(damaged))
                litert.xnnpack_coverage(bytes(damaged))
            except ValueError as error:
                assert "tflite flatbuffer" in str(error)
                refused += 1
        assert refused > 100

    def test_runtime_refusal_is_one_value_error(self):
        with pytest.raises(ValueError, match=r"LiteRT cannot load model: The model is not a valid Flatbuffer buffer"):
            litert.interpreter(b"\0" * 160)

    def test_quantize_helpers_round_trip(self):
        detail = {"dtype": np.int8, "quantization": (0.5, -3)}
        x = np.array([[-10.0, 0.0, 1.26, 500.0]], np.float32)
        q = litert._quantize(x, detail)
        np.testing.assert_array_equal(q, [[-23, -3, -0, 127]])
        np.testing.assert_allclose(litert._dequantize(q, detail), [[-10.0, 0.0, 1.5, 65.0]])


class TestContentDigest:
    def test_a_file_is_its_sha256_and_a_folder_its_files_paths_and_contents(self, tmp_path):
        import hashlib
        import shutil

        (tmp_path / "m.tflite").write_bytes(b"model bytes")
        assert litert.content_sha256(str(tmp_path / "m.tflite")) == hashlib.sha256(b"model bytes").hexdigest()
        saved = tmp_path / "saved_model"
        (saved / "variables").mkdir(parents=True)
        (saved / "saved_model.pb").write_bytes(b"graph")
        (saved / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights")
        digest = litert.content_sha256(str(saved))
        shutil.copytree(saved, tmp_path / "moved")
        assert litert.content_sha256(str(tmp_path / "moved")) == digest  # where the folder lives does not count
        (saved / "variables" / "variables.data-00000-of-00001").write_bytes(b"weightz")
        assert litert.content_sha256(str(saved)) != digest
        (saved / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights")
        (saved / "variables" / "variables.data-00000-of-00001").rename(saved / "variables" / "other")
        assert litert.content_sha256(str(saved)) != digest  # a renamed file is another folder
        with pytest.raises(OSError):
            litert.content_sha256(str(tmp_path / "missing"))

    def test_only_regular_files_are_read(self, tmp_path):
        from pf_keras.safe_open import NotRegularFileError

        saved = tmp_path / "saved_model"
        (saved / "variables").mkdir(parents=True)
        (saved / "saved_model.pb").write_bytes(b"graph")
        (tmp_path / "elsewhere").mkdir()
        (saved / "linked").symlink_to(tmp_path / "elsewhere")  # its files would not be in the digest
        with pytest.raises(NotRegularFileError, match=r"a symlinked folder"):
            litert.content_sha256(str(saved))
        (saved / "linked").unlink()
        (saved / "zero").symlink_to("/dev/zero")  # never ends
        with pytest.raises(NotRegularFileError, match=r"a character device"):
            litert.content_sha256(str(saved))
        (saved / "zero").unlink()
        os.mkfifo(saved / "variables" / "fifo")  # a plain open() waits for a writer forever
        with pytest.raises(NotRegularFileError, match=r"a FIFO"):
            litert.content_sha256(str(saved))
        with pytest.raises(NotRegularFileError, match=r"a FIFO"):
            litert.content_sha256(str(saved / "variables" / "fifo"))
