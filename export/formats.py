"""The export format registry: every format the export tools know, each one object, in one place.

A :class:`Format` holds the format's name, its file name, its tolerance against Keras, its
converter (Keras model -> file), its static inspection (file -> report fields and failures)
and its runner (file + inputs -> outputs). ``export``, ``validate``, ``benchmark`` and
``android`` iterate over :data:`FORMATS`; nothing else lists format names.

Adding a format: a module with ``convert(model, path, name, context)``, ``inspect(path)`` and
``run(path, inputs, *, input_type)`` (as :mod:`pf_keras_export.tflite` has), one
``register(Format(...))`` call below, and its test.

Tolerances bound ``max|file - keras|`` and ``mean|file - keras|`` on the model output, scaled by
``max(1, max|keras output|)`` so that they mean the same for softmax probabilities (scale 1)
and for logits. Why these values:

- ``saved_model`` 1e-5: the same TF kernels run the same graph; only op fusion differs.
- ``fp32`` 1e-4: XNNPACK reorders float sums and folds BatchNorm into the convolutions;
  observed errors are ~1e-6.
- ``fp16`` 1e-2 max / 2e-3 mean: weights rounded to 11 significant bits (relative 2^-11 per
  weight), accumulated over ~50 layers; observed ~1e-3.
- ``dynamic`` 0.1 / 0.02: int8 weights (per-channel) and activations quantized per inference.
- ``int8`` 0.2 / 0.04: int8 weights and activations with calibrated (static) ranges; errors of
  5-10 % of the output scale are normal for an untuned post-training quantization, and random
  (untrained) weights are the hardest case.
- ``int8_mixed`` 0.2 / 0.04: the same quantization on fewer ops (the rest stays float), so the
  bound of ``int8`` holds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

from pf_keras_export import saved_model, tflite


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Bounds on ``max|file - keras|`` and ``mean|file - keras|``, in units of ``max(1, max|keras|)``."""

    max_abs: float
    mean_abs: float


@dataclasses.dataclass(frozen=True)
class Format:
    """One export format.

    Attributes:
        name: str. The ``--formats`` name.
        description: str. One line for ``--help`` and the README.
        file_name: str. Name of the file (or folder) in the export folder; ``{model}`` is the model name.
        tolerance: Tolerance. Agreement with Keras the file must reach.
        convert: callable ``(model, path, context) -> path``: writes the file atomically.
        inspect: callable ``path -> (report fields, failures)``: static checks of the written file.
            Raises ValueError when the file is unreadable.
        run: callable ``(path, inputs, *, input_type) -> (outputs, report fields)``. Raises
            ValueError when the file does not load or run.
        timeable: bool. A LiteRT file the latency benchmarks (host and phone) can time.
    """

    name: str
    description: str
    file_name: str
    tolerance: Tolerance
    convert: Callable
    inspect: Callable
    run: Callable
    timeable: bool = False

    def path_in(self, folder: str, model_name: str) -> str:
        """Where this format's file of ``model_name`` lives in an export folder."""
        return os.path.join(folder, self.file_name.format(model=model_name))


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Adds ``fmt`` to :data:`FORMATS`; ValueError if the name is taken."""
    if fmt.name in FORMATS:
        raise ValueError(f"Format {fmt.name!r} is already registered.")
    FORMATS[fmt.name] = fmt
    return fmt


def _tflite_converter(name: str) -> Callable:
    return lambda model, path, context: tflite.convert(model, path, name, context)


def _no_inspection(path: str) -> tuple[dict, list[str]]:
    del path
    return {}, []


register(Format(
    name="saved_model",
    description="TensorFlow SavedModel (serving_default: image -> predictions), any batch",
    file_name="saved_model",
    tolerance=Tolerance(1e-5, 1e-6),
    convert=lambda model, path, context: saved_model.export_saved_model(model, path, input_type=context.input_type),
    inspect=_no_inspection,
    run=saved_model.run_saved_model,
))
_TFLITE = {
    "fp32": ("TFLite, float32 weights and compute", Tolerance(1e-4, 1e-5)),
    "fp16": ("TFLite, float16 weights, float32 compute", Tolerance(1e-2, 2e-3)),
    "dynamic": ("TFLite, int8 weights, activations quantized per inference", Tolerance(0.1, 0.02)),
    "int8": ("TFLite, full integer (calibrated int8 weights and activations)", Tolerance(0.2, 0.04)),
    "int8_mixed": ("TFLite, calibrated int8 where XNNPACK has int8 kernels, float elsewhere (LayerNorm, attention)",
                   Tolerance(0.2, 0.04)),
}
for _name, (_description, _tolerance) in _TFLITE.items():
    register(Format(
        name=_name,
        description=_description,
        file_name=f"{{model}}_{_name}.tflite",
        tolerance=_tolerance,
        convert=_tflite_converter(_name),
        inspect=tflite.inspect,
        run=tflite.run,
        timeable=True,
    ))


def names(*, timeable: bool | None = None) -> list[str]:
    """Registered format names, in registration order (only the timeable ones with ``timeable=True``)."""
    return [name for name, fmt in FORMATS.items() if timeable is None or fmt.timeable == timeable]


def parse(formats: str | Sequence[str] | None, *, timeable: bool | None = None, key: str = "formats") -> list[Format]:
    """The formats named by a comma-separated string or a sequence (duplicates dropped, order kept).

    Raises:
        ValueError: for an unknown or empty selection.

    Example:
        >>> [f.name for f in parse("fp32, int8,fp32")]
        ['fp32', 'int8']
    """
    allowed = names(timeable=timeable)
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    selected = list(dict.fromkeys(formats or ()))
    if not selected or any(name not in allowed for name in selected):
        raise ValueError(f"`{key}` must be a non-empty subset of {tuple(allowed)}. Received: {key}={selected!r}")
    return [FORMATS[name] for name in selected]


def by_file_name(file_name: str) -> tuple[str, Format] | None:
    """``(model name, format)`` of a file named as a registered format names its files, else None.

    Example:
        >>> model, fmt = by_file_name("resnet50_hybrid_int8.tflite")
        >>> model, fmt.name
        ('resnet50_hybrid', 'int8')
    """
    for fmt in FORMATS.values():
        prefix, _, suffix = fmt.file_name.partition("{model}")
        if suffix and file_name.startswith(prefix) and file_name.endswith(suffix):
            model = file_name[len(prefix) : len(file_name) - len(suffix)]
            if model:
                return model, fmt
    return None
