"""Output folders of the export tools."""

from __future__ import annotations

import os
import tempfile


def check_output_dir(output_dir: str) -> str:
    """Creates ``output_dir`` and proves it writable; ValueError otherwise."""
    if not isinstance(output_dir, (str, os.PathLike)) or not os.fspath(output_dir):
        raise ValueError(f"`output_dir` must be a directory path. Received: output_dir={output_dir!r}")
    output_dir = os.fspath(output_dir)
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise ValueError(
            f"`output_dir` must be a writable directory (or creatable as one) ({type(error).__name__}: "
            f"{error.strerror or error}). Received: output_dir={output_dir!r}"
        ) from error
    return output_dir
