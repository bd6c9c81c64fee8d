"""Preset folders: a converted model that loads on its own, in KerasHub's layout.

A preset folder holds

- ``config.json``: ``{"model": name, "family": family, "config": {builder arguments}}``, the
  family builder's arguments (architecture, head) without ``weights`` and ``name``: the model's
  :class:`pf_keras.models.registry.BuildRecord` (``family`` is null for a builder registered
  with ``register_model``, rebuilt through ``create_model(name, **config)``);
- ``model.weights.h5``: the Keras weights;
- ``metadata.json``: where the weights come from (``source_url``, ``source_sha256`` of the
  converted file, ``spec``), the ``eval_transform`` and the versions, parameter count and
  date (KerasHub's ``metadata.json`` fields plus ours).

:func:`write_preset` writes the folder atomically (a temporary folder renamed into place),
so a crash never leaves half a preset under the final name. Load one with
``pf_keras.create_model(folder)`` or ``create_model(name, weights=folder)``.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

from pf_keras import fileio, safe_open
from pf_keras.models.specs import FAMILY_BUILDERS

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
RUN_PRESET = "final"  # a pf-keras-train run folder's model: RUN/final/ (a preset folder)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A preset folder as read by :func:`read_preset`."""

    folder: str
    model: str  # registry / spec name
    family: str | None  # None: a builder registered with register_model
    config: dict[str, Any]  # builder arguments
    metadata: dict[str, Any]

    @property
    def weights_path(self) -> str:
        return os.path.join(self.folder, WEIGHTS_FILE)

    @property
    def record(self):
        """The :class:`~pf_keras.models.registry.BuildRecord` in ``config.json``."""
        from pf_keras.models.registry import BuildRecord  # noqa: PLC0415

        return BuildRecord(self.model, self.family, dict(self.config))


def is_preset(path) -> bool:
    """True when ``path`` is a folder holding a ``config.json``."""
    return isinstance(path, (str, os.PathLike)) and os.path.isfile(os.path.join(os.fspath(path), CONFIG_FILE))


def model_folder(path: str | os.PathLike) -> str:
    """The preset folder ``path`` names: a preset folder itself, or a training run folder's ``final/``.

    Raises:
        ValueError: one line for a folder that is neither: a missing folder, an unfinished run, or
            a run written before runs kept their model in ``final/`` (saying how to upgrade it).
    """
    path = os.fspath(path)
    if is_preset(path):
        return path
    if not os.path.isdir(path):
        raise ValueError(f"The model folder does not exist. Received: {path!r}")
    folder = os.path.join(path, RUN_PRESET)
    if is_preset(folder):
        return folder
    if os.path.isfile(os.path.join(path, "model.json")):
        raise ValueError(
            f"{path} is a training run of an older pf-keras (model.json, no {RUN_PRESET}/): rerun its "
            f"pf-keras-train command with --model_dir {path}; it resumes at the last checkpoint and writes the "
            f"model folder {RUN_PRESET}/ without training again. Received: {path!r}"
        )
    raise ValueError(
        f"{path} is neither a preset folder nor a finished training run: pf-keras-train writes the model folder "
        f"{RUN_PRESET}/ when it ends (finish or resume the run first). Received: {path!r}"
    )


