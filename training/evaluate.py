"""Evaluates a pf_keras model (top-1 / top-5) with the training pipeline's eval transform.

Reproducing the published 77.1 % top-1 of R50-hybrid from the official PyTorch checkpoint
(ImageNet val prepared with TFDS, see the README, "Training on tf.distribute"):

    pf-keras-evaluate --model resnet50_hybrid --weights resnet50_hybrid.pth \\
        --dataset imagenet2012 --data_dir ~/tensorflow_datasets --output_dir runs/r50_hybrid_eval

A run of train.py: ``--model_dir runs/demo`` reads its model folder ``final/`` (a preset folder:
build record, weights and eval transform); ``--model`` takes a registry name, a preset folder or a
run folder alike.
Every user error (an unfinished run, a bad flag, a damaged weights file, an ``--output_dir`` that
cannot be written: checked before evaluating) is one line on stderr and status 2; ``--debug``
shows the traceback. ``OUTPUT_DIR/evaluate.json`` is written atomically.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

if __name__ == "__main__":  # run as a script: TensorFlow's start-up lines silenced before it loads (unless --verbose)
    from pf_keras_export import startup

    startup.start(sys.argv, "pf-keras-evaluate")

import tensorflow as tf

import pf_keras
from pf_keras import fileio
from pf_keras.cli import one_line, parse_model_kwargs
from pf_keras.values import is_real
from pf_keras.weights.preset import model_folder, read_preset
from pf_keras_export import args
from pf_keras_training import data as data_lib
from pf_keras_training import loop as loop_lib
from pf_keras_training.recipes import DataConfig

PROG = "pf-keras-evaluate"
RESULT_FILE = "evaluate.json"
# Builder arguments evaluate() sets itself (from the image size and the dataset).
EVALUATE_SETS = ("classes", "classifier_activation", "include_preprocessing", "include_top", "input_shape")


def evaluate(model_name: str, *, weights: str | None, dataset: str, data_dir: str | None = None,
             model_kwargs: dict[str, Any] | None = None, batch_size: int = 250, image_size: int = 0,
             crop_fraction: float = 0.0, interpolation: str = "", eval_examples: int = 0,
             strategy: tf.distribute.Strategy | None = None,
             max_image_pixels: int = data_lib.MAX_IMAGE_PIXELS,
             class_names: tuple[str, ...] = ()) -> dict[str, Any]:
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
        class_names: the model's classes in output order (a run's ``final/`` records them), or empty. When the
            dataset names its classes too, they must be the same, in the same order: a renamed or re-sorted class
            folder would otherwise score the wrong labels without a word.

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
    if not (is_real(crop_fraction, finite=True) and 0 <= crop_fraction <= 1):
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
    if class_names and source.class_names and tuple(class_names) != tuple(source.class_names):
        differ = [i for i, (a, b) in enumerate(zip(class_names, source.class_names, strict=False)) if a != b]
        where = (f"class {differ[0]}: the model's {class_names[differ[0]]!r}, the dataset's "
                 f"{source.class_names[differ[0]]!r}" if differ else
                 f"{len(class_names)} classes in the model, {len(source.class_names)} in the dataset")
        raise ValueError(
            f"The dataset's classes are not the model's ({where}); its labels would be scored against the wrong "
            f"outputs. Evaluate on the classes the model was trained on (or pass --model and --weights to skip "
            f"this check). Received: dataset={dataset!r}")
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
    try:
        result = evaluator.evaluate(data_lib.make_eval_dataset_fn(source, cfg, interpolation=interpolation,
                                                                  max_image_pixels=max_image_pixels),
                                    data_lib.eval_steps(source, cfg))
    except tf.errors.OpError as error:  # a damaged TFRecord shard, a stream of undecodable files: one line
        explained = data_lib.explain_data_error(error, source, "val", 0)
        if explained is error:
            raise
        raise explained from None
    return {
        "model": model_name, "weights": weights, "dataset": dataset, "top1": result["val_top1"],
        "top5": result["val_top5"], "loss": result["val_loss"], "examples": result["val_examples"],
        "skipped": result["val_skipped"], "image_size": image_size, "crop_fraction": crop_fraction,
        "interpolation": interpolation, "model_kwargs": {k: v for k, v in (model_kwargs or {}).items()},
    }


def _from_model_dir(model_dir: str) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """(name, preset folder, create_model kwargs, eval settings) of a finished train.py run (or its ``final/``).

    Raises:
        ValueError: one line if ``model_dir`` holds no finished run (an unfinished run, a run of an
            older pf-keras without ``final/``, a damaged preset folder).
    """
    preset_dir = model_folder(model_dir)  # the run's final/ (or model_dir itself, a preset folder)
    preset = read_preset(preset_dir)  # ValueError naming a missing or malformed file
    transform = preset.metadata.get("eval_transform")
    transform = transform if isinstance(transform, dict) else {}
    try:
        image_size = int(preset.config["input_shape"][0])
    except (KeyError, TypeError, IndexError, ValueError) as error:
        raise ValueError(f"{preset_dir}/config.json has no usable input_shape ({type(error).__name__}). "
                         f"Received: model_dir={model_dir!r}") from None
    crop_fraction = transform.get("crop_fraction") or 0.0
    if not is_real(crop_fraction):
        raise ValueError(f"{preset_dir}/metadata.json: `eval_transform.crop_fraction` must be a number. "
                         f"Received: crop_fraction={crop_fraction!r}")
    extra = {"image_size": image_size, "crop_fraction": crop_fraction,
             "interpolation": transform.get("interpolation") or ""}
    names = preset.metadata.get("class_names")
    if names:  # a run's final/ records the classes it was trained on, in output order
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ValueError(f"{preset_dir}/metadata.json: `class_names` must be a list of strings. "
                             f"Received: class_names of type {type(names).__name__}")
        extra["class_names"] = tuple(names)
    kwargs = {k: v for k, v in preset.config.items() if k not in EVALUATE_SETS}
    return preset.model, preset_dir, kwargs, extra


def check_output_dir(output_dir: str, name: str = RESULT_FILE) -> str:
    """Creates ``output_dir`` and fails now (one line) if it cannot be written later; returns ``output_dir/name``.

    Raises:
        ValueError: naming the folder and the reason (a file, read-only, ...).
    """
    try:
        os.makedirs(output_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".pf-probe-", dir=output_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"`output_dir` cannot be written ({error.strerror or error}). "
                         f"Received: output_dir={output_dir!r}") from None
    return os.path.join(output_dir, name)


def _main(f) -> int:
    """Resolves the model (``--model``/``--weights`` or ``--model_dir``), evaluates, prints and writes JSON."""
    output = check_output_dir(f.output_dir) if f.output_dir else None  # before the (long) evaluation
    if f.batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={f.batch_size}")
    extra: dict[str, Any] = {}
    name, weights, kwargs = f.model, f.weights, parse_model_kwargs(f.model_kwargs)
    model_dir = f.model_dir
    if not model_dir and f.model and f.model not in pf_keras.list_models() and os.path.isdir(f.model):
        model_dir = f.model  # a preset folder or a run folder
    if model_dir:
        name, weights, stored, extra = _from_model_dir(model_dir)
        kwargs = {**stored, **kwargs}
        weights = f.weights or weights
    if not name:
        raise ValueError("Pass --model (with --weights) or --model_dir of a finished run. Received: model=None")
    if "input_shape" in kwargs:  # the export commands' default: the side in --model_kwargs' input_shape
        shape = kwargs.pop("input_shape")
        if not (isinstance(shape, list | tuple) and shape and isinstance(shape[0], int) and shape[0] > 0):
            raise ValueError(f"`input_shape` in the model kwargs must be (size, size, 3). Received: {shape!r}")
        extra["image_size"] = shape[0]
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
    if output:
        fileio.write_json(output, result)
    if f.json:
        print(json.dumps(result))
    else:
        print(f"{name}: top-1 {100 * result['top1']:.2f} %  top-5 {100 * result['top5']:.2f} %  "
              f"({result['examples']} images, {result['skipped']} skipped)" + (f"; wrote {output}" if output else ""))
    return 0


def build_parser() -> args.ArgumentParser:
    """The flags of pf-keras-evaluate (the README's flag table)."""
    p = args.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="Registry name (pf_keras.list_models()), a preset folder (a run's final/) or a "
                   "run folder (as --model_dir).")
    args.add_model_kwargs_flag(p)
    p.add_argument("--weights", help="Official .pth checkpoint or Keras .weights.h5 (with --model_dir: instead of "
                   "the weights in the run's final/, e.g. its final_ema.weights.h5).")
    p.add_argument("--model_dir", help="A finished pf-keras-train run (reads its model folder final/).")
    p.add_argument("--dataset", default="imagenet2012", help="builtin, synthetic, folder:PATH or a TFDS name "
                   "(default imagenet2012).")
    p.add_argument("--data_dir", help="TFDS data folder (default: TFDS's own).")
    args.add_image_size_flag(p)
    p.add_argument("--batch_size", type=int, default=250, help="Global eval batch (default 250).")
    p.add_argument("--crop_fraction", type=float, default=0.0, help="Crop fraction (default: the run's, else the "
                   "model's preset, 0.875).")
    p.add_argument("--interpolation", default="", help="bilinear or bicubic (default: the run's, else the preset's).")
    p.add_argument("--eval_examples", type=int, default=0, help="Only the first N images (default 0 = all).")
    p.add_argument("--strategy", default="one_device", choices=list(loop_lib.STRATEGIES),
                   help="Distribution strategy (default one_device).")
    p.add_argument("--num_replicas", type=int, default=0, help="mirrored: logical CPU devices / GPUs (0 = all).")
    p.add_argument("--tpu", default="", help="TPU name or address (strategy=tpu).")
    p.add_argument("--max_image_pixels", type=int, default=data_lib.MAX_IMAGE_PIXELS, help="Skip images whose "
                   "header declares more pixels (0 = no limit).")
    p.add_argument("--output_dir", help=f"Also write the result to OUTPUT_DIR/{RESULT_FILE} (atomically).")
    args.add_run_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv`` without the program name); returns the exit status."""
    return args.run_tool(lambda a: _main(build_parser().parse_args(a)), argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
