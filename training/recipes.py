"""Training recipes: frozen dataclasses, registered recipe functions, typed overrides.

A ``Recipe`` holds four sections (``data``, ``model``, ``optim``, ``schedule``) plus a few
run settings. Recipes are registered functions returning a ``Recipe``; variants derive from
a base with ``dataclasses.replace``. Every field can be overridden from the command line as
``section.field=value`` (``--set optim.base_lr=0.1``); unknown keys and values of the wrong
type fail with a ValueError. The resolved recipe is written to ``model_dir/recipe.json``.

Recipes, written field by field from the sources (the README's "Recipes" table gives the
file and line of every value):

- ``resnet90``: the official README's command for R50-hybrid (77.1 %): timm's ``train.py
  --opt sgd --lr 0.2 --weight-decay 1e-4 --batch-size 256 (x4 GPUs) --sched step --epochs 90
  --decay-epochs 30 --warmup-epochs 3 --smoothing 0 --amp`` with timm 0.5.4's defaults for
  everything else: Nesterov SGD 0.9, warm-up from 1e-4, lr stepped per epoch, random
  bilinear/bicubic train resize, colour jitter 0.4, no RandAugment/Mixup/erasing/EMA.
- ``deit300``: DeiT's ``main.py`` defaults (``--model vit_s_max --batch-size 256`` x4 GPUs,
  DeiT pins timm 0.3.2): AdamW 5e-4 x batch/512, wd 0.05, eps 1e-8, cosine to 1e-5 over 300
  epochs from a 5-epoch warm-up at 1e-6, stepped per epoch one epoch late (DeiT calls
  ``lr_scheduler.step(epoch)`` after epoch ``epoch``), bicubic train resize, RandAugment
  rand-m9-mstd0.5-inc1 (no colour jitter: timm drops it when auto-augment is on), Mixup 0.8
  / CutMix 1.0 / switch 0.5 / batch mode, label smoothing 0.1 inside the mixed targets,
  random erasing 0.25 (pixel mode), drop-path 0.1, EMA 0.99996, repeated augmentation x3.
- ``demo``: the builtin dataset, a tiny R50-hybrid at 32x32 and AdamW, 20 epochs: about 99 %
  val top-1 (chance 10 %) in 1-3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pf_keras.values import is_int

DATASET_DEFAULT = "imagenet2012"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Input pipeline settings.

    ``dataset``: a TFDS name (``imagenet2012``), ``folder:PATH``, ``synthetic`` or ``builtin``.
    ``global_batch_size`` is the batch over all replicas and hosts.
    """

    dataset: str = DATASET_DEFAULT
    data_dir: str | None = None
    global_batch_size: int = 1024
    image_size: int = 224
    crop_fraction: float = 0.875  # eval: resize to image_size / crop_fraction, centre crop
    interpolation: str = ""  # eval resize; "" = the model's preset (bilinear / bicubic)
    train_interpolation: str = ""  # train resize: "" = as eval, "random" = bilinear or bicubic per image (timm)
    crop_scale_min: float = 0.08  # RandomResizedCrop area range [crop_scale_min, 1]
    crop_ratio_min: float = 3 / 4
    crop_ratio_max: float = 4 / 3
    hflip: bool = True
    color_jitter: float = 0.0  # brightness/contrast/saturation strength; 0 = off
    randaugment_magnitude: float = 0.0  # 0 = off; deit300 uses 9 (of 10)
    randaugment_magnitude_std: float = 0.0
    randaugment_num_ops: int = 2
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0  # probability that a batch is mixed at all
    mix_switch_prob: float = 0.5  # with both on: probability of CutMix instead of Mixup
    random_erasing: float = 0.0  # per-image probability (timm's "pixel" mode: N(0, 1) noise, one box)
    repeated_augment: int = 1  # DeiT's RASampler: each sampled image this many times per epoch (deit300: 3)
    train_examples: int = 0  # 0 = the dataset's size; > 0 = first N files (folder/builtin)
    eval_examples: int = 0  # 0 = the whole validation split
    shuffle_buffer: int = 16384  # TFDS only (folder datasets shuffle the file list)
    parallel_calls: int = -1  # -1 = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model: a registry name, keyword overrides passed to ``create_model``, EMA."""

    name: str = "resnet50_hybrid"
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    drop_path_rate: float = -1.0  # >= 0 passes drop_path_rate to create_model; -1 = builder default
    sync_bn: bool = False  # rebuild every BatchNormalization with synchronized=True
    init_weights: str = ""  # .pth or .weights.h5 to start from ("" = random init)
    ema_decay: float = 0.0  # 0 = no EMA


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer and loss. ``base_lr`` applies to ``base_batch_size`` images (linear scaling)."""

    name: str = "sgd"  # "sgd" | "adamw"
    base_lr: float = 0.2
    base_batch_size: int = 1024
    momentum: float = 0.9
    nesterov: bool = True  # timm's "sgd" is Nesterov SGD ("momentum" is the plain one)
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8
    weight_decay: float = 1e-4  # SGD: coupled (torch L2), AdamW: decoupled; never on norms, biases, pos_embed
    label_smoothing: float = 0.0
    clip_norm: float = 0.0  # 0 = no clipping


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule and run length."""

    epochs: int = 90
    warmup_epochs: float = 3.0
    warmup_init_lr: float = 0.0  # absolute lr at step 0 of the warm-up (timm's --warmup-lr)
    decay: str = "step"  # "step" | "cosine" | "constant"
    step_epochs: int = 30  # "step": multiply by step_factor every step_epochs
    step_factor: float = 0.1
    min_lr: float = 0.0  # "cosine": lr at t = epochs (cos(pi t / epochs), t counted from 0, warm-up included)
    per_step: bool = False  # False: the lr changes once per epoch (timm's default); True: every step
    lag_epochs: int = 0  # epoch e uses the schedule's value at e - lag (DeiT: 1)
    steps_per_epoch: int = 0  # 0 = train_examples // global_batch_size


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A full training configuration; see the module docstring for the registered ones."""

    name: str
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    seed: int = 0
    steps_per_loop: int = 50  # steps inside one tf.function call (host work happens between)
    checkpoint_every_steps: int = 1000  # plus at every epoch end and on SIGTERM
    eval_every_epochs: int = 1
    keep_checkpoints: int = 3


SECTIONS = ("data", "model", "optim", "schedule")

_RECIPES: dict[str, Callable[[], Recipe]] = {}


def register_recipe(fn: Callable[[], Recipe]) -> Callable[[], Recipe]:
    """Registers ``fn`` under its function name."""
    _RECIPES[fn.__name__] = fn
    return fn


def list_recipes() -> list[str]:
    """Sorted names accepted by :func:`get_recipe`."""
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    """The registered recipe ``name``; ValueError listing the valid names otherwise."""
    if name not in _RECIPES:
        raise ValueError(f"Unknown recipe. Valid names: {list_recipes()}. Received: recipe={name!r}")
    return _RECIPES[name]()


@register_recipe
def resnet90() -> Recipe:
    """timm 0.5.4 train.py with the official R50-hybrid command (see the module docstring)."""
    return Recipe(
        name="resnet90",
        data=DataConfig(global_batch_size=1024, train_interpolation="random", color_jitter=0.4),
        model=ModelConfig(name="resnet50_hybrid"),
        optim=OptimConfig(name="sgd", base_lr=0.2, base_batch_size=1024, momentum=0.9, nesterov=True,
                          weight_decay=1e-4, label_smoothing=0.0),
        schedule=ScheduleConfig(epochs=90, warmup_epochs=3, warmup_init_lr=1e-4, decay="step", step_epochs=30,
                                step_factor=0.1, per_step=False),
    )


@register_recipe
def deit300() -> Recipe:
    """DeiT's main.py defaults with the official ViT/PiT command (see the module docstring)."""
    return Recipe(
        name="deit300",
        data=DataConfig(
            global_batch_size=1024, train_interpolation="bicubic", color_jitter=0.0, randaugment_magnitude=9,
            randaugment_magnitude_std=0.5, randaugment_num_ops=2, mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=1.0,
            mix_switch_prob=0.5, random_erasing=0.25, repeated_augment=3,
        ),
        model=ModelConfig(name="vit_s_max", drop_path_rate=0.1, ema_decay=0.99996),
        optim=OptimConfig(name="adamw", base_lr=5e-4, base_batch_size=512, weight_decay=0.05, beta_1=0.9,
                          beta_2=0.999, epsilon=1e-8, label_smoothing=0.1),
        schedule=ScheduleConfig(epochs=300, warmup_epochs=5, warmup_init_lr=1e-6, decay="cosine", min_lr=1e-5,
                                per_step=False, lag_epochs=1),
    )


