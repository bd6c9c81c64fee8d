"""Tests of pf_keras/weights/loading.py's error paths: a damaged Keras weights file is one CheckpointError."""

from __future__ import annotations

import numpy as np
import pytest

import pf_keras
from pf_keras import fileio
from pf_keras.weights import CheckpointError
from pf_keras.weights.loading import load_keras_weights

SMALL = {"depths": [1, 1, 1, 1], "width_mult": 0.125, "classes": 10, "input_shape": [32, 32, 3]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(path, bytes) of a valid .weights.h5 of the SMALL resnet50_max."""
    path = str(tmp_path_factory.mktemp("h5") / "good.weights.h5")
    fileio.save_weights(pf_keras.create_model("resnet50_max", **SMALL), path)
    with open(path, "rb") as f:
        return path, f.read()


def _damaged(tmp_path, data: bytes) -> str:
    path = str(tmp_path / "damaged.weights.h5")
    with open(path, "wb") as f:
        f.write(data)
    return path


class TestKerasWeightsFile:
    @pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.6, 0.95])
    def test_truncated(self, saved, tmp_path, fraction):
        _, data = saved
        path = _damaged(tmp_path, data[: int(len(data) * fraction)])
        with pytest.raises(
            CheckpointError, match=r"damaged.weights.h5: not a readable Keras .weights.h5 file|does not fit"
        ):
            pf_keras.create_model("resnet50_max", weights=path, **SMALL)

    @pytest.mark.parametrize("where", ["header", "middle", "all"])
    def test_zero_filled(self, saved, tmp_path, where):
        _, data = saved
        span = {"header": slice(0, 512), "middle": slice(len(data) // 3, 2 * len(data) // 3), "all": slice(None)}[where]
        damaged = bytearray(data)
        damaged[span] = bytes(len(damaged[span]))
        path = _damaged(tmp_path, bytes(damaged))
        try:
            load_keras_weights(pf_keras.create_model("resnet50_max", **SMALL), path)
        except CheckpointError as error:
            message = str(error)
            assert "\n" not in message and path in message or "does not fit" in message, message
        else:
            assert where == "middle"  # zeroed raw weight data is valid HDF5 (HDF5 has no data checksum)

    def test_not_hdf5(self, tmp_path):
        path = _damaged(tmp_path, b"this is not an HDF5 file\n" * 10)
        with pytest.raises(CheckpointError, match=r"^\S*damaged.weights.h5: not a readable Keras .weights.h5 file \("):
            pf_keras.create_model("resnet50_max", weights=path, **SMALL)

    def test_other_model_is_refused(self, saved):
        path, _ = saved
        with pytest.raises(CheckpointError, match=r"does not fit model 'resnet50_max'"):
            pf_keras.create_model("resnet50_max", weights=path, **{**SMALL, "classes": 7})

    def test_valid_file_loads(self, saved):
        path, _ = saved
        model = pf_keras.create_model("resnet50_max", weights=path, **SMALL)
        assert np.isfinite(model.predict(np.zeros((1, 32, 32, 3)), verbose=0)).all()
        reference = pf_keras.create_model("resnet50_max", **SMALL)  # freshly initialised: other values
        reference.load_weights(path)  # Keras's own reader
        for got, want in zip(model.get_weights(), reference.get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)


class TestKerasWeightsValues:
    """What a .pth is checked for, a .weights.h5 is too: values, dtypes, and sizes declared before reading."""

    @staticmethod
    def _edited(saved, tmp_path, edit) -> str:
        import h5py

        path = str(tmp_path / "edited.weights.h5")
        with open(path, "wb") as f:
            f.write(saved[1])
        with h5py.File(path, "r+") as f:
            name = "layers/batch_normalization/vars/0"
            array = f[name][()]
            del f[name]
            f.create_dataset(name, data=edit(array))
        return path

    @pytest.mark.parametrize("edit, message", [
        (lambda a: np.where(np.arange(a.size) == 3, np.nan, a).astype(np.float32), r"1 NaN/Inf values"),
        (lambda a: np.full_like(a, np.inf), r"64 NaN/Inf values"),
        (lambda a: a.astype(np.int64), r"int64 \(non-float\) values"),
        (lambda a: a.astype(np.float64) + 1e-12, r"float64 values not exactly representable in float32"),
    ], ids=["nan", "inf", "int64", "float64_lossy"])
    def test_unusable_values_are_refused(self, saved, tmp_path, edit, message):
        path = self._edited(saved, tmp_path, edit)
        with pytest.raises(CheckpointError, match=r"layers/batch_normalization/vars/0: " + message):
            pf_keras.create_model("resnet50_max", weights=path, **SMALL)

    def test_float64_rounding_is_allowed_on_request_and_exact_float64_loads(self, saved, tmp_path):
        from pf_keras.weights import precision_loss_allowed

        exact = self._edited(saved, tmp_path, lambda a: a.astype(np.float64))
        pf_keras.create_model("resnet50_max", weights=exact, **SMALL)
        lossy = self._edited(saved, tmp_path, lambda a: a.astype(np.float64) + 1e-12)
        with precision_loss_allowed():
            model = pf_keras.create_model("resnet50_max", weights=lossy, **SMALL)
        assert all(np.isfinite(w.numpy()).all() for w in model.weights)

    def test_a_huge_declared_position_embedding_is_refused_before_reading(self, tmp_path):
        import h5py

        kwargs = {"depth": 1, "hidden_dim": 16, "num_heads": 1, "input_shape": (32, 32, 3), "classes": 10}
        path = str(tmp_path / "vit.weights.h5")
        fileio.save_weights(pf_keras.create_model("vit_ti_max", **kwargs), path)
        with h5py.File(path, "r+") as f:
            name = next(n for n in _datasets(f) if "position_embedding" in n)
            del f[name]  # 1 GiB declared, nothing stored: the file stays ~100 KB
            f.create_dataset(name, shape=(1, 4096 * 4096, 16), dtype="float32", chunks=(1, 4096, 16),
                             compression="gzip", fillvalue=0.01)
        message = r"a position embedding of shape \(1, 16777216, 16\), 268435456 values \(at most 16777216"
        with pytest.raises(CheckpointError, match=message):
            pf_keras.create_model("vit_ti_max", weights=path, **kwargs)


class TestKerasWeightsStoredElsewhere:
    """A dataset whose values live outside the file (HDF5 external storage, a virtual dataset) is refused before
    anything reads it: the value checks ran before Keras' own refusal, so they read another file of the machine,
    and a FIFO there hung the load."""

    def test_external_storage_is_refused_unread(self, saved, tmp_path):
        outside = tmp_path / "outside.bin"
        outside.write_bytes(np.full(64, 7.0, np.float32).tobytes())
        path = _rewritten(saved, tmp_path, lambda f, name, values: f.create_dataset(
            name, shape=values.shape, dtype="float32", external=[(str(outside), 0, 4 * values.size)]))
        with pytest.raises(CheckpointError, match=r"layers/batch_normalization/vars/0: an external dataset \(raw data "
                           r"in another file\); weights must be stored in the file itself"):
            pf_keras.create_model("resnet50_max", weights=path, **SMALL)

    def test_external_fifo_does_not_hang(self, saved, tmp_path):
        import os
        import threading

        fifo = str(tmp_path / "fifo")
        os.mkfifo(fifo)
        path = _rewritten(saved, tmp_path, lambda f, name, values: f.create_dataset(
            name, shape=values.shape, dtype="float32", external=[(fifo, 0, 4 * values.size)]))
        stop = threading.Event()

        def unblock():  # a reader of the FIFO (the old behaviour) gets zeros after 20 s instead of hanging the suite
            if not stop.wait(20):
                with open(fifo, "wb") as writer:
                    writer.write(bytes(4096))

        threading.Thread(target=unblock, daemon=True).start()
        try:
            with pytest.raises(CheckpointError, match=r"an external dataset \(raw data in another file\)"):
                pf_keras.create_model("resnet50_max", weights=path, **SMALL)
        finally:
            stop.set()

    def test_virtual_dataset_is_refused(self, saved, tmp_path):
        import h5py

        def virtual(f, name, values):
            layout = h5py.VirtualLayout(shape=values.shape, dtype="float32")
            layout[:] = h5py.VirtualSource(saved[0], name, shape=values.shape)
            f.create_virtual_dataset(name, layout, fillvalue=0)

        path = _rewritten(saved, tmp_path, virtual)
        with pytest.raises(CheckpointError, match=r"vars/0: a virtual dataset \(mapped from other files\)"):
            pf_keras.create_model("resnet50_max", weights=path, **SMALL)


class TestKerasWeightsThatCrashHDF5:
    """A damaged file can crash libhdf5 itself (SIGSEGV/SIGABRT, no exception to catch): the loader walks and
    reads the file in child processes first (pf_keras/weights/h5_probe.py), so it is one CheckpointError."""

    def test_a_damaged_link_b_tree_in_the_newest_format_is_one_error(self, saved, tmp_path):
        import h5py

        path = str(tmp_path / "latest.weights.h5")
        def rebuild(source, target):  # the newest format: a group of more than 8 links keeps them in a v2 B-tree
            target.attrs.update(source.attrs)
            for name, item in source.items():
                if isinstance(item, h5py.Group):
                    rebuild(item, target.create_group(name))
                else:
                    target.create_dataset(name, data=item[()]).attrs.update(item.attrs)

        with h5py.File(saved[0], "r") as source, h5py.File(path, "w", libver="latest") as f:
            rebuild(source, f)
        pf_keras.create_model("resnet50_max", weights=path, **SMALL)  # intact, it loads
        data = bytearray(open(path, "rb").read())
        leaf = data.find(b"BTLF")
        assert leaf > 0
        data[leaf] = ord("J")  # one byte of a B-tree leaf: libhdf5 frees an invalid pointer walking the file
        with open(path, "wb") as f:
            f.write(data)
        with pytest.raises(CheckpointError, match=r"the HDF5 library crashed reading it \(SIG[A-Z]+\): a damaged "
                           r"file"):
            pf_keras.create_model("resnet50_max", weights=path, **SMALL)

    def test_a_fletcher32_chunk_stored_short_is_one_error(self, saved, tmp_path):
        import struct

        import h5py

        path = _rewritten(saved, tmp_path, lambda f, name, values: f.create_dataset(
            name, data=values, chunks=values.shape, fletcher32=True))
        with h5py.File(path, "r") as f:
            info = f["layers/batch_normalization/vars/0"].id.get_chunk_info(0)
        data = bytearray(open(path, "rb").read())
        key = data.find(struct.pack("<IIQQ", info.size, 0, 0, 0))  # the chunk's B-tree key: its stored size
        assert key > 0
        data[key:key + 4] = struct.pack("<I", 2)  # fewer bytes than its checksum: the read crashed libhdf5
        with open(path, "wb") as f:
            f.write(data)
        with pytest.raises(CheckpointError, match=r"the HDF5 library crashed reading it \(SIG[A-Z]+\)"):
            pf_keras.create_model("resnet50_max", weights=path, **SMALL)

    def test_chunks_larger_than_their_dataset_are_refused_before_reading(self, saved, tmp_path):
        import zlib


        def huge_chunk(f, name, values):
            chunk = (1 << 24,)  # 64 MiB inflated, ~64 KB stored, for 64 values (a 4 GiB chunk took 4.8 GB and 16 s)
            dataset = f.create_dataset(name, shape=values.shape, maxshape=(None,), dtype="float32", chunks=chunk,
                                       compression="gzip")
            inflated = np.zeros(chunk, np.float32)
            inflated[:values.size] = values
            dataset.id.write_direct_chunk((0,), zlib.compress(inflated.tobytes(), 1))

        path = _rewritten(saved, tmp_path, huge_chunk)
        with pytest.raises(CheckpointError, match=r"vars/0: stored in chunks of 67,108,864 bytes for a dataset of "
                           r"shape \(64,\) \(reading it would inflate them\)"):
            pf_keras.create_model("resnet50_max", weights=path, **SMALL)


def _rewritten(saved, tmp_path, make) -> str:
    """A copy of the saved file whose first BatchNorm variable is stored anew by ``make(file, name, values)``."""
    import h5py

    path = str(tmp_path / "rewritten.weights.h5")
    with open(path, "wb") as f:
        f.write(saved[1])
    with h5py.File(path, "r+") as f:
        name = "layers/batch_normalization/vars/0"
        values = f[name][()]
        del f[name]
        make(f, name, values)
    return path


def _datasets(f) -> list[str]:
    import h5py

    names: list[str] = []
    f.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    return names
