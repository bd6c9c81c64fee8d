"""absl flag definitions shared by the export command lines (defined only when a CLI runs)."""

from __future__ import annotations

import keras
from absl import flags

from export.build import build_model
from export.images import INPUT_TYPES


def define_model_flags() -> None:
    """--model, --weights, --model_kwargs, --image_size, --input_type."""
    flags.DEFINE_string("model", None, "Registry name (pf_keras.list_models()), or keras_resnet50 / keras_mobilenetv2.")
    flags.DEFINE_string("weights", None, "Official .pth checkpoint or Keras .weights.h5 (a run's final.weights.h5).")
    flags.DEFINE_string("model_kwargs", None, "Builder overrides as a JSON object or a JSON file path.")
    flags.DEFINE_integer("image_size", None, "Input side (default: input_shape in --model_kwargs, else 224).")
    flags.DEFINE_enum(
        "input_type", "float", list(INPUT_TYPES),
        "float: normalised RGB in; uint8: RGB pixels in, preprocessing inside the model.",
    )
    flags.DEFINE_integer(
        "seed", 0, "Seed of the random initialisation when no --weights are given, so that separate stage "
        "commands (saved_model.py, tflite.py, validate.py) build the same model.",
    )
    flags.mark_flag_as_required("model")


def define_output_flags() -> None:
    """--output_dir."""
    flags.DEFINE_string("output_dir", None, "Files go to OUTPUT_DIR/<model name>/.")
    flags.mark_flag_as_required("output_dir")


def define_tflite_flags(default_formats: str) -> None:
    """--formats, --dataset, --num_calibration, --int8_input_type, --int8_output_type."""
    from export.tflite import IO_TYPES, NUM_CALIBRATION_IMAGES

    flags.DEFINE_string("formats", default_formats, "Comma-separated subset of saved_model,fp32,fp16,dynamic,int8.")
    flags.DEFINE_string(
        "dataset", None, "int8 calibration images: builtin (default), synthetic, folder:PATH or a TFDS name."
    )
    flags.DEFINE_integer("num_calibration", NUM_CALIBRATION_IMAGES, "Number of int8 calibration images.")
    flags.DEFINE_enum(
        "int8_input_type", None, list(IO_TYPES), "int8 file's input type (default: uint8 for uint8 input, else int8)."
    )
    flags.DEFINE_enum("int8_output_type", "int8", list(IO_TYPES), "Output type of the int8 file.")


def model_from_flags(flag_values) -> keras.Model:
    """Builds the model the model flags describe (seeded random weights without --weights)."""
    if flag_values.weights is None:
        keras.utils.set_random_seed(flag_values.seed)
    return build_model(
        flag_values.model,
        weights=flag_values.weights,
        model_kwargs=flag_values.model_kwargs,
        image_size=flag_values.image_size,
        input_type=flag_values.input_type,
    )
