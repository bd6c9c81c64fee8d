"""Evaluates a pf_keras model (top-1 / top-5) with the training pipeline's eval transform.

Reproducing the published 77.1 % top-1 of R50-hybrid from the official PyTorch checkpoint
(ImageNet val prepared with TFDS, see the README, "Training on tf.distribute"):

    python training/evaluate.py --model resnet50_hybrid --weights resnet50_hybrid.pth \\
        --dataset imagenet2012 --data_dir ~/tensorflow_datasets --output r50_hybrid_eval.json

A run of train.py: ``--model_dir runs/demo`` reads ``model.json`` and ``final.weights.h5``.
Every user error (an unfinished run, a bad flag, a damaged weights file, an ``--output`` that
cannot be written: checked before evaluating) is one line on stderr and status 2; ``--debug``
shows the traceback. ``--output`` is written atomically.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from typing import Any

import tensorflow as tf

import pf_keras
from pf_keras import fileio
from pf_keras.cli import one_line
from pf_keras_training import cli_main
from pf_keras_training import data as data_lib
from pf_keras_training import loop as loop_lib
from pf_keras_training.recipes import DataConfig, parse_kwargs


def evaluate(model_name: str, *, weights: str | None, dataset: str, data_dir: str | None = None,
             model_kwargs: dict[str, Any] | None = None, batch_size: int = 250, image_size: int = 0,
             crop_fraction: float = 0.0, interpolation: str = "", eval_examples: int = 0,
             strategy: tf.distribute.Strategy | None = None,
             max_image_pixels: int = data_lib.MAX_IMAGE_PIXELS) -> dict[str, Any]:
    """Top-1/top-5 of ``model_name`` with ``weights`` on the validation split of ``dataset``.

    Args:
        model_name: str. A registered model.
        weights: str or None. ``.pth`` (official, converted on load) or ``.weights.h5``.
        dataset: str. TFDS name, ``folder:PATH``, ``builtin`` or ``synthetic``.
        data_dir: str or None. TFDS data_dir.
        model_kwargs: dict. Extra ``create_model`` keywords (e.g. the ones a small run used).
        batch_size: int. Global eval batch. Defaults to 250.
        image_size: int. Crop size; 0 = the preset's (224). Defaults to 0.
        crop_fraction: float. 0 = the preset's (0.875). Defaults to 0.
        interpolation: str. "" = the preset's (bilinear for ResNets, bicubic for ViT/PiT).
        eval_examples: int. Evaluate only this many images (0 = all).
        strategy: tf.distribute.Strategy or None. Defaults to one device.
        max_image_pixels: int. Images whose header declares more pixels are skipped (0 = no limit).

    Returns:
        ``{"top1", "top5", "loss", "examples", "skipped", ...}``.

    Raises:
        ValueError: for a bad setting, a weights file that cannot be read, or a validation split
            without one decodable image.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
    if image_size < 0 or eval_examples < 0 or max_image_pixels < 0:
        raise ValueError(f"`image_size`, `eval_examples` and `max_image_pixels` must be >= 0. Received: "
                         f"image_size={image_size}, eval_examples={eval_examples}, max_image_pixels={max_image_pixels}")
    if not (math.isfinite(crop_fraction) and 0 <= crop_fraction <= 1):
        raise ValueError(
            f"`crop_fraction` must be in (0, 1] (0 = the preset's). Received: crop_fraction={crop_fraction}"
        )
    spec = pf_keras.SPECS.get(model_name)
    transform = spec.eval if spec else pf_keras.models.EvalTransform()
    image_size = image_size or transform.size
    crop_fraction = crop_fraction or transform.crop_fraction
    interpolation = interpolation or transform.interpolation
    cfg = DataConfig(dataset=dataset, data_dir=data_dir, global_batch_size=batch_size, image_size=image_size,
                     crop_fraction=crop_fraction, interpolation=interpolation, eval_examples=eval_examples)
    source = data_lib.resolve_source(cfg)
    strategy = strategy or loop_lib.create_strategy("one_device")
    if batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"The batch size must be divisible by the number of replicas ({strategy.num_replicas_in_sync}). "
            f"Received: batch_size={batch_size}"
        )
    kwargs = dict(model_kwargs or {})
    kwargs.update(input_shape=(image_size, image_size, 3), classes=source.num_classes,
                  classifier_activation=None, include_preprocessing=False)
    with strategy.scope():
        # .pth files are converted by the builder; Keras weight files load into the built model.
        try:
            model = pf_keras.create_model(model_name, weights=weights or None, **kwargs)
        except Exception as error:  # noqa: BLE001 (a damaged or foreign weights file is one line)
            if not weights or isinstance(error, ValueError):  # already one line that says what is wrong
                raise
            raise ValueError(f"cannot load weights {weights}: {one_line(error)[:500]}. Received: weights={weights!r}"
                             ) from None
    evaluator = loop_lib.Evaluator(strategy, model)
    result = evaluator.evaluate(data_lib.make_eval_dataset_fn(source, cfg, interpolation=interpolation,
                                                              max_image_pixels=max_image_pixels),
                                data_lib.eval_steps(source, cfg))
    return {
        "model": model_name, "weights": weights, "dataset": dataset, "top1": result["val_top1"],
        "top5": result["val_top5"], "loss": result["val_loss"], "examples": result["val_examples"],
        "skipped": result["val_skipped"], "image_size": image_size, "crop_fraction": crop_fraction,
        "interpolation": interpolation, "model_kwargs": {k: v for k, v in (model_kwargs or {}).items()},
    }


