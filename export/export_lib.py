"""Export library: SavedModel and TFLite files of a pf_keras model, each proven against Keras.

Writes ``OUT/NAME/saved_model/``, ``OUT/NAME/NAME_<format>.tflite`` and ``OUT/NAME/report.json``
(validation of every file, plus params, MACs and the build arguments), every file atomically;
raises :class:`pf_keras_export.validate_lib.ValidationError` when a file fails. One export or
validate at a time per model folder (:func:`folder_lock`). The command line over it is
:mod:`pf_keras_export.export` (``pf-keras-export``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import pf_keras
from pf_keras import fileio
from pf_keras_export import formats as formats_lib
from pf_keras_export import tflite, validate_lib
from pf_keras_export.build import build_model, parse_model_kwargs
from pf_keras_export.context import ExportContext
from pf_keras_export.files import check_output_dir
from pf_keras_export.images import load_images
from pf_keras_training.lock import FolderLock


def export_model(
    name: str,
    *,
    output_dir: str,
    formats: str | Sequence[str] | None = None,
    weights: str | None = None,
    model_kwargs: str | dict | None = None,
    image_size: int | None = None,
    input_type: str = "float",
    dataset: str | None = None,
    data_dir: str | None = None,
    num_calibration: int = tflite.NUM_CALIBRATION_IMAGES,
    int8_input_type: str | None = None,
    int8_output_type: str = "int8",
    require_full_delegation: bool = False,
    batch_size: int = validate_lib.VALIDATION_BATCH,
    verbose: bool = True,
) -> dict:
    """Builds ``name``, exports it in every requested format and validates each file.

    Args:
        name: str. Registry name, a model folder (a preset folder such as a training run's
            ``final/``, or the run folder) or a keras.applications baseline (:mod:`pf_keras_export.build`).
        output_dir: str. Files go to ``output_dir/<model name>/``.
        formats: comma-separated str or sequence of registered format names
            (:mod:`pf_keras_export.formats`). Defaults to None (all).
        weights: str or None. PyTorch checkpoint or Keras ``.weights.h5``. Defaults to None.
        model_kwargs: dict or str (JSON object, k=v pairs or a JSON file) of builder overrides.
            Defaults to None.
        image_size: int or None. Input side. Defaults to the ``input_shape`` in ``model_kwargs``, else 224.
        input_type: str. "float" (normalised float RGB in) or "uint8" (RGB pixels in, the
            normalisation inside the model). Defaults to "float".
        dataset: str or None. int8 calibration images: None/"builtin", "synthetic",
            "folder:PATH" or a TFDS name. Defaults to None (built-in).
        data_dir: str or None. TFDS data folder. Defaults to None (TFDS's default).
        num_calibration: int. Calibration images for int8. Defaults to 64.
        int8_input_type: str or None. "int8", "uint8" or "float"; None picks "uint8" for uint8
            input, else "int8".
        int8_output_type: str. "int8", "uint8" or "float". Defaults to "int8".
        require_full_delegation: bool. Fail TFLite files XNNPACK does not take whole. Defaults to False.
        batch_size: int. Number of validation images. Defaults to 8.
        verbose: bool. Print the validation table. Defaults to True.

    Returns:
        The validation report (also in ``output_dir/<name>/report.json``).

    Raises:
        ValueError: for unknown formats, names or types, an unwritable ``output_dir``, or weights
            for another model.
        pf_keras.fileio.WriteError: when a file cannot be written (e.g. a full disk); files
            written before keep their previous version.
        pf_keras_export.validate_lib.ValidationError: when an exported file fails validation.
    """
    selected = formats_lib.parse(formats if formats is not None else formats_lib.names())
    if int8_input_type is not None:
        tflite.check_io_type(int8_input_type, "int8_input_type")
    tflite.check_io_type(int8_output_type, "int8_output_type")
    if not isinstance(num_calibration, int) or num_calibration < 1:
        raise ValueError(f"`num_calibration` must be a positive int. Received: num_calibration={num_calibration!r}")
    output_dir = check_output_dir(output_dir)
    model = build_model(name, weights=weights, model_kwargs=model_kwargs, image_size=image_size, input_type=input_type)
    folder = os.path.join(output_dir, model.name)
    os.makedirs(folder, exist_ok=True)
    with folder_lock(folder, output_dir):
        files: dict[str, str] = {}
        # The scratch folder (batch-1 SavedModels) in the locked folder, as a temporary of ours: a killed export's
        # is removed by the next one (in $TMPDIR it stayed forever).
        with tempfile.TemporaryDirectory(prefix=f".scratch{fileio.TEMP_MARK}", dir=folder) as scratch:
            context = ExportContext(
                scratch_dir=scratch,
                input_type=input_type,
                calibration=lambda size: load_images(dataset, num_calibration, size, data_dir=data_dir),
                int8_input_type=int8_input_type,
                int8_output_type=int8_output_type,
            )
            for fmt in selected:
                files[fmt.name] = fmt.convert(model, fmt.path_in(folder, model.name), context)
        profile = pf_keras.profile(model)
        extra = {
            "build": {
                "name": name,
                "weights": weights,
                "model_kwargs": {
                    k: list(v) if isinstance(v, tuple) else v for k, v in parse_model_kwargs(model_kwargs).items()
                },
                "image_size": int(model.input_shape[1]),
                "record": record.to_json() if (record := pf_keras.build_record(model)) else None,
            },
            "params": profile.params,
            "macs": profile.macs,
            "int8": {
                "calibration_dataset": dataset or "builtin",
                "calibration_images": num_calibration,
                "average_pools_as_depthwise": tflite.int8_rewrites(model),
            }
            if "int8" in files
            else None,
        }
        report_path = os.path.join(folder, "report.json")
        report = validate_lib.validate_files(
            model,
            files,
            input_type=input_type,
            report_path=report_path,
            extra=extra,
            raise_on_failure=False,
            require_full_delegation=require_full_delegation,
            batch_size=batch_size,
        )
        if verbose:
            print(validate_lib.format_table(report))
            print(f"Report: {report_path}")
        if not report["passed"]:
            raise validate_lib.ValidationError(validate_lib.failure_message(report, report_path), report_path)
        return report


def folder_lock(folder: str, output_dir: str) -> FolderLock:
    """The export tools' lock on one model's folder (``OUT/NAME``), held while they write or check its files;
    an interrupted writer's temporary files there are removed once it is held.

    Raises:
        pf_keras_training.lock.LockHeld: (a ValueError) another export or validate of this model is writing there.
    """
    held = FolderLock(folder, busy=(
        f"{folder} is in use by another pf-keras-export or pf-keras-validate of this model; one at a time per "
        f"folder. Wait for it to end, stop it, or use another --output_dir. Received: output_dir={output_dir!r}"))
    fileio.remove_stale_temps(folder)
    return held
