"""TFLite conversion from the serving SavedModel: fp32, fp16, dynamic-range, full-integer and mixed int8.

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
- ``int8_mixed``: calibrated int8 like ``int8`` for every op XNNPACK runs in int8
  (convolutions, dense layers, adds, pools, ...), float for the ops it runs only in float
  (:data:`MIXED_FLOAT_OPS`: in pf_keras graphs LayerNorm's SQUARED_DIFFERENCE/RSQRT, the
  attention BATCH_MATMULs, SOFTMAX, GELU; average pools are rewritten as for int8), so the
  whole graph stays on the delegate; input and output as the SavedModel's (float, or uint8
  pixels). This is what litert-torch's PT2E int8 files of the transformers look like, and on a
  CPU it is about 4x faster than full-integer ViT-S-max (README "Phone route"). Built with
  TensorFlow's selective quantization (``tf.lite.experimental.QuantizationDebugger`` with
  ``denylisted_ops`` and ``denylisted_nodes``).

With ``input_type="uint8"`` (RGB pixels in, normalisation inside) the float formats start with a
CAST; the int8 file is converted from a float-pixel SavedModel and its uint8 input has scale 1
and zero point 0, so raw pixels go in unchanged (int8 input: pixel - 128).

int8 graph rewrite: XNNPACK has no int8 AVERAGE_POOL_2D, so R50-hybrid's three 2x2/2 average
pools would each leave the delegate (4 partitions). Before int8 and int8_mixed conversion,
:func:`average_pools_as_depthwise` replaces every non-overlapping "valid" ``AveragePooling2D``
by a ``DepthwiseConv2D`` with the same window and constant weights ``1 / (kh * kw)`` (bit-exact
in float; 0.25 is exact in int8 too), which XNNPACK runs in int8: one partition.

Each file is written atomically (:func:`pf_keras.fileio.write_bytes`).
"""

from __future__ import annotations

import os
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from pf_keras import fileio
from pf_keras_export import litert, quiet
from pf_keras_export import saved_model as saved_model_lib
from pf_keras_export.images import model_inputs

FORMATS = ("fp32", "fp16", "dynamic", "int8", "int8_mixed")  # the TFLite formats of the registry (formats.py)
CALIBRATED = ("int8", "int8_mixed")  # the formats that need calibration images
# Ops XNNPACK runs in float but not in int8: int8_mixed keeps them float (litert.py knows both sets).
MIXED_FLOAT_OPS = tuple(sorted(litert.XNNPACK_OPS["float"] - litert.XNNPACK_OPS["int8"]
                               | litert.XNNPACK_INT8_CONDITIONAL))
IO_TYPES = ("int8", "uint8", "float")
_TF_TYPES = {"int8": tf.int8, "uint8": tf.uint8, "float": tf.float32}
# Default size of the int8 calibration set: a few hundred is the usual recommendation; 64
# keeps the calibration of full-size models quick on a 2-core host (raise it for deployment).
NUM_CALIBRATION_IMAGES = 64


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
    if fmt not in FORMATS:
        raise ValueError(f"`fmt` must be one of {FORMATS}. Received: fmt={fmt!r}")
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fmt == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt in CALIBRATED:
        if fmt == "int8":
            check_io_type(int8_input_type, "int8_input_type")
            check_io_type(int8_output_type, "int8_output_type")
        if representative_inputs is None or len(representative_inputs) == 0:
            raise ValueError(f"{fmt} conversion needs representative inputs. Received: representative_inputs=None")
        samples = np.asarray(representative_inputs)

        def representative_dataset():
            for sample in samples:
                yield {saved_model_lib.INPUT_NAME: sample[None]}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        if fmt == "int8_mixed":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tf.lite.OpsSet.TFLITE_BUILTINS]
            return _selectively_quantized(converter, representative_dataset)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = _TF_TYPES[int8_input_type]
        converter.inference_output_type = _TF_TYPES[int8_output_type]
    with warnings.catch_warnings(), quiet.silenced():  # the calibrator prints its settings to stderr
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")  # used by the calibrator
        return converter.convert()