@register_recipe
def demo() -> Recipe:
    """The builtin dataset on a tiny R50-hybrid (32x32): ~99 % val top-1 in a few CPU minutes."""
    base = resnet90()
    return dataclasses.replace(
        base,
        name="demo",
        data=dataclasses.replace(
            base.data, dataset="builtin", global_batch_size=64, image_size=32, crop_scale_min=0.35, color_jitter=0.0,
            train_interpolation="",
        ),
        model=dataclasses.replace(base.model, kwargs={"depths": (1, 1, 1, 1), "width_mult": 0.25}),
        optim=dataclasses.replace(base.optim, name="adamw", base_lr=2e-3, base_batch_size=64, weight_decay=0.05),
        schedule=dataclasses.replace(base.schedule, epochs=20, warmup_epochs=1, warmup_init_lr=0.0, decay="cosine",
                                     min_lr=1e-5, per_step=True),
        steps_per_loop=10,
        checkpoint_every_steps=200,
    )


# ---------------------------------------------------------------- overrides


def _parse_value(text: str, annotation: Any, key: str) -> Any:
    """Parses ``text`` as the field type ``annotation``; ValueError naming ``key`` otherwise."""
    if isinstance(annotation, str):  # postponed annotations
        annotation = eval(annotation, {"Mapping": Mapping, "Any": Any})  # noqa: S307 - our own literals
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", "") and type(None) in args:
            return None
        (annotation,) = [a for a in args if a is not type(None)]
        return _parse_value(text, annotation, key)
    if annotation is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"`{key}` must be a boolean (true/false/1/0). Received: {key}={text!r}")
    if annotation in (int, float):
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"`{key}` must be a number of type {annotation.__name__}. Received: {key}={text!r}"
            ) from None
        if annotation is int:
            if not value.is_integer():
                raise ValueError(f"`{key}` must be an integer. Received: {key}={text!r}")
            return int(value)
        return value
    if annotation is str:
        return text
    if origin is not None and issubclass(origin, Mapping) or annotation is Mapping:
        return parse_kwargs(text, key=key)
    raise TypeError(f"Field `{key}` has an unsupported type {annotation!r}")


