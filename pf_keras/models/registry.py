"""Model registry: every spec of :mod:`pf_keras.models.specs`, plus builders registered by name.

``create_model(name)`` builds a published model from its spec: the family builder gets the
spec's ``builder_args`` (the full architecture), which keyword arguments may override for
small experiments, plus the keras.applications-style keywords (``include_top``,
``weights``, ``input_tensor``, ``input_shape``, ``pooling``, ``classes``,
``classifier_activation``, ``include_preprocessing``, ``name``) and the family's training
options (``drop_path_rate``). ``weights`` may be:

- None;
- ``"imagenet"`` (or another checkpoint tag of the spec, e.g. ``"imagenet_longer"``): the
  official checkpoint, downloaded and verified on first use (:mod:`pf_keras.weights.download`),
  converted, and cached as a preset folder next to it so the next load reads Keras weights
  directly. Only the published architecture qualifies;
- a preset folder (:mod:`pf_keras.weights.preset`), or a PyTorch / Keras weights file.

``create_model(folder)`` builds the model a preset folder describes.

Every model ``create_model`` returns remembers how it was built: :func:`build_record` gives
its :class:`BuildRecord` (the spec or registered name, the family builder, and the builder's
arguments: the spec's architecture updated by the overrides), so a weights file plus that
record rebuilds it (``record.build(weights=path)``). A preset folder's ``config.json`` is that
record on disk: :func:`pf_keras.weights.preset.write_preset` writes it, ``create_model(folder)``
reads it. The record lives on the Python object, not in ``get_config()``: the models are plain
``keras.Model`` graphs of core layers (they load without pf_keras), and a ``.keras`` file
already holds the whole graph, so it needs no record to rebuild; the weights-file route's
record is the preset folder.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import warnings
from collections.abc import Callable
from typing import Any

import keras

from pf_keras import fileio
from pf_keras.imagenet import NUM_CLASSES
from pf_keras.models.specs import SIZE_DEPENDENT_FAMILIES, SPECS, ModelSpec, family_builder, list_specs

_REGISTRY: dict[str, Callable[..., keras.Model]] = {}
_RECORD_ATTRIBUTE = "_pf_keras_build_record"
# Builder arguments that are not part of the record: the weights come from the file that goes with
# it, the name is the record's ``model``, and an input tensor cannot be stored.
_NOT_RECORDED = ("weights", "name", "input_tensor")


def _canonical(value):
    return tuple(_canonical(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclasses.dataclass(frozen=True)
class BuildRecord:
    """How a model was built: with a weights file, enough to rebuild it.

    Attributes:
        model: str. The spec or registered name (``pf_keras.list_models()``).
        family: str or None. The family builder of a spec ("resnet", "vit", "pit"); None for a
            builder registered with :func:`register_model` (rebuilt through ``create_model``,
            so its registration must be imported first).
        config: dict. The builder's arguments (for a spec: its full architecture updated by the
            overrides), without ``weights``, ``name`` and ``input_tensor``; lists are stored as tuples.
    """

    model: str
    family: str | None
    config: dict[str, Any]

    def __post_init__(self) -> None:  # lists as tuples: a record read from JSON equals the one built
        object.__setattr__(self, "config", {str(k): _canonical(v) for k, v in self.config.items()})

    def to_json(self) -> dict[str, Any]:
        """``{"model", "family", "config"}`` with tuples as lists: a preset's ``config.json``."""
        return {"model": self.model, "family": self.family, "config": fileio.jsonable(self.config)}

    def build(self, **overrides) -> keras.Model:
        """The model again (it carries this record, updated by ``overrides``).

        ``weights`` may be a Keras ``.weights.h5`` (or, for a spec family, a PyTorch checkpoint);
        it must set every weight of the model.
        """
        weights = overrides.pop("weights", None)
        config = {**self.config, **overrides}
        if self.family is None:
            model = create_model(self.model, **config)
            if weights is not None:
                from pf_keras.weights.loading import check_weights_arg, load_keras_weights  # noqa: PLC0415

                check_weights_arg(weights)
                load_keras_weights(model, os.fspath(weights))
            return model
        model = family_builder(self.family)(**{**config, "name": self.model, "weights": weights})
        return BuildRecord(self.model, self.family, _recorded(config)).attach(model)

    def attach(self, model: keras.Model) -> keras.Model:
        """Marks ``model`` as built by this record (e.g. a copy of a recorded model's graph); returns it."""
        setattr(model, _RECORD_ATTRIBUTE, self)
        return model


def _recorded(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in _NOT_RECORDED}


