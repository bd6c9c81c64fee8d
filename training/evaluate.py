"""Evaluates a pf_keras model (top-1 / top-5) with the training pipeline's eval transform.

Reproducing the published 77.1 % top-1 of R50-hybrid from the official PyTorch checkpoint
(ImageNet val prepared with TFDS, see the README, "Training on tf.distribute"):

    python training/evaluate.py --model resnet50_hybrid --weights resnet50_hybrid.pth \\
        --dataset imagenet2012 --data_dir ~/tensorflow_datasets --output r50_hybrid_eval.json

A run of train.py: ``--model_dir runs/demo`` reads ``model.json`` and ``final.weights.h5``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

if __package__ in (None, ""):  # run as a script: make `training` importable from the repo root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf

import pf_keras
from training import cli_main
from training import data as data_lib
from training import loop as loop_lib
from training.recipes import DataConfig, parse_kwargs


def evaluate(model_name: str, *, weights: str | None, dataset: str, data_dir: str | None = None,
             model_kwargs: dict[str, Any] | None = None, batch_size: int = 250, image_size: int = 0,
             crop_fraction: float = 0.0, interpolation: str = "", eval_examples: int = 0,
             strategy: tf.distribute.Strategy | None = None) -> dict[str, Any]:
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

    Returns:
        ``{"top1", "top5", "loss", "examples", "skipped", ...}``.
    """
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
        model = pf_keras.create_model(model_name, weights=weights or None, **kwargs)
    evaluator = loop_lib.Evaluator(strategy, model)
    result = evaluator.evaluate(data_lib.make_eval_dataset_fn(source, cfg, interpolation=interpolation),
                                data_lib.eval_steps(source, cfg))
    return {
        "model": model_name, "weights": weights, "dataset": dataset, "top1": result["val_top1"],
        "top5": result["val_top5"], "loss": result["val_loss"], "examples": result["val_examples"],
        "skipped": result["val_skipped"], "image_size": image_size, "crop_fraction": crop_fraction,
        "interpolation": interpolation, "model_kwargs": {k: v for k, v in (model_kwargs or {}).items()},
    }


def _from_model_dir(model_dir: str) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """(name, weights path, create_model kwargs, eval settings) of a finished train.py run."""
    with open(os.path.join(model_dir, "model.json")) as f:
        info = json.load(f)
    kwargs = dict(info["kwargs"])
    image_size = kwargs.pop("input_shape")[0]
    for key in ("classes", "classifier_activation", "include_preprocessing", "include_top"):
        kwargs.pop(key, None)
    extra = {"image_size": image_size, "crop_fraction": info.get("crop_fraction") or 0.0,
             "interpolation": info.get("interpolation") or ""}
    return info["name"], os.path.join(model_dir, "final.weights.h5"), kwargs, extra


def main(argv: list[str]) -> int:
    """Resolves the model (``--model``/``--weights`` or ``--model_dir``), evaluates, prints and writes JSON."""
    from absl import flags, logging

    del argv
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
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
                      batch_size=f.batch_size, eval_examples=f.eval_examples, strategy=strategy, **extra)
    print(f"{name}: top-1 {100 * result['top1']:.2f} %  top-5 {100 * result['top5']:.2f} %  "
          f"({result['examples']} images, {result['skipped']} skipped)")
    if f.output:
        with open(f.output, "w") as out:
            json.dump(result, out, indent=2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("model", None, "Registered model name.")
    flags.DEFINE_string("weights", None, ".pth (official) or .weights.h5.")
    flags.DEFINE_string("model_dir", None, "A finished train.py run (reads model.json and final.weights.h5).")
    flags.DEFINE_string("model_kwargs", "", "create_model overrides: JSON or k=v,k2=v2.")
    flags.DEFINE_string("dataset", "imagenet2012", "TFDS name, folder:PATH, builtin or synthetic.")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir.")
    flags.DEFINE_integer("batch_size", 250, "Global eval batch.")
    flags.DEFINE_integer("image_size", 0, "Crop size (0 = preset).")
    flags.DEFINE_float("crop_fraction", 0.0, "Crop fraction (0 = preset, 0.875).")
    flags.DEFINE_string("interpolation", "", "bilinear / bicubic ('' = preset).")
    flags.DEFINE_integer("eval_examples", 0, "Only the first N (0 = all).")
    flags.DEFINE_enum("strategy", "one_device", list(loop_lib.STRATEGIES), "Distribution strategy.")
    flags.DEFINE_integer("num_replicas", 0, "mirrored: logical CPU devices / GPUs.")
    flags.DEFINE_string("tpu", "", "TPU address.")
    flags.DEFINE_string("output", "", "Write the result as JSON here.")
    app.run(lambda argv: sys.exit(cli_main(main, argv)))
