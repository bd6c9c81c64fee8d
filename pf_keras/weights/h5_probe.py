"""Reads a whole HDF5 file in a child process first: a damaged file can crash the HDF5 library itself.

A bit flipped in a B-tree node of a file in HDF5's newest format makes libhdf5 (1.14, bundled with h5py 3.14)
free an invalid pointer while it walks the file (SIGSEGV), and a fletcher32-checked chunk stored in fewer
than 4 bytes crashes its read: no ``try`` can turn those into an error, the process is gone. So
:func:`problem` runs this file as a script (``python -P h5_probe.py PATH``: h5py and NumPy only, no
TensorFlow, ~0.2 s) that walks the file (before this process walks it), then, once the loader has found
the shapes to be the model's, another that reads every dataset (before this process reads them): only what a
child got through is done here. The child refuses datasets whose values lie
outside the file (external storage, virtual datasets: another file of the machine, a FIFO: a hang) and
chunks larger than their dataset (a (16, 10) array in one gzip chunk of 4 GiB took 4.8 GB and 16 s, in 16
such chunks 125 s). It prints one line and exits 3 for a refusal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

REFUSED = 3  # the child's exit status for a refused file (its reason on stdout)
TIMEOUT_S = 600  # a ViT-B file (350 MB) is read in ~1 s
_CHUNK_SLACK = 1 << 20  # bytes a chunk may exceed its dataset by


def refusal(name: str, item) -> str | None:
    """Why the dataset ``item`` is refused before its values are read (None: it is not)."""
    import numpy as np

    if item.is_virtual:
        return f"{name}: a virtual dataset (mapped from other files); weights must be stored in the file itself"
    if item.external:
        return f"{name}: an external dataset (raw data in another file); weights must be stored in the file itself"
    if item.chunks is not None:
        chunk = int(np.prod(item.chunks, dtype=object)) * item.dtype.itemsize
        if chunk > int(np.prod(item.shape, dtype=object)) * item.dtype.itemsize + _CHUNK_SLACK:
            return (f"{name}: stored in chunks of {chunk:,} bytes for a dataset of shape {item.shape} (reading it "
                    f"would inflate them)")
    return None


def _child(path: str, read: bool) -> str | None:
    """The child's work: None when the file of ``path`` was walked (and, with ``read``, every dataset read),
    else why it is refused."""
    import h5py

    datasets = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: datasets.append(name) if isinstance(item, h5py.Dataset) else None)
        for name in datasets:
            reason = refusal(name, f[name])
            if reason:
                return reason
        for name in datasets if read else ():
            f[name][()]
    return None


def problem(path: str, *, read: bool) -> str | None:
    """None if a child process walked the HDF5 file ``path`` (``read``: and read every dataset; do that once its
    shapes are known to be the model's, which bounds what is read), else why not (one line): its refusal, the
    error it raised, or the signal that killed it."""
    # -P: not the script's folder on sys.path (its neighbours are no top-level modules); site and PYTHONPATH kept
    command = [sys.executable, "-P", os.path.abspath(__file__), path] + ["read"] * read
    try:
        done = subprocess.run(command, capture_output=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"reading it took more than {TIMEOUT_S} s"
    except OSError:  # no interpreter to start (an embedded Python): read in this process, as before
        return None
    said = " ".join(done.stdout.decode("utf-8", "replace").split())[:300]
    if done.returncode == 0:
        return None
    if done.returncode == REFUSED:
        return said
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name if -done.returncode in signal.valid_signals() else "a signal"
        return f"the HDF5 library crashed reading it ({name}): a damaged file"
    return f"not a readable Keras .weights.h5 file ({said or 'exit ' + str(done.returncode)})"


if __name__ == "__main__":
    try:
        reason = _child(sys.argv[1], read=sys.argv[2:] == ["read"])
    except Exception as error:  # noqa: BLE001 - h5py raises OSError, KeyError, RuntimeError... on a damaged file
        print(f"{type(error).__name__}: {error}")
        sys.exit(1)
    if reason:
        print(reason)
        sys.exit(REFUSED)
