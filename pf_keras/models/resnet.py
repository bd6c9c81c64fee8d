"""ResNet-50 family with parameter-free bottlenecks (R50, R50-max, R50-hybrid).

Paper: Han, Yoo, Kim, Heo, "Learning Features with Parameter-Free Layers", ICLR 2022
(https://arxiv.org/abs/2202.02777). Reference: github.com/naver-ai/PfLayer @ 008a096,
``resnet_pf.py``. This is an independent Keras 3 implementation whose converted weights
reproduce the reference outputs (parity tests: 1e-4 absolute on logits).

Architecture (torchvision-style v1.5: the stride sits on the 3x3 spatial op): stem
Conv 7x7/2 (pad 3) -> BN -> ReLU -> MaxPool 3x3/2 (pad 1); four stages of bottlenecks with
``int(64 * 2**i * width_mult)`` filters and expansion 4 (the stem keeps 64 channels whatever
``width_mult`` is, as in the reference); global average pool; Dense.

Layer names (stable; they are the left column of the PyTorch name table):

- stem: ``stem_pad``, ``stem_conv``, ``stem_bn``, ``stem_relu``, ``stem_pool_pad``, ``stem_pool``
- blocks: ``stage{s}_block{b}_*`` with 1-based s, b (see :mod:`pf_keras.blocks.bottleneck`);
  the output of stage ``s`` is layer ``stage{s}_block{depths[s-1]}_out``
  (strides 4, 8, 16, 32 for s = 1..4; :func:`stage_output_names` lists them); ``features_only``
  returns these and ``stem_relu`` (stride 2)
- head: ``avg_pool``/``max_pool``, ``predictions``; optional ``preprocessing`` after the input.

Deviations from the reference: none in eval outputs. R50-hybrid requires input sides that
are multiples of 32 (the reference crashes otherwise, because its stride-2 blocks floor in
the 2x2 average pool but ceil in the 1x1/2 shortcut); the builder raises a ValueError
instead when the size is known. With unknown sizes (``input_shape=(None, None, 3)``) the
same inputs fail at call time with a shape mismatch in ``stage*_add``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import keras

from pf_keras.blocks.bottleneck import BLOCK_KINDS, EXPANSION, apply_bottleneck
from pf_keras.blocks.conv import apply_conv_bn, apply_max_pool_3x3
from pf_keras.models.common import (
    apply_classifier_head,
    check_applications_args,
    check_blocks,
    check_number,
    check_params,
    finish_model,
    make_inputs,
)
from pf_keras.models.features import FeatureInfo, feature_model, resolve_out_indices
from pf_keras.models.registry import create_model, resolve_variant
from pf_keras.values import is_positive_int

STEM_FILTERS = 64
STAGE_FILTERS = (64, 128, 256, 512)
MIN_SIZE = 32

# The published configurations are specs in pf_keras.models.specs (resnet50, resnet50_max, resnet50_hybrid).
VARIANTS = {"max": "resnet50_max", "hybrid": "resnet50_hybrid"}

_TORCH_MODULES = {
    "reduce": "reduction_block",
    "spatial": "conv_block",
    "expand": "expansion_block",
    "shortcut": "downsample",
}
_BLOCK_LAYER = re.compile(r"stage(\d+)_block(\d+)_(reduce|spatial|expand|shortcut)_(conv|bn)")


def _resolve_block_kinds(block_kinds, depths: Sequence[int]) -> list[list[str]]:
    if isinstance(block_kinds, str):
        block_kinds = [block_kinds] * len(depths)
    if not isinstance(block_kinds, Sequence) or len(block_kinds) != len(depths):
        raise ValueError(
            f"`block_kinds` needs one entry per stage ({len(depths)}). Received: block_kinds={block_kinds!r}"
        )
    resolved = []
    for stage, (kinds, depth) in enumerate(zip(block_kinds, depths, strict=True), start=1):
        if not isinstance(kinds, Sequence):
            raise ValueError(f"Stage {stage}'s block kinds must be a kind or a list of kinds. "
                             f"Received: block_kinds={block_kinds!r}")
        kinds = [kinds] * depth if isinstance(kinds, str) else list(kinds)
        if len(kinds) != depth:
            raise ValueError(
                f"Stage {stage} has {depth} blocks but {len(kinds)} block kinds. Received: block_kinds={block_kinds!r}"
            )
        for kind in kinds:
            if kind not in BLOCK_KINDS:
                raise ValueError(f"Block kinds must be in {BLOCK_KINDS}. Received: {kind!r} in stage {stage}")
        resolved.append(kinds)
    return resolved


def _torch_name(layer_name: str, *, efficient_blocks: frozenset[str]) -> str | None:
    """Keras layer name -> PyTorch module prefix of the reference ``resnet_pf.ResNet``."""
    if layer_name in ("stem_conv", "stem_bn"):
        return f"conv1.{0 if layer_name == 'stem_conv' else 1}"
    if layer_name == "predictions":
        return "fc"
    match = _BLOCK_LAYER.fullmatch(layer_name)
    if match is None:
        return None
    stage, block, part, op = match.groups()
    module = f"layer{stage}.{int(block) - 1}.{_TORCH_MODULES[part]}"
    if part == "spatial" and f"stage{stage}_block{block}" in efficient_blocks:
        module += ".1"  # Sequential(AvgPool2d, ConvBNReLU)
    return f"{module}.{0 if op == 'conv' else 1}"


def stage_output_names(model: keras.Model) -> list[str]:
    """Names of the layers holding each stage's output feature map, stage 1 first."""
    outs = [layer.name for layer in model.layers if re.fullmatch(r"stage\d+_block\d+_out", layer.name)]
    last = {}
    for name in outs:
        stage = name.split("_")[0]
        last[stage] = name
    return list(last.values())