def build_record(model: keras.Model) -> BuildRecord | None:
    """The :class:`BuildRecord` of a model built by :func:`create_model` (or a preset folder); else None.

    None for models built otherwise (the family classes ``ResNet``/``ViT``/``PiT`` called
    directly, ``keras.models.load_model``, ``clone_model``) and for models built on an
    ``input_tensor`` (which no record can hold).

    Example:
        >>> model = create_model("resnet50_max", depths=(1, 1, 1, 1), width_mult=0.125,
        ...                      input_shape=(32, 32, 3), classes=10)
        >>> record = build_record(model)
        >>> record.model, record.family, record.config["depths"], record.config["classes"]
        ('resnet50_max', 'resnet', (1, 1, 1, 1), 10)
        >>> build_record(record.build()) == record
        True
    """
    record = getattr(model, _RECORD_ATTRIBUTE, None)
    return record if isinstance(record, BuildRecord) else None


def register_model(name: str) -> Callable:
    """Decorator registering a builder under ``name`` (raises on a duplicate or a spec name)."""

    def decorate(builder: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        if name in _REGISTRY or name in SPECS:
            raise ValueError(f"Model name {name!r} is already registered.")
        _REGISTRY[name] = builder
        return builder

    return decorate


def list_models(pattern: str | None = None, *, pretrained: bool | None = None) -> list[str]:
    """Sorted names accepted by :func:`create_model`.

    Args:
        pattern: str or None. Shell-style pattern (``fnmatch``: ``*``, ``?``, ``[seq]``),
            e.g. ``"*max*"``. Defaults to None (all names).
        pretrained: bool or None. True: only models with an official checkpoint; False:
            only those without; None: all. Defaults to None.

    Example:
        >>> list_models("resnet*", pretrained=True)
        ['resnet50_hybrid', 'resnet50_max']
    """
    if pattern is not None and not isinstance(pattern, str):
        raise ValueError(f"`pattern` must be a shell-style pattern string such as '*max*'. Received: {pattern=}")
    if pretrained not in (None, True, False):
        raise ValueError(f"`pretrained` must be None, True or False. Received: {pretrained=}")
    names = list_specs(pretrained=pretrained)
    if pretrained is not True:
        names += list(_REGISTRY)
    names = sorted(set(names))
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def resolve_variant(variants: dict[str, str], variant: str) -> str:
    """Registry name of an applications-style ``variant``; ValueError listing the valid ones."""
    if variant not in variants:
        raise ValueError(f"`variant` must be one of {sorted(variants)}. Received: variant={variant!r}")
    return variants[variant]


def changed_architecture(spec: ModelSpec, kwargs: dict) -> dict:
    """The entries of ``kwargs`` that change ``spec``'s architecture (lists and tuples compare equal)."""
    args = spec.builder_args
    return {k: v for k, v in kwargs.items() if k in args and _canonical(v) != _canonical(args[k])}


def _is_checkpoint_tag(spec: ModelSpec, weights) -> bool:
    return isinstance(weights, str) and (weights == "imagenet" or any(c.tag == weights for c in spec.checkpoints))


def _cache_damage(folder: str) -> str | None:
    """Why the cached preset ``folder`` cannot be read (its JSON files), or None."""
    from pf_keras.weights.preset import read_preset  # noqa: PLC0415

    try:
        read_preset(folder)
    except ValueError as error:
        return str(error)
    return None


def _build_pretrained(spec: ModelSpec, tag: str, kwargs: dict) -> keras.Model:
    """The published model with its official weights: from the cached preset, else converted and cached."""
    from pf_keras.weights import download  # noqa: PLC0415 (keeps the registry light to import)
    from pf_keras.weights.errors import CheckpointError  # noqa: PLC0415
    from pf_keras.weights.preset import is_preset, source_metadata, write_preset  # noqa: PLC0415

    changed = changed_architecture(spec, kwargs)
    if changed:
        raise ValueError(
            f"weights={tag!r} exists only for the published configurations: drop the architecture overrides, "
            f"or load your own weights file. Received: {', '.join(f'{k}={v!r}' for k, v in changed.items())}, "
            f"weights={tag!r}"
        )
    include_top = kwargs.get("include_top", True)
    if include_top and kwargs.get("classes", NUM_CLASSES) != NUM_CLASSES:
        raise ValueError(
            f"ImageNet weights have a {NUM_CLASSES}-class head: use classes={NUM_CLASSES}, or include_top=False "
            f"to attach your own head. Received: classes={kwargs['classes']}"
        )
    checkpoint = spec.checkpoint(tag)
    # The converted weights depend on the input size only through ViT's position embedding (one entry per patch).
    shape = kwargs.get("input_shape")
    cacheable = kwargs.get("input_tensor") is None and (
        spec.family not in SIZE_DEPENDENT_FAMILIES
        or shape is None
        or all(side in (None, spec.eval.size) for side in tuple(shape)[:2])
    )
    cache = download.keras_weights_path(spec, checkpoint, include_top=include_top)[: -len(".weights.h5")]
    if cacheable and is_preset(cache):
        damage = _cache_damage(cache)  # the cache is ours: anything unreadable in it is damage, not a user error
        if damage is None:
            try:
                return _build_from_preset(cache, expected=spec.name, kwargs=kwargs)
            except CheckpointError as error:  # its weights file (truncated, not HDF5, wrong tensors)
                damage = str(error)
        warnings.warn(f"The cached converted weights at {cache} are damaged ({' '.join(damage.split())[:300]}); "
                      f"converting the checkpoint again.", stacklevel=3)
    path = download.fetch_checkpoint(spec, tag)
    model = spec.builder()(**{**spec.builder_args, "name": spec.name, **kwargs, "weights": path})
    if cacheable:
        metadata = source_metadata(spec, path, source_url=checkpoint.url, checkpoint=checkpoint.tag)
        config = {**spec.builder_args, "include_top": include_top}
        try:
            write_preset(model, cache, name=spec.name, family=spec.family, config=config, metadata=metadata)
        except ValueError as error:  # a full disk must not cost the user the model
            warnings.warn(f"Could not cache the converted weights: {error}", stacklevel=3)
    return model


def _build_from_preset(folder, *, expected: str | None, kwargs: dict) -> keras.Model:
    from pf_keras.weights.preset import read_preset  # noqa: PLC0415

    preset = read_preset(folder)
    if expected is not None and preset.model != expected:
        raise ValueError(
            f"The preset folder holds {preset.model!r}, not {expected!r}: build it with "
            f"create_model({os.fspath(folder)!r}). Received: weights={os.fspath(folder)!r}"
        )
    kwargs = {k: v for k, v in kwargs.items() if k != "weights"}
    return preset.record.build(**kwargs, weights=preset.weights_path)


def build_from_spec(spec: ModelSpec, **kwargs) -> keras.Model:
    """Builds ``spec``'s model: its builder arguments updated by ``kwargs``; resolves ``weights``."""
    weights = kwargs.get("weights")
    if _is_checkpoint_tag(spec, weights):
        model = _build_pretrained(spec, weights, {k: v for k, v in kwargs.items() if k != "weights"})
    else:
        from pf_keras.weights.preset import is_preset  # noqa: PLC0415

        if weights is not None and is_preset(weights):
            return _build_from_preset(weights, expected=spec.name, kwargs=kwargs)
        model = spec.builder()(**{**spec.builder_args, "name": spec.name, **kwargs})
    return BuildRecord(spec.name, spec.family, _recorded({**spec.builder_args, **kwargs})).attach(model)


def create_model(name: str, **kwargs) -> keras.Model:
    """Builds the model ``name`` (a spec or registered name, or a preset folder) with keyword overrides.

    The model carries its build record (:func:`build_record`): name, family and builder arguments.

    Raises:
        ValueError: for an unknown name (listing the valid ones), or any builder error.

    Example:
        >>> model = create_model("resnet50_hybrid", depths=(1, 1, 1, 1), width_mult=0.125,
        ...                      input_shape=(64, 64, 3), classes=10)
        >>> model.name
        'resnet50_hybrid'
    """
    from pf_keras.weights.preset import is_preset  # noqa: PLC0415

    if name in SPECS:
        model = build_from_spec(SPECS[name], **kwargs)
    elif name in _REGISTRY:
        model = BuildRecord(name, None, _recorded(kwargs)).attach(_REGISTRY[name](**kwargs))
    elif is_preset(name):
        if kwargs.get("weights") is not None:
            raise ValueError(
                f"A preset folder brings its own weights; drop `weights`. Received: name={os.fspath(name)!r}, "
                f"weights={kwargs['weights']!r}"
            )
        model = _build_from_preset(name, expected=None, kwargs=kwargs)
    else:
        raise ValueError(f"Unknown model name. Valid names: {list_models()}. Received: name={name!r}")
    if kwargs.get("input_tensor") is not None:  # no record can hold the tensor the graph starts from
        setattr(model, _RECORD_ATTRIBUTE, None)
    return model


def get_builder(name: str) -> Callable[..., keras.Model]:
    """A callable building ``name`` (``create_model`` with the name bound); ValueError listing the valid names."""
    if name not in SPECS and name not in _REGISTRY:
        raise ValueError(f"Unknown model name. Valid names: {list_models()}. Received: name={name!r}")
    return lambda **kwargs: create_model(name, **kwargs)