def parse_kwargs(text: str, *, key: str = "model_kwargs") -> dict[str, Any]:
    """Builder overrides in the one ``--model_kwargs`` grammar (:func:`pf_keras.cli.parse_model_kwargs`).

    A JSON object, ``k=v`` pairs (values read as JSON when they parse) or the path of a JSON file.

    Example:
        >>> parse_kwargs('depths=[1,1,1,1],width_mult=0.125')
        {'depths': [1, 1, 1, 1], 'width_mult': 0.125}
    """
    from pf_keras.cli import parse_model_kwargs  # imports Keras: only when a recipe has kwargs to parse

    return parse_model_kwargs(text, key=key)


def apply_overrides(recipe: Recipe, overrides: Mapping[str, Any]) -> Recipe:
    """Returns ``recipe`` with ``overrides`` applied.

    Keys are ``section.field`` (``optim.base_lr``) or a top-level field (``seed``); values are
    strings (parsed to the field's type) or already-typed values.

    Raises:
        ValueError: for an unknown key or a value that does not parse as the field's type.

    Example:
        >>> apply_overrides(get_recipe("resnet90"), {"schedule.epochs": "5"}).schedule.epochs
        5
    """
    top = {f.name: f for f in dataclasses.fields(Recipe)}
    section_updates: dict[str, dict[str, Any]] = {}
    top_updates: dict[str, Any] = {}
    for key, value in overrides.items():
        section, _, field_name = key.rpartition(".")
        if section:
            if section not in SECTIONS:
                raise ValueError(f"Unknown recipe section. Valid sections: {list(SECTIONS)}. Received: key={key!r}")
            fields = {f.name: f for f in dataclasses.fields(getattr(recipe, section))}
            if field_name not in fields:
                raise ValueError(
                    f"Unknown field in recipe section {section!r}. Valid fields: {sorted(fields)}. "
                    f"Received: key={key!r}"
                )
            section_updates.setdefault(section, {})[field_name] = _coerce(value, fields[field_name].type, key)
        else:
            valid = sorted(set(top) - set(SECTIONS) - {"name"})
            if field_name not in valid:
                raise ValueError(
                    f"Unknown recipe key. Use section.field (sections {list(SECTIONS)}) or one of {valid}. "
                    f"Received: key={key!r}"
                )
            top_updates[field_name] = _coerce(value, top[field_name].type, key)
    for section, updates in section_updates.items():
        top_updates[section] = dataclasses.replace(getattr(recipe, section), **updates)
    result = dataclasses.replace(recipe, **top_updates)
    validate(result)
    return result


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    if isinstance(value, str):
        return _parse_value(value, annotation, key)
    if isinstance(annotation, str) and annotation == "float" and is_int(value):
        return float(value)
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    expected = _SCALARS.get(name)
    if expected is not None and (not isinstance(value, expected) or (expected is not bool and isinstance(value, bool))):
        raise ValueError(f"`{key}` must be of type {name}. Received: {key}={value!r}")
    return value


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}  # field annotations checked for non-text values