def _params_bound(depths, width_mult: float, channels: int, classes: int) -> int:
    """An upper bound of a ResNet's parameters: each bottleneck at most 1x1 + 3x3 + 1x1 convolutions and a
    projection from an input of at most max(stem, 4 x filters) channels, BatchNorms included, plus stem and head."""
    total = 49 * channels * STEM_FILTERS + 4 * STEM_FILTERS
    for base, depth in zip(STAGE_FILTERS, depths, strict=True):
        f = int(base * width_mult)
        wide = max(STEM_FILTERS, EXPANSION * f)
        total += depth * (wide * f + 9 * f * f + f * EXPANSION * f + wide * EXPANSION * f + 16 * EXPANSION * f)
    return total + (EXPANSION * int(STAGE_FILTERS[-1] * width_mult) + 1) * classes


def ResNet(
    depths: Sequence[int] = (3, 4, 6, 3),
    block_kinds: str | Sequence = "regular",
    *,
    width_mult: float = 1.0,
    drop_path_rate: float = 0.0,
    include_top: bool = True,
    weights: str | None = None,
    input_tensor=None,
    input_shape: Sequence | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation="softmax",
    include_preprocessing: bool = False,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    name: str = "resnet",
) -> keras.Model:
    """Builds a bottleneck ResNet whose blocks are regular, max or efficient.

    Args:
        depths: sequence of 4 ints. Blocks per stage. Defaults to (3, 4, 6, 3).
        block_kinds: str, or one entry per stage (a str or a list with one kind per block).
            Kinds (:data:`pf_keras.blocks.BLOCK_KINDS`): "regular" (3x3 conv), "depthwise"
            (3x3 depthwise conv), "max" (3x3 max-pool), "average" (3x3 avg-pool), "identity"
            (none; subsampling in stride-2 blocks), "efficient" (max-pool, or avg-pool + 3x3
            conv in stride-2 blocks). Defaults to "regular".
        width_mult: float. Multiplier of the stage widths (not the 64-channel stem). Defaults to 1.
        drop_path_rate: float. Stochastic depth, rising linearly to this value over the
            blocks. Defaults to 0 (no DropPath layers in the graph).
        include_top: bool. Add global pooling and the ``predictions`` layer. Defaults to True.
        weights: None, "imagenet" (official checkpoint, published configurations only), or the
            path to an official PyTorch checkpoint or a Keras ``.weights.h5`` file. Defaults to None.
        input_tensor: optional Keras tensor to build the model on.
        input_shape: (height, width, 3). Defaults to (224, 224, 3) with a top, else
            (None, None, 3).
        pooling: None, "avg" or "max". Global pooling when ``include_top=False``. Defaults to None.
        classes: int. Number of classes with a top. Defaults to 1000.
        classifier_activation: activation of ``predictions``; None gives logits. Defaults to "softmax".
        include_preprocessing: bool. False: inputs are normalised float RGB as for the PyTorch
            originals; True: inputs are RGB in [0, 255]. Defaults to False.
        features_only: bool. Return feature maps instead (see
            :mod:`pf_keras.models.features`): index 0 is ``stem_relu`` (stride 2), index
            ``s`` the output of stage ``s`` (stride ``2**(s+1)``); the model gets a
            ``feature_info`` attribute. Defaults to False.
        out_indices: int, sequence of ints or None. With ``features_only``: the maps to
            return (an int n: the last n). Defaults to None: (1, 2, 3, 4), strides 4-32.
        name: str. Model name. Defaults to "resnet".

    Returns:
        A ``keras.Model``.

    Raises:
        ValueError: for bad depths, widths, kinds, weights, pooling, classes, input sizes or
            ``out_indices``.

    Example:
        >>> model = ResNet((1, 1, 1, 1), "max", width_mult=0.125, input_shape=(64, 64, 3), classes=10)
        >>> model.output_shape
        (None, 10)
    """
    if not isinstance(depths, Sequence) or len(depths) != len(STAGE_FILTERS) or not all(
            is_positive_int(d) for d in depths):
        shown = tuple(depths) if isinstance(depths, Sequence) else depths
        raise ValueError(f"`depths` must be 4 positive ints, one per stage. Received: depths={shown!r}")
    depths = tuple(depths)
    check_blocks(sum(depths), "ResNet")
    check_number("width_mult", width_mult, below=1e4)
    check_number("drop_path_rate", drop_path_rate)
    if not width_mult > 0 or int(STAGE_FILTERS[0] * width_mult) < 1:
        raise ValueError(f"`width_mult` must leave at least 1 filter per stage. Received: width_mult={width_mult}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"`drop_path_rate` must be in [0, 1). Received: drop_path_rate={drop_path_rate}")
    kinds = _resolve_block_kinds(block_kinds, depths)
    if features_only:
        out_indices = resolve_out_indices(out_indices, 1 + len(depths), default=range(1, 1 + len(depths)))
    strided_efficient = any(stage[0] == "efficient" for stage in kinds[1:])
    input_shape = check_applications_args(
        include_top=include_top,
        weights=weights,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        default_size=224,
        min_size=MIN_SIZE,
        multiple_of=32 if strided_efficient else None,
    )
    check_params(_params_bound(depths, width_mult, input_shape[-1] or 3, classes), "ResNet")

    inputs, x = make_inputs(input_tensor, input_shape, include_preprocessing)
    x = apply_conv_bn(x, STEM_FILTERS, 7, strides=2, name="stem")
    x = apply_max_pool_3x3(x, strides=2, name="stem_pool")  # input is post-ReLU: zero pad is exact
    total_blocks, block_index, efficient_blocks = sum(depths), 0, set()
    for stage, (depth, stage_kinds) in enumerate(zip(depths, kinds, strict=True), start=1):
        filters = int(STAGE_FILTERS[stage - 1] * width_mult)
        for block in range(1, depth + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            prefix = f"stage{stage}_block{block}"
            if stage_kinds[block - 1] == "efficient" and strides == 2:
                efficient_blocks.add(prefix)
            rate = drop_path_rate * block_index / max(total_blocks - 1, 1)
            x = apply_bottleneck(
                x, filters, kind=stage_kinds[block - 1], strides=strides, drop_path_rate=rate, name=prefix
            )
            block_index += 1
    outputs = apply_classifier_head(
        x, include_top=include_top, pooling=pooling, classes=classes, classifier_activation=classifier_activation
    )
    model = finish_model(
        inputs,
        outputs,
        input_tensor=input_tensor,
        name=name,
        weights=weights,
        name_map=functools.partial(_torch_name, efficient_blocks=frozenset(efficient_blocks)),
        head_prefixes=("fc.",),
    )
    if not features_only:
        return model
    layers = ["stem_relu", *stage_output_names(model)]  # strides 2, 4, 8, 16, 32
    maps = [model.get_layer(layers[i]).output for i in out_indices]
    infos = [FeatureInfo(i, layers[i], int(m.shape[-1]), 2 ** (i + 1)) for i, m in zip(out_indices, maps, strict=True)]
    return feature_model(model, list(zip(infos, maps, strict=True)))


def ResNet50(**kwargs) -> keras.Model:
    """ResNet-50 v1.5, the paper's baseline (25.56M params, 4.11 GMACs, 76.2 % top-1).

    Takes every keyword argument of :func:`ResNet`; ``depths``, ``width_mult`` and
    ``block_kinds`` may be overridden for small experiments and the layer-level study.

    Example:
        >>> ResNet50(weights=None, depths=(1, 1, 1, 1), width_mult=0.125, input_shape=(64, 64, 3)).count_params() > 0
        True
    """
    return create_model("resnet50", **kwargs)


def PfResNet50(variant: str = "hybrid", **kwargs) -> keras.Model:
    """ResNet-50 with parameter-free spatial operations, keras.applications style.

    Args:
        variant: str. "hybrid" (R50-hybrid, 17.33M params, 77.1 % top-1) or "max"
            (R50-max, 14.23M params, 74.3 % top-1). Defaults to "hybrid".
        **kwargs: any keyword argument of :func:`ResNet` except ``block_kinds``
            (``include_top``, ``weights``, ``input_shape``, ``pooling``, ``classes``, ...).

    Returns:
        A ``keras.Model`` named "resnet50_hybrid" or "resnet50_max".

    Raises:
        ValueError: for an unknown variant, or any argument error of :func:`ResNet`.

    Example:
        >>> model = PfResNet50("max", depths=(1, 1, 1, 1), width_mult=0.125, input_shape=(64, 64, 3))
        >>> model.name
        'resnet50_max'
    """
    return create_model(resolve_variant(VARIANTS, variant), **kwargs)


__all__ = ["EXPANSION", "PfResNet50", "ResNet", "ResNet50", "stage_output_names"]
