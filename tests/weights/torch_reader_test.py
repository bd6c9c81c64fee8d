"""Tests of pf_keras/weights/torch_reader.py on files written by real torch.save."""

from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import pytest
from conftest import FIXTURES, load_fixture, state_dict_of

from pf_keras.weights import torch_reader

PTH = os.path.join(FIXTURES, "pth")


class TestTorchReader:
    def test_bare_state_dict_equals_fixture(self):
        sd = torch_reader.read_state_dict(os.path.join(PTH, "resnet_max_small.pth"))
        expected = state_dict_of(load_fixture("resnet_max_small")[1])
        assert sorted(sd) == sorted(expected)
        for key, value in expected.items():
            assert sd[key].dtype == value.dtype, key
            np.testing.assert_array_equal(sd[key], value, err_msg=key)

    def test_wrapped_checkpoint_with_module_prefix_and_training_args(self):
        raw = torch_reader.read_torch_file(os.path.join(PTH, "resnet_hybrid_small_wrapped.pth"))
        assert raw["epoch"] == 7
        assert isinstance(raw["args"], torch_reader.Placeholder)
        assert raw["args"].qualname == "argparse.Namespace"
        sd = torch_reader.extract_state_dict(raw)
        expected = state_dict_of(load_fixture("resnet_hybrid_small")[1])
        assert sorted(sd) == sorted(expected)
        np.testing.assert_array_equal(sd["fc.weight"], expected["fc.weight"])

    def test_dtypes_views_and_shared_storage(self):
        t = torch_reader.read_torch_file(os.path.join(PTH, "tensors.pth"))
        np.testing.assert_array_equal(t["f16"], np.array([1.5, -2.25, 3.0], np.float16))
        assert t["bf16"].dtype == np.float32
        np.testing.assert_array_equal(t["bf16"], [1.5, -2.25, 3.0])
        np.testing.assert_array_equal(t["i64"], [[1, -2], [3, 4]])
        np.testing.assert_array_equal(t["bool"], [True, False])
        base = np.arange(12, dtype=np.float32).reshape(3, 4)
        np.testing.assert_array_equal(t["base"], base)
        np.testing.assert_array_equal(t["transposed"], base.T)
        np.testing.assert_array_equal(t["row"], base[1])
        assert t["scalar"] == 5 and t["scalar"].shape == ()

    def test_pickled_code_is_never_run(self):
        marker = os.path.join(PTH, "PWNED")
        obj = torch_reader.read_torch_file(os.path.join(PTH, "malicious.pth"))
        assert not os.path.exists(marker)
        assert isinstance(obj["payload"], torch_reader.Placeholder)
        assert obj["payload"].qualname in ("posix.system", "os.system")
        np.testing.assert_array_equal(obj["weight"], [1.0, 1.0])
        # The same bytes through plain pickle would run the command: prove the file is hostile.
        with zipfile.ZipFile(os.path.join(PTH, "malicious.pth")) as archive:
            data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        assert b"system" in data

    def test_rejects_non_zip_and_non_state_dict(self, tmp_path):
        legacy = tmp_path / "legacy.pth"
        legacy.write_bytes(pickle.dumps({"a": 1}))
        with pytest.raises(ValueError, match="not a PyTorch zip checkpoint"):
            torch_reader.read_torch_file(str(legacy))
        with pytest.raises(ValueError, match="No state dict found"):
            torch_reader.extract_state_dict({"epoch": 3})
        with pytest.raises(ValueError, match="No state dict found"):
            torch_reader.read_state_dict(os.path.join(PTH, "malicious.pth"))
