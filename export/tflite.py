"""TFLite conversion from the serving SavedModel: fp32, fp16, dynamic-range and full-integer int8.

Keras 3 models do not go through ``TFLiteConverter.from_keras_model`` (it fails on them); the
path is Keras ``ExportArchive`` -> SavedModel -> ``TFLiteConverter.from_saved_model``. Only
builtin ops are allowed (no Flex / SELECT_TF_OPS, no custom ops), so every file runs in the
standalone LiteRT runtime and on Android.

Formats:

- ``fp32``: float weights and activations.
- ``fp16``: float16 weights (half the size), float32 compute (the runtime dequantizes once).
- ``dynamic``: int8 weights, activations quantized on the fly per inference; float in and out.
- ``int8``: full-integer (int8 weights and activations, builtin int8 kernels only), calibrated
  on representative images; input and output types selectable (int8, uint8 or float).

With ``input_type="uint8"`` (RGB pixels in, normalisation inside) the float formats start with a
CAST; the int8 file is converted from a float-pixel SavedModel and its uint8 input has scale 1
and zero point 0, so raw pixels go in unchanged (int8 input: pixel - 128).

int8 graph rewrite: XNNPACK has no int8 AVERAGE_POOL_2D, so R50-hybrid's three 2x2/2 average
pools would each leave the delegate (4 partitions). Before int8 conversion,
:func:`average_pools_as_depthwise` replaces every non-overlapping "valid" ``AveragePooling2D``
by a ``DepthwiseConv2D`` with the same window and constant weights ``1 / (kh * kw)`` (bit-exact
in float; 0.25 is exact in int8 too), which XNNPACK runs in int8: one partition.

CLI (from the repository root)::

    python export/tflite.py --model resnet50_hybrid --formats fp32,int8 --output_dir out

writes ``out/resnet50_hybrid/resnet50_hybrid_<format>.tflite`` (no validation; use export.py).
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
import warnings  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from export import saved_model as saved_model_lib  # noqa: E402
from export.images import model_inputs  # noqa: E402

FORMATS = ("fp32", "fp16", "dynamic", "int8")
IO_TYPES = ("int8", "uint8", "float")
_TF_TYPES = {"int8": tf.int8, "uint8": tf.uint8, "float": tf.float32}
# Default size of the int8 calibration set: a few hundred is the usual recommendation; 64
# keeps the calibration of full-size models quick on a 2-core host (raise it for deployment).
NUM_CALIBRATION_IMAGES = 64


def check_formats(formats: str | Sequence[str], allowed: Sequence[str] = FORMATS) -> list[str]:
    """A list of formats from a comma-separated string or a sequence; ValueError for unknown ones."""
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in allowed]
    if unknown or not formats:
        raise ValueError(f"`formats` must be a non-empty subset of {tuple(allowed)}. Received: formats={formats!r}")
    return formats


def check_io_type(value: str, arg: str) -> str:
    """Validates an int8 input/output type name."""
    if value not in IO_TYPES:
        raise ValueError(f"`{arg}` must be one of {IO_TYPES}. Received: {arg}={value!r}")
    return value


def convert_saved_model(
    saved_model_dir: str,
    fmt: str,
    *,
    representative_inputs: np.ndarray | None = None,
    int8_input_type: str = "int8",
    int8_output_type: str = "int8",
) -> bytes:
    """Converts a SavedModel to a TFLite flatbuffer with builtin ops only.

    Args:
        saved_model_dir: str. A SavedModel with a ``serving_default`` signature whose input is ``image``.
        fmt: str. One of :data:`FORMATS`.
        representative_inputs: array. Calibration inputs exactly as the signature takes them
            (batch axis first); required for "int8".
        int8_input_type: str. Input tensor type of the int8 file (:data:`IO_TYPES`). Defaults to "int8".
        int8_output_type: str. Output tensor type of the int8 file. Defaults to "int8".

    Returns:
        The ``.tflite`` bytes.

    Raises:
        ValueError: for an unknown format or type, or int8 without representative inputs.
    """
    check_formats([fmt])
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fmt == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt == "int8":
        check_io_type(int8_input_type, "int8_input_type")
        check_io_type(int8_output_type, "int8_output_type")
        if representative_inputs is None or len(representative_inputs) == 0:
            raise ValueError("int8 conversion needs representative inputs. Received: representative_inputs=None")
        samples = np.asarray(representative_inputs)

        def representative_dataset():
            for sample in samples:
                yield {saved_model_lib.INPUT_NAME: sample[None]}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = _TF_TYPES[int8_input_type]
        converter.inference_output_type = _TF_TYPES[int8_output_type]
    with warnings.catch_warnings():  # The calibrator still uses the deprecated tf.lite.Interpreter.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return converter.convert()


def _rewritable(layer) -> bool:
    return (
        isinstance(layer, keras.layers.AveragePooling2D)
        and tuple(layer.pool_size) == tuple(layer.strides)
        and layer.padding == "valid"
        and layer.data_format == "channels_last"
    )


def int8_rewrites(model: keras.Model) -> list[str]:
    """Names of the layers :func:`average_pools_as_depthwise` rewrites for int8."""
    return [layer.name for layer in model.layers if _rewritable(layer)]


def average_pools_as_depthwise(model: keras.Model) -> tuple[keras.Model, list[str]]:
    """``model`` with its non-overlapping valid average pools as fixed-weight depthwise convs.

    Returns:
        ``(model, names of the rewritten layers)``; the model itself when there is nothing to rewrite.
    """
    names = int8_rewrites(model)
    if not names:
        return model, []

    def clone(layer):
        if _rewritable(layer):
            kh, kw = layer.pool_size
            return keras.layers.DepthwiseConv2D(
                (kh, kw), strides=layer.strides, padding="valid", use_bias=False, trainable=False,
                depthwise_initializer=keras.initializers.Constant(1.0 / (kh * kw)), name=layer.name,
            )
        return layer.__class__.from_config(layer.get_config())

    rewritten = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.weights:
            rewritten.get_layer(layer.name).set_weights(layer.get_weights())
    return rewritten, names


def calibration_inputs(images: np.ndarray, *, takes_pixels: bool) -> np.ndarray:
    """Float calibration inputs from uint8 images.

    For pixel models the first image gets one black and one white pixel so that calibration
    sees the full [0, 255] range: the uint8 input then has scale 1 and zero point 0 exactly.
    """
    inputs = model_inputs(images, takes_pixels=takes_pixels)
    if takes_pixels:
        inputs = inputs.copy()
        inputs[0, 0, 0, :] = 0.0
        inputs[0, 0, 1, :] = 255.0
    return inputs


def export_tflite(
    model: keras.Model,
    path: str,
    fmt: str,
    *,
    input_type: str = "float",
    saved_model_dir: str | None = None,
    calibration_images: np.ndarray | None = None,
    int8_input_type: str | None = None,
    int8_output_type: str = "int8",
) -> str:
    """Writes ``model`` as a ``.tflite`` file in format ``fmt``.

    Args:
        model: keras.Model with a known input size.
        path: str. Output file.
        fmt: str. One of :data:`FORMATS`.
        input_type: str. "float" or "uint8", as for the SavedModel. Defaults to "float".
        saved_model_dir: str or None. A batch-1 serving SavedModel of ``model`` with the same
            ``input_type`` (``export_saved_model(..., batch_size=1)``); written to a temporary
            folder when None. The ``.tflite`` input is ``(1, H, W, 3)``.
        calibration_images: uint8 array ``(n, H, W, 3)``. Required for "int8".
        int8_input_type: str or None. Input type of the int8 file; None: "uint8" for uint8 input,
            else "int8".
        int8_output_type: str. Output type of the int8 file. Defaults to "int8".

    Returns:
        ``path``.

    Raises:
        ValueError: for bad arguments; RuntimeError if a uint8 int8 input did not get scale 1.
    """
    check_formats([fmt])
    saved_model_lib.check_input_type(model, input_type)
    if int8_input_type is None:
        int8_input_type = "uint8" if input_type == "uint8" else "int8"
    pixels = saved_model_lib.takes_pixels(model)
    if input_type == "uint8" and fmt == "int8" and int8_input_type == "float":
        raise ValueError(
            "With --input_type uint8 the int8 file takes uint8 (pixels) or int8 (pixels - 128) input. "
            "Received: int8_input_type='float'"
        )
    with tempfile.TemporaryDirectory(prefix="pf_keras_export_") as scratch:
        # int8 is calibrated on a float signature; for uint8 models that is the float-pixel one.
        needs_float_signature = fmt == "int8" and input_type == "uint8"
        rewritten = []
        if fmt == "int8":
            model, rewritten = average_pools_as_depthwise(model)
        if saved_model_dir is None or needs_float_signature or rewritten:
            saved_model_dir = saved_model_lib.export_saved_model(
                model,
                os.path.join(scratch, "saved_model"),
                input_type="float" if needs_float_signature else input_type,
                batch_size=1,
            )
        representative = None
        if fmt == "int8":
            if calibration_images is None:
                raise ValueError("int8 export needs calibration images. Received: calibration_images=None")
            representative = calibration_inputs(calibration_images, takes_pixels=pixels)
        content = convert_saved_model(
            saved_model_dir,
            fmt,
            representative_inputs=representative,
            int8_input_type=int8_input_type,
            int8_output_type=int8_output_type,
        )
    if fmt == "int8" and input_type == "uint8":
        _check_pixel_quantization(content, int8_input_type)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    return path


def _check_pixel_quantization(content: bytes, int8_input_type: str) -> None:
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_content=content).get_input_details()[0]
    scale, zero_point = detail["quantization"]
    expected = 0 if int8_input_type == "uint8" else -128
    if not np.isclose(scale, 1.0) or zero_point != expected:
        raise RuntimeError(
            f"The int8 file's {int8_input_type} input should map pixels 1:1 (scale 1, zero point {expected}); "
            f"calibration gave scale {scale}, zero point {zero_point}."
        )


def main(argv) -> None:
    from absl import flags

    from export import cli
    from export.images import load_images

    del argv
    flag_values = flags.FLAGS
    model = cli.model_from_flags(flag_values)
    size = int(model.input_shape[1])
    images = None
    for fmt in check_formats(flag_values.formats):
        if fmt == "int8" and images is None:
            images = load_images(flag_values.dataset, flag_values.num_calibration, size)
        path = os.path.join(flag_values.output_dir, model.name, f"{model.name}_{fmt}.tflite")
        print(
            export_tflite(
                model,
                path,
                fmt,
                input_type=flag_values.input_type,
                calibration_images=images,
                int8_input_type=flag_values.int8_input_type,
                int8_output_type=flag_values.int8_output_type,
            )
        )


if __name__ == "__main__":
    from absl import app, logging

    from export import cli

    cli.define_model_flags()
    cli.define_output_flags()
    cli.define_tflite_flags(default_formats=",".join(FORMATS))
    logging.set_verbosity(logging.WARNING)
    app.run(main)