def validate(recipe: Recipe) -> None:
    """Checks value ranges; raises ValueError with the rule and the value received."""
    for section in [recipe, *(getattr(recipe, f.name) for f in dataclasses.fields(recipe))]:
        if not dataclasses.is_dataclass(section):
            continue
        prefix = "" if section is recipe else next(f.name for f in dataclasses.fields(recipe)
                                                   if getattr(recipe, f.name) is section) + "."
        for f in dataclasses.fields(section):  # NaN passes every range check below: refuse it first
            value = getattr(section, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"`{prefix}{f.name}` must be a finite number. Received: {prefix}{f.name}={value}")
    d, o, s = recipe.data, recipe.optim, recipe.schedule
    if d.global_batch_size < 1:
        raise ValueError(
            f"`data.global_batch_size` must be >= 1. Received: data.global_batch_size={d.global_batch_size}"
        )
    if d.image_size < 8:
        raise ValueError(f"`data.image_size` must be >= 8. Received: data.image_size={d.image_size}")
    if not 0 < d.crop_fraction <= 1:
        raise ValueError(f"`data.crop_fraction` must be in (0, 1]. Received: data.crop_fraction={d.crop_fraction}")
    if d.interpolation not in ("", "bilinear", "bicubic", "nearest", "area"):
        raise ValueError(
            f"`data.interpolation` must be one of '', 'bilinear', 'bicubic', 'nearest', 'area'. "
            f"Received: data.interpolation={d.interpolation!r}"
        )
    if d.train_interpolation not in ("", "random", "bilinear", "bicubic", "nearest", "area"):
        raise ValueError(
            f"`data.train_interpolation` must be one of '', 'random', 'bilinear', 'bicubic', 'nearest', 'area'. "
            f"Received: data.train_interpolation={d.train_interpolation!r}"
        )
    if not 1 <= d.repeated_augment <= 16:
        raise ValueError(
            f"`data.repeated_augment` must be in [1, 16]. Received: data.repeated_augment={d.repeated_augment}"
        )
    if not 0 < d.crop_scale_min <= 1:
        raise ValueError(f"`data.crop_scale_min` must be in (0, 1]. Received: data.crop_scale_min={d.crop_scale_min}")
    if not 0.01 <= d.crop_ratio_min <= d.crop_ratio_max <= 100:  # aspect ratios of the random crop (timm: 3/4, 4/3)
        raise ValueError(f"`data.crop_ratio_min` <= `data.crop_ratio_max` must lie in [0.01, 100]. Received: "
                         f"data.crop_ratio_min={d.crop_ratio_min}, data.crop_ratio_max={d.crop_ratio_max}")
    if not 0 <= d.randaugment_magnitude <= 10:
        raise ValueError(
            f"`data.randaugment_magnitude` must be in [0, 10]. "
            f"Received: data.randaugment_magnitude={d.randaugment_magnitude}"
        )
    for name in ("mix_prob", "mix_switch_prob", "random_erasing"):
        if not 0 <= getattr(d, name) <= 1:
            raise ValueError(f"`data.{name}` must be in [0, 1]. Received: data.{name}={getattr(d, name)}")
    if o.name not in ("sgd", "adamw"):
        raise ValueError(f"`optim.name` must be 'sgd' or 'adamw'. Received: optim.name={o.name!r}")
    if o.base_lr <= 0 or o.base_batch_size < 1:
        raise ValueError(
            f"`optim.base_lr` must be > 0 and `optim.base_batch_size` >= 1. "
            f"Received: optim.base_lr={o.base_lr}, optim.base_batch_size={o.base_batch_size}"
        )
    if not 0 <= o.label_smoothing < 1:
        raise ValueError(
            f"`optim.label_smoothing` must be in [0, 1). Received: optim.label_smoothing={o.label_smoothing}"
        )
    if s.decay not in ("step", "cosine", "constant"):
        raise ValueError(
            f"`schedule.decay` must be 'step', 'cosine' or 'constant'. Received: schedule.decay={s.decay!r}"
        )
    if s.lag_epochs < 0:
        raise ValueError(f"`schedule.lag_epochs` must be >= 0. Received: schedule.lag_epochs={s.lag_epochs}")
    if s.epochs < 1 or s.warmup_epochs < 0 or s.warmup_epochs > s.epochs:
        raise ValueError(
            f"`schedule.epochs` must be >= 1 and 0 <= `schedule.warmup_epochs` <= epochs. "
            f"Received: schedule.epochs={s.epochs}, schedule.warmup_epochs={s.warmup_epochs}"
        )
    if not 0 <= recipe.model.ema_decay < 1:
        raise ValueError(f"`model.ema_decay` must be in [0, 1). Received: model.ema_decay={recipe.model.ema_decay}")
    if recipe.steps_per_loop < 1 or recipe.checkpoint_every_steps < 1:
        raise ValueError(
            f"`steps_per_loop` and `checkpoint_every_steps` must be >= 1. "
            f"Received: steps_per_loop={recipe.steps_per_loop}, checkpoint_every_steps={recipe.checkpoint_every_steps}"
        )