def _selectively_quantized(converter, representative_dataset) -> bytes:
    """int8 except :data:`MIXED_FLOAT_OPS` and the quantized adds XNNPACK would refuse for their scales.

    The adds (LayerNorm's ``variance + epsilon``) are found in a first conversion and kept float by
    name in a second one, so that the file is one XNNPACK partition.
    """
    def quantize(denied_nodes: list[str] | None) -> bytes:
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(MIXED_FLOAT_OPS),
                                                                denylisted_nodes=denied_nodes)
        with warnings.catch_warnings(), quiet.silenced():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=representative_dataset, debug_options=options)
            return debugger.get_nondebug_quantized_model()

    content = quantize(None)
    refused = litert.scale_refused_outputs(content)
    return quantize(refused) if refused else content


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
        calibration_images: uint8 array ``(n, H, W, 3)``. Required for "int8" and "int8_mixed".
        int8_input_type: str or None. Input type of the int8 file; None: "uint8" for uint8 input,
            else "int8".
        int8_output_type: str. Output type of the int8 file. Defaults to "int8".

    Returns:
        ``path``.

    Raises:
        ValueError: for bad arguments, or when a uint8 int8 input did not get scale 1.
        pf_keras.fileio.WriteError: when the file cannot be written (e.g. a full disk).
    """
    if fmt not in FORMATS:
        raise ValueError(f"`fmt` must be one of {FORMATS}. Received: fmt={fmt!r}")
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
        if fmt in CALIBRATED:
            model, rewritten = average_pools_as_depthwise(model)
        if saved_model_dir is None or needs_float_signature or rewritten:
            saved_model_dir = saved_model_lib.export_saved_model(
                model,
                os.path.join(scratch, "saved_model"),
                input_type="float" if needs_float_signature else input_type,
                batch_size=1,
            )
        representative = None
        if fmt in CALIBRATED:
            if calibration_images is None:
                raise ValueError(f"{fmt} export needs calibration images. Received: calibration_images=None")
            representative = calibration_inputs(calibration_images, takes_pixels=pixels)
            if fmt == "int8_mixed" and input_type == "uint8":  # calibrated on the uint8 signature itself
                representative = np.asarray(calibration_images, dtype=np.uint8)
        content = convert_saved_model(
            saved_model_dir,
            fmt,
            representative_inputs=representative,
            int8_input_type=int8_input_type,
            int8_output_type=int8_output_type,
        )
    if fmt == "int8" and input_type == "uint8":
        _check_pixel_quantization(content, int8_input_type)
    fileio.write_bytes(path, content)
    return path


def _check_pixel_quantization(content: bytes, int8_input_type: str) -> None:
    detail, _ = litert.io_details(litert.interpreter(content))
    scale, zero_point = detail["quantization"]
    expected = 0 if int8_input_type == "uint8" else -128
    if not np.isclose(scale, 1.0) or zero_point != expected:
        raise ValueError(
            f"The int8 file's {int8_input_type} input should map pixels 1:1 (scale 1, zero point {expected}); "
            f"calibration gave scale {scale}, zero point {zero_point}."
        )


def convert(model: keras.Model, path: str, fmt: str, context) -> str:
    """The registry's converter of the TFLite formats: :func:`export_tflite` with an :class:`ExportContext`."""
    return export_tflite(
        model,
        path,
        fmt,
        input_type=context.input_type,
        saved_model_dir=context.batch1_saved_model(model),
        calibration_images=context.calibration_images(int(model.input_shape[1])) if fmt in CALIBRATED else None,
        int8_input_type=context.int8_input_type,
        int8_output_type=context.int8_output_type,
    )


def inspect(path: str) -> tuple[dict, list[str]]:
    """Static facts of a ``.tflite`` file read from its flatbuffer: op counts, custom ops, XNNPACK coverage.

    Returns:
        ``(report fields, failures)``; a failure is "Flex/custom ops: [...]".

    Raises:
        ValueError: when the file is not a readable ``.tflite`` flatbuffer.
    """
    try:
        content = litert.read_flatbuffer(path)
    except OSError as error:  # a FIFO, a device, a folder, a file over the flatbuffer limit
        raise ValueError(f"cannot read {path} ({type(error).__name__}: {error.strerror or error})") from None
    ops, custom_ops = litert.tflite_ops(content)
    info = {"ops": ops, "custom_ops": custom_ops, "xnnpack": litert.xnnpack_coverage(content)}
    return info, [f"Flex/custom ops: {custom_ops}"] if custom_ops else []


def run(path: str, inputs: np.ndarray, *, input_type: str = "float") -> tuple[np.ndarray, dict]:
    """Runs a ``.tflite`` file with LiteRT (XNNPACK on) sample by sample on float ``inputs``.

    Returns:
        ``(outputs, {"input": ..., "output": ...})``: the outputs and the I/O tensor summaries.

    Raises:
        ValueError: when LiteRT cannot load or run the file.
    """
    del input_type  # the file's own input tensor says how to feed it
    runner = litert.interpreter(path)
    in_detail, out_detail = litert.io_details(runner, path)
    info = {"input": litert.tensor_summary(in_detail), "output": litert.tensor_summary(out_detail)}
    try:
        outputs = litert.run_tflite(runner, inputs)
    except (ValueError, RuntimeError) as error:  # LiteRT's set_tensor/invoke failures (shape, type)
        raise ValueError(f"LiteRT cannot run {path}: {' '.join(str(error).split())}") from None
    return outputs, info