def write_preset(
    model,
    folder: str | os.PathLike,
    *,
    name: str | None = None,
    family: str | None = None,
    config: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Writes ``model``'s weights, its build record and ``metadata`` as a preset folder, atomically.

    Args:
        model: keras.Model. Built by ``pf_keras.create_model`` (it carries its build record), or
            by the ``family`` builder with ``config``.
        folder: str. The preset folder; an existing one is replaced only once the new one is complete.
        name: str or None. Registry name the preset belongs to. Defaults to the model's build record.
        family: str or None. "resnet", "vit" or "pit" (None: a ``register_model`` builder). Defaults
            to the model's build record.
        config: dict or None. Builder arguments that rebuild ``model`` (JSON-serialisable; tuples
            become lists). Defaults to the model's build record.
        metadata: dict or None. Extra metadata (``source_url``, ``source_sha256``, ``eval_transform``, ...).

    Returns:
        The folder path.

    Raises:
        ValueError: for a model without a build record and no ``name``/``config``, an unknown
            family, or a config with ``weights``/``name``.
        fileio.WriteError: when the folder cannot be written (the previous one is intact).
    """
    import keras  # noqa: PLC0415

    import pf_keras  # noqa: PLC0415
    from pf_keras.models.registry import build_record  # noqa: PLC0415

    if name is None or config is None:
        record = build_record(model)
        if record is None:
            raise ValueError(
                f"Model {model.name!r} carries no build record (it was not built by pf_keras.create_model): "
                f"pass name, family and config. Received: name={name!r}, config={config!r}"
            )
        name, family, config = record.model, record.family, record.config
    if family is not None and family not in FAMILY_BUILDERS:
        raise ValueError(f"Unknown model family. Valid families: {sorted(FAMILY_BUILDERS)}. Received: {family=}")
    if {"weights", "name"} & set(config):
        raise ValueError(f"A preset config holds builder arguments without `weights` and `name`. Received: {config}")
    folder = os.fspath(folder)
    meta = {
        "keras_version": keras.__version__,
        "pf_keras_version": pf_keras.__version__,
        "parameter_count": int(model.count_params()),
        "date_saved": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d@%H:%M:%S"),
        **(metadata or {}),
    }
    with fileio.atomic_path(folder, directory=True) as temp:
        os.makedirs(temp)
        config_json = {"model": name, "family": family, "config": fileio.jsonable(config)}
        fileio.write_json(os.path.join(temp, CONFIG_FILE), config_json)
        fileio.save_weights(model, os.path.join(temp, WEIGHTS_FILE))
        fileio.write_json(os.path.join(temp, METADATA_FILE), fileio.jsonable(meta))
    return folder


def source_metadata(spec, source: str, *, source_url: str | None, checkpoint: str | None = None) -> dict[str, Any]:
    """The ``metadata.json`` fields saying where a preset's weights come from (spec, file, sha256, URL, eval)."""
    from pf_keras.weights.download import sha256_of  # noqa: PLC0415

    return {
        "spec": spec.name,
        "checkpoint": checkpoint,
        "source_url": source_url,
        "source_file": os.path.basename(source),
        "source_sha256": sha256_of(source),
        "eval_transform": dataclasses.asdict(spec.eval),
        "license": spec.license,
    }


def convert_to_preset(
    model_name: str,
    checkpoint: str,
    folder: str | os.PathLike,
    *,
    model_kwargs: dict[str, Any] | None = None,
    source_url: str | None = None,
):
    """Converts a checkpoint of a published model into a preset folder (atomically); returns the model.

    Args:
        model_name: str. A spec name (``pf_keras.list_models()`` minus custom registrations).
        checkpoint: str. Official PyTorch checkpoint (or Keras ``.weights.h5``) of that model.
        folder: str. The preset folder to write.
        model_kwargs: dict or None. Builder arguments (``classes``, ``include_top``, architecture
            overrides); they go into ``config.json``.
        source_url: str or None. Where the checkpoint came from. Defaults to the spec's official
            ``imagenet`` checkpoint URL when the architecture is the published one.

    Raises:
        ValueError: for a name without a spec, arguments a preset cannot hold, or a checkpoint
            that does not fit (then nothing is written).
    """
    from pf_keras.models.registry import changed_architecture, create_model  # noqa: PLC0415
    from pf_keras.models.specs import SPECS, list_specs  # noqa: PLC0415

    if model_name not in SPECS:
        raise ValueError(f"Presets are written for the published models. Valid names: {list_specs()}. "
                         f"Received: model={model_name!r}")
    spec = SPECS[model_name]
    kwargs = dict(model_kwargs or {})
    if {"weights", "name", "input_tensor"} & set(kwargs):
        raise ValueError(f"`model_kwargs` of a preset cannot set weights, name or input_tensor. Received: {kwargs}")
    model = create_model(model_name, weights=checkpoint, **kwargs)
    if source_url is None and not changed_architecture(spec, kwargs) and spec.checkpoints:
        source_url = spec.checkpoints[0].url
    metadata = source_metadata(spec, checkpoint, source_url=source_url)
    write_preset(model, folder, name=model_name, family=spec.family, config={**spec.builder_args, **kwargs},
                 metadata=metadata)
    return model


def _read_json(path: str) -> dict:
    try:
        data = safe_open.read_json(path)  # a regular file of at most 64 MiB; deep nesting is a ValueError
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read preset file {path}: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"Preset file {path} must hold a JSON object. Received: {type(data).__name__}")
    return data


def read_preset(folder: str | os.PathLike) -> Preset:
    """Reads and checks a preset folder (all three files; the weights are not loaded).

    Raises:
        ValueError: naming the missing or malformed file.
    """
    folder = os.fspath(folder)
    for file in (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE):
        if not os.path.isfile(os.path.join(folder, file)):
            raise ValueError(
                f"A preset folder needs {CONFIG_FILE}, {WEIGHTS_FILE} and {METADATA_FILE} (write one with "
                f"`python -m pf_keras.convert --preset_dir`); {file} is missing. Received: {folder!r}"
            )
    data = _read_json(os.path.join(folder, CONFIG_FILE))
    model, family, config = data.get("model"), data.get("family"), data.get("config")
    known_family = "family" in data and (family is None or family in FAMILY_BUILDERS)
    if not isinstance(model, str) or not known_family or not isinstance(config, dict):
        raise ValueError(
            f"{os.path.join(folder, CONFIG_FILE)} must hold {{'model': str, 'family': one of "
            f"{sorted(FAMILY_BUILDERS)} or null, 'config': {{...}}}}. Received: model={model!r}, family={family!r}, "
            f"config of type {type(config).__name__}"
        )
    if family is None and os.path.exists(model):  # a folder here would be read again, and again (a cycle)
        raise ValueError(f"{os.path.join(folder, CONFIG_FILE)}: `model` must name a registered model, not a path. "
                         f"Received: model={model!r}")
    if {"weights", "name"} & set(config):
        raise ValueError(f"{os.path.join(folder, CONFIG_FILE)}: `config` must not set `weights` or `name`.")
    if family is not None:
        import inspect  # noqa: PLC0415

        from pf_keras.models.specs import family_builder  # noqa: PLC0415

        accepted = inspect.signature(family_builder(family)).parameters
        unknown = sorted(set(config) - set(accepted) - {"input_tensor"})
        if unknown or "input_tensor" in config:
            raise ValueError(
                f"{os.path.join(folder, CONFIG_FILE)}: `config` holds arguments the {family} builder does not "
                f"take. Received: {unknown or ['input_tensor']}"
            )
    return Preset(folder, model, family, config, _read_json(os.path.join(folder, METADATA_FILE)))


__all__ = [
    "CONFIG_FILE",
    "METADATA_FILE",
    "Preset",
    "RUN_PRESET",
    "WEIGHTS_FILE",
    "convert_to_preset",
    "is_preset",
    "model_folder",
    "read_preset",
    "source_metadata",
    "write_preset",
]
