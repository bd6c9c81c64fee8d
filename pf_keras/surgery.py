"""The paper's design rule applied to any bottleneck CNN: model surgery on a functional Keras model.

Han et al. (ICLR 2022, https://arxiv.org/abs/2202.02777) replace the 3x3 convolution of a
bottleneck by a parameter-free 3x3 max-pool ("max": every block) or keep a trainable op only
where the network downsamples ("hybrid"). :func:`make_parameter_free` does that to a trained or
untrained functional model and keeps every other layer and weight.

What it looks for (a *spatial unit*): ``ReLU -> [ZeroPadding2D] -> Conv2D 3x3 (stride 1 or 2,
no groups, no dilation) -> BatchNormalization -> ReLU -> Conv2D 1x1``, where the first ReLU
follows ``Conv2D 1x1 -> BatchNormalization`` (the 1x1 reduction) and each inner layer has
exactly one consumer. This is the middle unit of every bottleneck of keras.applications
ResNet50/101/152 (v1), ResNet50V2/101V2/152V2 (pre-activation: the block input gets BN-ReLU
before its 1x1 reduction, the unit inside is the same) and the port's own ResNets.

Rules:

- ``"max"``: every unit becomes a 3x3 max-pool with the unit's stride, built by the port's
  own :func:`pf_keras.blocks.apply_max_pool_3x3` (``{base}_pool``; at stride 2 a symmetric
  zero pad ``{base}_pool_pad`` first, PyTorch-style, exact because the unit input is a ReLU
  output; a TF-style "same" strided conv gets the same output size).
- ``"hybrid"``: units in stride-1 blocks become max-pools; where the block downsamples a
  trainable op stays. A strided 3x3 unit (the port, torchvision-style v1.5, and the last block
  of each V2 stage) becomes the paper's efficient op: 2x2/2 average pool then the *same* 3x3
  conv at stride 1 (weights kept; on a known odd side, where the 2x2 pool would floor, the
  strided conv is kept as it is). keras.applications v1 ResNets stride their first 1x1 conv
  and keep the 3x3 at stride 1: a unit whose 1x1 reduction is strided is left unchanged (it
  already is a stride-1 trainable op right after the stride).

New layers are named from the conv's name without ``_conv`` (``stage2_block1_spatial_conv``
-> ``stage2_block1_spatial_pool``), so the port's ``resnet50`` becomes ``resnet50_max`` /
``resnet50_hybrid`` layer for layer. Weights are copied by layer name and compared afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import keras
import numpy as np

from pf_keras.blocks.conv import apply_max_pool_3x3
from pf_keras.layers.conv import Conv2D
from pf_keras.profiling import profile

RULES = ("max", "hybrid")
PATTERN = (
    "bottleneck spatial units: ReLU -> [ZeroPadding2D] -> Conv2D 3x3 (stride 1 or 2) -> BatchNormalization "
    "-> ReLU -> Conv2D 1x1, after a 1x1 Conv2D -> BatchNormalization reduction"
)


@dataclasses.dataclass(frozen=True)
class Replacement:
    """What happened to one spatial unit (named by its conv layer)."""

    conv: str
    strides: int
    action: str  # "max_pool" | "efficient" | "kept"
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class SurgeryReport:
    """Result of :func:`make_parameter_free`: units touched and the cost before and after."""

    rule: str
    units: tuple[Replacement, ...]
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None

    @property
    def replaced(self) -> list[str]:
        """Conv layers whose unit became a max-pool or the efficient op."""
        return [u.conv for u in self.units if u.action != "kept"]

    def __str__(self) -> str:
        counts = {a: sum(u.action == a for u in self.units) for a in ("max_pool", "efficient", "kept")}
        macs = ""
        if self.macs_before is not None:
            macs = f", MACs {self.macs_before / 1e9:.3f}G -> {self.macs_after / 1e9:.3f}G"
        return (
            f"rule {self.rule}: {len(self.units)} spatial units, {counts['max_pool']} -> 3x3 max-pool, "
            f"{counts['efficient']} -> efficient (avg-pool + conv), {counts['kept']} kept; "
            f"params {self.params_before:,} -> {self.params_after:,}{macs}"
        )


def _is_relu(layer) -> bool:
    if isinstance(layer, keras.layers.ReLU):
        cfg = layer.get_config()
        return cfg.get("max_value") is None and not cfg.get("negative_slope") and not cfg.get("threshold")
    if isinstance(layer, keras.layers.Activation):
        return layer.get_config()["activation"] == "relu"
    return False


def _is_plain_conv(layer, kernel: int) -> bool:
    return (
        type(layer) in (keras.layers.Conv2D, Conv2D)
        and tuple(layer.kernel_size) == (kernel, kernel)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
    )


class _Graph:
    """Producers and consumers of every layer, read from the functional config."""

    def __init__(self, model: keras.Model, config: dict) -> None:
        self.layers = {layer.name: layer for layer in model.layers}
        self.entries = {entry["name"]: entry for entry in config["layers"]}
        self.inputs: dict[str, list[str]] = {}
        self.consumers: dict[str, list[str]] = {name: [] for name in self.entries}
        for name, entry in self.entries.items():
            producers: list[str] = []
            _collect_history(entry.get("inbound_nodes", []), producers)
            self.inputs[name] = producers
            for producer in producers:
                self.consumers.setdefault(producer, []).append(name)
        for output in _output_names(config):
            self.consumers.setdefault(output, []).append("<model output>")

    def single_input(self, name: str) -> str | None:
        nodes = self.entries[name].get("inbound_nodes", [])
        return self.inputs[name][0] if len(nodes) == 1 and len(self.inputs[name]) == 1 else None

    def only_consumer(self, name: str) -> str | None:
        consumers = self.consumers.get(name, [])
        return consumers[0] if len(consumers) == 1 and consumers[0] in self.layers else None


def _collect_history(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            out.append(value["config"]["keras_history"][0])
            return
        for item in value.values():
            _collect_history(item, out)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect_history(item, out)


def _rename_history(value: Any, renames: dict[str, str]) -> None:
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            layer, node_index, tensor_index = value["config"]["keras_history"]
            value["config"]["keras_history"] = [renames.get(layer, layer), node_index, tensor_index]
            return
        for item in value.values():
            _rename_history(item, renames)
    elif isinstance(value, list | tuple):
        for item in value:
            _rename_history(item, renames)


def _output_names(config: dict) -> list[str]:
    outputs = config["output_layers"]
    if outputs and isinstance(outputs[0], str):
        outputs = [outputs]
    return [o[0] for o in outputs]


@dataclasses.dataclass
class _Unit:
    pad: str | None
    conv: str
    bn: str
    relu: str
    source: str  # the ReLU feeding the unit
    reduce_conv: str


def _find_units(graph: _Graph) -> list[_Unit]:
    units = []
    for name, layer in graph.layers.items():
        if not _is_plain_conv(layer, 3) or tuple(layer.strides) not in ((1, 1), (2, 2)):
            continue
        bn = graph.only_consumer(name)
        if bn is None or not isinstance(graph.layers[bn], keras.layers.BatchNormalization):
            continue
        relu = graph.only_consumer(bn)
        if relu is None or not _is_relu(graph.layers[relu]):
            continue
        expand = graph.only_consumer(relu)
        if expand is None or not _is_plain_conv(graph.layers[expand], 1):
            continue
        source, pad = graph.single_input(name), None
        if source is None:
            continue
        if isinstance(graph.layers[source], keras.layers.ZeroPadding2D):
            padding = tuple(tuple(p) for p in graph.layers[source].padding)
            if padding != ((1, 1), (1, 1)) or layer.padding != "valid" or graph.only_consumer(source) != name:
                continue
            pad, source = source, graph.single_input(source)
        elif layer.padding != "same":
            continue
        if source is None or not _is_relu(graph.layers[source]):
            continue
        reduce_bn = graph.single_input(source)
        if reduce_bn is None or not isinstance(graph.layers[reduce_bn], keras.layers.BatchNormalization):
            continue
        reduce_conv = graph.single_input(reduce_bn)
        if reduce_conv is None or not _is_plain_conv(graph.layers[reduce_conv], 1):
            continue
        units.append(_Unit(pad, name, bn, relu, source, reduce_conv))
    return units


def _layer_entry(layer: keras.layers.Layer, dtype: Any, node: dict, source: str) -> dict:
    """Config entry of a new layer called on ``source``; ``node`` is an inbound node to copy.

    The tensor's shape in a node is only a placeholder: Keras wires the graph by
    ``keras_history``.
    """
    entry = keras.saving.serialize_keras_object(layer)
    entry["config"]["dtype"] = copy.deepcopy(dtype)
    entry["name"] = layer.name
    entry["inbound_nodes"] = [copy.deepcopy(node)]
    entry["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = [source, 0, 0]
    return entry


def _plan(unit: _Unit, graph: _Graph, rule: str) -> Replacement:
    conv = graph.layers[unit.conv]
    strides = int(conv.strides[0])
    if rule == "max":
        return Replacement(unit.conv, strides, "max_pool")
    if strides == 2:
        side = conv.input.shape[1:3]
        if any(s is not None and (s - (2 if unit.pad else 0)) % 2 for s in side):
            return Replacement(unit.conv, strides, "kept", "odd input side: the 2x2 average pool would floor")
        return Replacement(unit.conv, strides, "efficient")
    if tuple(graph.layers[unit.reduce_conv].strides) != (1, 1):
        return Replacement(unit.conv, strides, "kept", "the block downsamples in its 1x1 reduction (ResNet v1)")
    return Replacement(unit.conv, strides, "max_pool")


def _rewrite(config: dict, unit: _Unit, plan: Replacement) -> set[str]:
    """Edits ``config`` in place: the unit's layers become the planned op. Returns the removed names."""
    entries = config["layers"]
    index = {entry["name"]: i for i, entry in enumerate(entries)}
    conv_entry = entries[index[unit.conv]]
    dtype = conv_entry["config"].get("dtype")
    node = entries[index[unit.pad or unit.conv]]["inbound_nodes"][0]  # called on unit.source
    base = unit.conv[: -len("_conv")] if unit.conv.endswith("_conv") else unit.conv
    new: list[dict] = []
    if plan.action == "max_pool":
        # The port's own op (pf_keras.blocks.apply_max_pool_3x3): "same" at stride 1; at stride 2
        # a symmetric zero pad (exact: the unit input is a ReLU output, >= 0) + "valid" pool.
        probe = keras.Input((8, 8, 1))
        ops = keras.Model(probe, apply_max_pool_3x3(probe, strides=plan.strides, name=f"{base}_pool")).layers[1:]
        source = unit.source
        for op in ops:
            new.append(_layer_entry(op, dtype, node, source))
            source = op.name
        removed = {unit.pad, unit.conv, unit.bn, unit.relu} - {None}
        renames = {unit.relu: f"{base}_pool"}
    else:  # efficient: 2x2/2 average pool, then the same conv at stride 1
        avg = keras.layers.AveragePooling2D(2, strides=2, padding="valid", name=f"{base}_avgpool")
        new.append(_layer_entry(avg, dtype, node, unit.source))
        conv_entry["config"].update(strides=[1, 1], padding="same")
        conv_entry.pop("build_config", None)
        conv_entry["inbound_nodes"] = copy.deepcopy(new[-1]["inbound_nodes"])
        conv_entry["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = [f"{base}_avgpool", 0, 0]
        removed = {unit.pad} - {None}
        renames = {}
    position = min(index[name] for name in {unit.pad, unit.conv} - {None})
    kept = [entry for entry in entries if entry["name"] not in removed]
    position = sum(1 for entry in entries[:position] if entry["name"] not in removed)
    config["layers"] = kept[:position] + new + kept[position:]
    for entry in config["layers"]:
        _rename_history(entry.get("inbound_nodes", []), renames)
    outputs = config["output_layers"]
    if outputs and isinstance(outputs[0], str):
        config["output_layers"] = [renames.get(outputs[0], outputs[0]), *outputs[1:]]
    else:
        config["output_layers"] = [[renames.get(o[0], o[0]), *o[1:]] for o in outputs]
    return removed


def _copy_weights(source: keras.Model, target: keras.Model, removed: set[str]) -> None:
    """Copies weights by layer name; checks every kept layer is there and every weight came across."""
    originals = {layer.name: layer for layer in source.layers}
    targets = {layer.name for layer in target.layers}
    missing = sorted(set(originals) - removed - targets)
    if missing:
        raise ValueError(f"Surgery lost layers it should have kept: {missing[:5]}")
    for layer in target.layers:
        if not layer.weights:
            continue
        if layer.name not in originals:
            raise ValueError(f"Surgery created a layer with weights that has no original: {layer.name!r}")
        layer.set_weights(originals[layer.name].get_weights())
        for got, want in zip(layer.get_weights(), originals[layer.name].get_weights(), strict=True):
            if not np.array_equal(got, want):
                raise ValueError(f"Weights of layer {layer.name!r} did not copy across")


def _cost(model: keras.Model, image_size: int | None) -> tuple[int, int | None]:
    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    try:
        return params, profile(model, image_size).macs
    except ValueError:  # unknown input size and no image_size: no MACs
        return params, None


def make_parameter_free(
    model: keras.Model, rule: str = "max", *, image_size: int | None = None
) -> tuple[keras.Model, SurgeryReport]:
    """Replaces the 3x3 spatial conv units of a bottleneck CNN by parameter-free ops.

    See the module docstring for the pattern matched and the two rules. The input model is
    not modified; the new model is named ``{model.name}_{rule}``.

    Args:
        model: keras.Model. A functional model (keras.applications ResNet/ResNetV2, the
            port's ResNets, or any model with the same bottleneck units).
        rule: str. "max" (every unit -> 3x3 max-pool) or "hybrid" (max-pool where the block
            keeps its resolution, a trainable op where it downsamples). Defaults to "max".
        image_size: int or None. Input side for the MAC counts when the model's input size
            is unknown. Defaults to the model's own size (MACs are None when unknown).

    Returns:
        ``(new_model, report)``: the rebuilt functional model with every other weight copied
        and a :class:`SurgeryReport` (units, params and MACs before and after).

    Raises:
        ValueError: for an unknown rule, or a model without the bottleneck units (one line
            saying what was looked for).

    Example:
        >>> import pf_keras
        >>> r50 = pf_keras.ResNet50(depths=(1, 1, 1, 1), width_mult=0.125, input_shape=(64, 64, 3), classes=10)
        >>> new, report = make_parameter_free(r50, "max")
        >>> new.name, len(report.replaced), report.params_after < report.params_before
        ('resnet50_max', 4, True)
    """
    if rule not in RULES:
        raise ValueError(f"`rule` must be one of {RULES}. Received: rule={rule!r}")
    kind = type(model).__name__
    config = None
    if isinstance(model, keras.Model) and not isinstance(model, keras.Sequential):
        try:
            config = model.get_config()
        except NotImplementedError:  # a subclassed model
            config = None
    if not config or "output_layers" not in config:
        raise ValueError(
            f"make_parameter_free needs a functional model with {PATTERN}. "
            f"Received: a {kind} model {getattr(model, 'name', '')!r}"
        )
    graph = _Graph(model, config)
    units = _find_units(graph)
    if not units:
        raise ValueError(
            f"make_parameter_free found none of its {PATTERN}. Received: model {model.name!r} ({kind})"
        )
    config = copy.deepcopy(config)
    plans, removed = [], set()
    for unit in units:
        plan = _plan(unit, graph, rule)
        plans.append(plan)
        if plan.action != "kept":
            removed |= _rewrite(config, unit, plan)
    config["name"] = f"{model.name}_{rule}"
    new_model = keras.Model.from_config(config)
    _copy_weights(model, new_model, removed)
    params_before, macs_before = _cost(model, image_size)
    params_after, macs_after = _cost(new_model, image_size)
    report = SurgeryReport(rule, tuple(plans), params_before, params_after, macs_before, macs_after)
    return new_model, report


__all__ = ["PATTERN", "RULES", "Replacement", "SurgeryReport", "make_parameter_free"]