def _from_model_dir(model_dir: str) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """(name, weights path, create_model kwargs, eval settings) of a finished train.py run.

    Raises:
        ValueError: if ``model_dir`` holds no finished run (no or a damaged ``model.json``, no final weights).
    """
    path = os.path.join(model_dir, "model.json")
    weights = os.path.join(model_dir, "final.weights.h5")
    if not os.path.isdir(model_dir):
        raise ValueError(f"`model_dir` does not exist. Received: model_dir={model_dir!r}")
    if not (os.path.isfile(path) and os.path.isfile(weights)):
        raise ValueError(
            f"{model_dir} holds no finished run: model.json and final.weights.h5 are written when train.py ends "
            f"(finish or resume the run first, or pass --model and --weights). Received: model_dir={model_dir!r}"
        )
    try:
        with open(path, encoding="utf-8") as f:
            info = json.loads(f.read(1 << 20))
        kwargs = dict(info["kwargs"])
        image_size = int(kwargs.pop("input_shape")[0])
        name = str(info["name"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as error:
        raise ValueError(f"{path} is damaged ({type(error).__name__}: {one_line(error)[:200]}). "
                         f"Received: model_dir={model_dir!r}") from None
    for key in ("classes", "classifier_activation", "include_preprocessing", "include_top"):
        kwargs.pop(key, None)
    extra = {"image_size": image_size, "crop_fraction": info.get("crop_fraction") or 0.0,
             "interpolation": info.get("interpolation") or ""}
    return name, weights, kwargs, extra


def check_writable(path: str) -> None:
    """Fails now (one line) if ``path`` cannot be written later: its folder is missing or read-only, or it is a folder.

    Raises:
        ValueError: naming the path and the reason.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"`output` is a folder; pass a file name. Received: output={path!r}")
    if not os.path.isdir(folder):
        raise ValueError(f"The folder of `output` does not exist. Received: output={path!r}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".pf-probe-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"`output` cannot be written ({error.strerror or error}). Received: output={path!r}") from None


def _main(f) -> int:
    """Resolves the model (``--model``/``--weights`` or ``--model_dir``), evaluates, prints and writes JSON."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    if f.output:
        check_writable(f.output)  # before the (long) evaluation
    if f.batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={f.batch_size}")
    extra: dict[str, Any] = {}
    name, weights, kwargs = f.model, f.weights, parse_kwargs(f.model_kwargs)
    if f.model_dir:
        name, weights, stored, extra = _from_model_dir(f.model_dir)
        kwargs = {**stored, **kwargs}
    if not name:
        raise ValueError("Pass --model (with --weights) or --model_dir of a finished run. Received: model=None")
    for key in ("image_size", "crop_fraction", "interpolation"):
        if getattr(f, key):
            extra[key] = getattr(f, key)
    strategy = None
    if f.strategy != "one_device":
        if f.strategy == "mirrored" and f.num_replicas and not tf.config.list_physical_devices("GPU"):
            loop_lib.configure_cpu_replicas(f.num_replicas)
        strategy = loop_lib.create_strategy(f.strategy, num_replicas=f.num_replicas, tpu=f.tpu)
    result = evaluate(name, weights=weights, dataset=f.dataset, data_dir=f.data_dir, model_kwargs=kwargs,
                      batch_size=f.batch_size, eval_examples=f.eval_examples, strategy=strategy,
                      max_image_pixels=f.max_image_pixels, **extra)
    print(f"{name}: top-1 {100 * result['top1']:.2f} %  top-5 {100 * result['top5']:.2f} %  "
          f"({result['examples']} images, {result['skipped']} skipped)")
    if f.output:
        fileio.write_json(f.output, result)
    print(json.dumps(result))
    return 0


def define_flags(fv) -> None:
    """The absl flags of the command line, on ``fv``."""
    from absl import flags

    flags.DEFINE_string("model", None, "Registered model name.", flag_values=fv)
    flags.DEFINE_string("weights", None, ".pth (official) or .weights.h5.", flag_values=fv)
    flags.DEFINE_string("model_dir", None, "A finished train.py run (reads model.json and final.weights.h5).",
                        flag_values=fv)
    flags.DEFINE_string("model_kwargs", "", "create_model overrides: JSON or k=v,k2=v2.", flag_values=fv)
    flags.DEFINE_string("dataset", "imagenet2012", "TFDS name, folder:PATH, builtin or synthetic.", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "TFDS data_dir.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 250, "Global eval batch.", flag_values=fv)
    flags.DEFINE_integer("image_size", 0, "Crop size (0 = preset).", flag_values=fv)
    flags.DEFINE_float("crop_fraction", 0.0, "Crop fraction (0 = preset, 0.875).", flag_values=fv)
    flags.DEFINE_string("interpolation", "", "bilinear / bicubic ('' = preset).", flag_values=fv)
    flags.DEFINE_integer("eval_examples", 0, "Only the first N (0 = all).", flag_values=fv)
    flags.DEFINE_enum("strategy", "one_device", list(loop_lib.STRATEGIES), "Distribution strategy.", flag_values=fv)
    flags.DEFINE_integer("num_replicas", 0, "mirrored: logical CPU devices / GPUs.", flag_values=fv)
    flags.DEFINE_string("tpu", "", "TPU address.", flag_values=fv)
    flags.DEFINE_string("output", "", "Write the result as JSON here.", flag_values=fv)
    flags.DEFINE_integer("max_image_pixels", data_lib.MAX_IMAGE_PIXELS, "Skip images whose header declares more "
                         "pixels (0 = no limit).", flag_values=fv)


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv`` without the program name); returns the exit status."""
    return cli_main(_main, define_flags, argv, prog="evaluate.py")


if __name__ == "__main__":
    sys.exit(main())
