"""Export front end: SavedModel and TFLite files of a pf_keras model, each proven against Keras.

Writes ``OUT/NAME/saved_model/``, ``OUT/NAME/NAME_<format>.tflite`` and ``OUT/NAME/report.json``
(validation of every file, plus params, MACs and the build arguments), prints the validation
table, and exits non-zero when a file fails (see :mod:`export.validate`).

Command (from the repository root; about a minute for a small model)::

    python export/export.py --model resnet50_hybrid \\
        --model_kwargs '{"depths": [1, 1, 1, 1], "width_mult": 0.125, "classes": 10}' \\
        --image_size 64 --formats saved_model,fp32,fp16,dynamic,int8 --output_dir out

A training run: ``--weights runs/demo/final.weights.h5 --model_kwargs runs/demo/<build kwargs>.json``.
"""

from __future__ import annotations

if __package__ in (None, ""):  # Run as a script: make ``export`` importable from the repository root.
    import os as _os
    import sys as _sys

    _here = _os.path.dirname(_os.path.abspath(__file__))
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _here]
    _sys.path.insert(0, _os.path.dirname(_here))
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import os  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import pf_keras  # noqa: E402
from export import saved_model as saved_model_lib  # noqa: E402
from export import tflite as tflite_lib  # noqa: E402
from export import validate as validate_lib  # noqa: E402
from export.build import build_model, parse_model_kwargs  # noqa: E402
from export.images import load_images  # noqa: E402

ALL_FORMATS = ("saved_model", *tflite_lib.FORMATS)


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


def export_model(
    name: str,
    *,
    output_dir: str,
    formats: str | Sequence[str] = ALL_FORMATS,
    weights: str | None = None,
    model_kwargs: str | dict | None = None,
    image_size: int | None = None,
    input_type: str = "float",
    dataset: str | None = None,
    num_calibration: int = tflite_lib.NUM_CALIBRATION_IMAGES,
    int8_input_type: str | None = None,
    int8_output_type: str = "int8",
    require_full_delegation: bool = False,
    verbose: bool = True,
) -> dict:
    """Builds ``name``, exports it in every requested format and validates each file.

    Args:
        name: str. Registry name (or a keras.applications baseline of :mod:`export.build`).
        output_dir: str. Files go to ``output_dir/<model name>/``.
        formats: comma-separated str or sequence, a subset of :data:`ALL_FORMATS`. Defaults to all.
        weights: str or None. PyTorch checkpoint or Keras ``.weights.h5``. Defaults to None.
        model_kwargs: dict, JSON string or JSON file of builder overrides. Defaults to None.
        image_size: int or None. Input side. Defaults to the ``input_shape`` in ``model_kwargs``, else 224.
        input_type: str. "float" (normalised float RGB in) or "uint8" (RGB pixels in, the
            normalisation inside the model). Defaults to "float".
        dataset: str or None. int8 calibration images: None/"builtin", "synthetic",
            "folder:PATH" or a TFDS name. Defaults to None (built-in).
        num_calibration: int. Calibration images for int8. Defaults to 64.
        int8_input_type: str or None. "int8", "uint8" or "float"; None picks "uint8" for uint8
            input, else "int8".
        int8_output_type: str. "int8", "uint8" or "float". Defaults to "int8".
        require_full_delegation: bool. Fail TFLite files XNNPACK does not take whole. Defaults to False.
        verbose: bool. Print the validation table. Defaults to True.

    Returns:
        The validation report (also in ``output_dir/<name>/report.json``).

    Raises:
        ValueError: for unknown formats, names or types, an unwritable ``output_dir``, or weights
            for another model.
        export.validate.ValidationError: when an exported file fails validation.

    Example:
        >>> import tempfile
        >>> report = export_model("resnet50_max", output_dir=tempfile.mkdtemp(), formats="fp32", image_size=64,
        ...                       model_kwargs={"depths": [1, 1, 1, 1], "width_mult": 0.125}, verbose=False)
        >>> report["passed"]
        True
    """
    formats = tflite_lib.check_formats(formats, ALL_FORMATS)
    if int8_input_type is not None:
        tflite_lib.check_io_type(int8_input_type, "int8_input_type")
    tflite_lib.check_io_type(int8_output_type, "int8_output_type")
    output_dir = check_output_dir(output_dir)
    model = build_model(name, weights=weights, model_kwargs=model_kwargs, image_size=image_size, input_type=input_type)
    folder = os.path.join(output_dir, model.name)
    os.makedirs(folder, exist_ok=True)

    files: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="pf_keras_export_") as scratch:
        if "saved_model" in formats:
            files["saved_model"] = saved_model_lib.export_saved_model(
                model, os.path.join(folder, "saved_model"), input_type=input_type
            )
        static_dir = None
        if any(fmt != "saved_model" for fmt in formats):  # TFLite is converted from a batch-1 signature.
            static_dir = saved_model_lib.export_saved_model(
                model, os.path.join(scratch, "saved_model_batch1"), input_type=input_type, batch_size=1
            )
        images = None
        for fmt in formats:
            if fmt == "saved_model":
                continue
            if fmt == "int8" and images is None:
                images = load_images(dataset, num_calibration, int(model.input_shape[1]))
            path = os.path.join(folder, f"{model.name}_{fmt}.tflite")
            files[fmt] = tflite_lib.export_tflite(
                model,
                path,
                fmt,
                input_type=input_type,
                saved_model_dir=static_dir,
                calibration_images=images,
                int8_input_type=int8_input_type,
                int8_output_type=int8_output_type,
            )
    profile = pf_keras.profile(model)
    extra = {
        "build": {
            "name": name,
            "weights": weights,
            "model_kwargs": {
                k: list(v) if isinstance(v, tuple) else v for k, v in parse_model_kwargs(model_kwargs).items()
            },
            "image_size": int(model.input_shape[1]),
        },
        "params": profile.params,
        "macs": profile.macs,
        "int8": {
            "calibration_dataset": dataset or "builtin",
            "calibration_images": num_calibration,
            "average_pools_as_depthwise": tflite_lib.int8_rewrites(model),
        }
        if "int8" in formats
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
    )
    if verbose:
        print(validate_lib.format_table(report))
        print(f"Report: {report_path}")
    if not report["passed"]:
        failed = [e["format"] for e in report["files"] if not e["passed"]]
        raise validate_lib.ValidationError(f"Exported files failed validation: {failed}. Report: {report_path}")
    return report


def main(argv) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    if f.weights is None:  # Seeded random weights: the same model as the stage commands build.
        import keras

        keras.utils.set_random_seed(f.seed)
    try:
        export_model(
            f.model,
            output_dir=f.output_dir,
            formats=f.formats,
            weights=f.weights,
            model_kwargs=f.model_kwargs,
            image_size=f.image_size,
            input_type=f.input_type,
            dataset=f.dataset,
            num_calibration=f.num_calibration,
            int8_input_type=f.int8_input_type,
            int8_output_type=f.int8_output_type,
            require_full_delegation=f.require_full_delegation,
        )
    except (ValueError, validate_lib.ValidationError) as error:
        raise SystemExit(f"error: {error}") from error


if __name__ == "__main__":
    from absl import app, flags, logging

    from export import cli

    cli.define_model_flags()
    cli.define_output_flags()
    cli.define_tflite_flags(default_formats=",".join(ALL_FORMATS))
    flags.DEFINE_bool("require_full_delegation", False, "Fail .tflite files XNNPACK does not take whole.")
    logging.set_verbosity(logging.WARNING)
    app.run(main)