# ---------------------------------------------------------------- derived values


def scaled_lr(recipe: Recipe) -> float:
    """Peak learning rate by the linear scaling rule: base_lr * global_batch / base_batch."""
    return recipe.optim.base_lr * recipe.data.global_batch_size / recipe.optim.base_batch_size


def steps_per_epoch(recipe: Recipe, train_examples: int) -> int:
    """``schedule.steps_per_epoch`` if set, else ``train_examples // global_batch_size`` (at least 1)."""
    if recipe.schedule.steps_per_epoch > 0:
        return recipe.schedule.steps_per_epoch
    return max(1, train_examples // recipe.data.global_batch_size)


def learning_rate(recipe: Recipe, step: float, steps_per_epoch_: int) -> float:
    """The learning rate of global ``step``; plain Python for tests and logs.

    timm's schedulers (``StepLRScheduler``/``CosineLRScheduler._get_lr``) at ``t``: the epoch
    (an integer unless ``per_step``) minus ``lag_epochs``: warm-up ``init + t (peak - init) /
    warmup`` for ``t < warmup``, then ``peak * factor ** (t // step_epochs)`` or ``min + (peak
    - min) (1 + cos(pi t / epochs)) / 2`` (``min`` from ``t = epochs`` on).
    """
    peak = scaled_lr(recipe)
    s = recipe.schedule
    epoch = step / steps_per_epoch_
    if not s.per_step:
        epoch = math.floor(epoch)
    t = max(epoch - s.lag_epochs, 0)
    if t < s.warmup_epochs:
        return s.warmup_init_lr + (peak - s.warmup_init_lr) * t / s.warmup_epochs
    if s.decay == "step":
        return peak * s.step_factor ** math.floor(t / s.step_epochs)
    if s.decay == "cosine":
        if t >= s.epochs:
            return s.min_lr
        return s.min_lr + 0.5 * (peak - s.min_lr) * (1 + math.cos(math.pi * t / s.epochs))
    return peak


# ---------------------------------------------------------------- JSON


def to_dict(recipe: Recipe) -> dict[str, Any]:
    """A JSON-ready dict of ``recipe`` (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(recipe)))


def from_dict(data: Mapping[str, Any]) -> Recipe:
    """Inverse of :func:`to_dict`; unknown keys, missing keys and sections that are not objects raise ValueError."""
    sections = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "schedule": ScheduleConfig}
    if not isinstance(data, Mapping):
        raise ValueError(f"A recipe must be a JSON object. Received: {type(data).__name__}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in sections:
            cls = sections[key]
            if not isinstance(value, Mapping):
                raise ValueError(f"Recipe section {key!r} must be a JSON object. Received: {type(value).__name__}")
            valid = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - valid)
            if unknown:
                raise ValueError(
                    f"Unknown fields in recipe section {key!r}. Valid fields: {sorted(valid)}. Received: {unknown}"
                )
            kwargs[key] = cls(**value)
        elif key in {f.name for f in dataclasses.fields(Recipe)}:
            kwargs[key] = value
        else:
            raise ValueError(f"Unknown recipe key in JSON. Received: key={key!r}")
    try:
        return Recipe(**kwargs)
    except TypeError as error:  # a required key is missing
        raise ValueError(f"A recipe needs every top-level key ({error}). Received: keys={sorted(data)}") from None


def dumps(recipe: Recipe) -> str:
    """The recipe as indented JSON (what ``model_dir/recipe.json`` holds)."""
    return json.dumps(to_dict(recipe), indent=2, sort_keys=True)
