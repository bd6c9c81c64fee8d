"""What every format's converter may need beyond the model, shared across the formats of one export."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import keras
import numpy as np

from pf_keras_export import saved_model as saved_model_lib


@dataclasses.dataclass
class ExportContext:
    """Options and shared intermediate files of one export.

    Attributes:
        scratch_dir: str. A temporary folder for intermediate files (deleted by the caller).
        input_type: str. "float" or "uint8" (see :mod:`pf_keras_export.saved_model`).
        calibration: callable ``size -> uint8 images (n, size, size, 3)`` or None. Loaded at most
            once, when a format needs calibration images (int8).
        int8_input_type: str or None. Input type of the int8 file; None: "uint8" for uint8 input, else "int8".
        int8_output_type: str. Output type of the int8 file.
    """

    scratch_dir: str
    input_type: str = "float"
    calibration: Callable[[int], np.ndarray] | None = None
    int8_input_type: str | None = None
    int8_output_type: str = "int8"
    _images: dict = dataclasses.field(default_factory=dict, repr=False)
    _batch1: dict = dataclasses.field(default_factory=dict, repr=False)

    def calibration_images(self, size: int) -> np.ndarray:
        """The calibration images at ``size`` (loaded once).

        Raises:
            ValueError: when the context has no calibration source.
        """
        if self.calibration is None:
            raise ValueError("int8 export needs calibration images. Received: calibration=None")
        if size not in self._images:
            self._images[size] = self.calibration(size)
        return self._images[size]

    def batch1_saved_model(self, model: keras.Model) -> str:
        """A batch-1 serving SavedModel of ``model`` with this context's input type (written once per model).

        The TFLite files are converted from it: with every shape static the converter folds the
        shape arithmetic of reshapes away (see :func:`pf_keras_export.saved_model.export_saved_model`).
        """
        key = id(model)
        if key not in self._batch1:
            path = os.path.join(self.scratch_dir, f"batch1_{len(self._batch1)}")
            self._batch1[key] = saved_model_lib.export_saved_model(
                model, path, input_type=self.input_type, batch_size=1
            )
        return self._batch1[key]
