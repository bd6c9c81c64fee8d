"""PiT-max: pooling-based vision transformers whose odd blocks mix tokens with a 3x3 max-pool.

Paper: Han, Yoo, Kim, Heo, "Learning Features with Parameter-Free Layers", ICLR 2022
(https://arxiv.org/abs/2202.02777); PiT: Heo et al., "Rethinking Spatial Dimensions of
Vision Transformers", ICCV 2021. Reference: github.com/naver-ai/PfLayer @ 008a096,
``pit_pf.py``. This is an independent Keras 3 implementation whose converted weights
reproduce the reference outputs (parity tests: 1e-4 absolute on logits and on every
stage and pooling output).

Architecture: an overlapping conv embedding (kernel ``patch_size``, stride ``stride``, no
padding: 27x27 at 224 for Ti/S, 31x31 for B); a learned position embedding on that grid;
stages of pre-norm :class:`~pf_keras.layers.TransformerBlock` s with ``head_dims[s] *
num_heads[s]`` channels (self-attention in even blocks, the parameter-free
:class:`~pf_keras.layers.MaxPoolTokenMixer` in odd ones, the index restarting in every
stage); between stages a depthwise conv 3x3 / 2 (pad 1, with bias) that multiplies the
channels (C -> 2C in the published models); a final LayerNorm (epsilon 1e-6); the mean over
positions; Dense. Stochastic depth of block ``i`` (counted over all stages) is
``drop_path_rate * i / total_blocks`` (the reference's rule; ViT's differs).

The blocks run directly on (batch, height, width, C) maps (attention flattens them
internally), so any input size works, square or not, known or not.

Layer names (stable; they are the left column of the PyTorch name table): ``patch_embed``,
``pos_embed``, ``stage{s}_block{b}`` (0-based: reference ``transformers.{s}.blocks.{b}``),
``pool{s}_pad`` and ``pool{s}`` (reference ``pools.{s}``), ``norm``, then
``avg_pool``/``max_pool`` and ``predictions``; optional ``preprocessing`` after the input.
Stage ``s`` ends in layer ``stage{s}_block{depths[s]-1}`` (what ``features_only`` returns).

Position embedding at other sizes: when the embedded grid differs from the stored one (for
example 256x256 inputs, or unknown sizes), the embedding is resized with PyTorch's own
bicubic rule (``a = -0.75``, ``align_corners=False``, clamped borders), written as two
matrix products (:func:`~pf_keras.layers.position_embedding.bicubic_resize_matrix`), so the
reference's ``F.interpolate(mode="bicubic")`` is matched to float32 rounding (measured 5e-6 at
most on unit-variance values).
``tf.image.resize(method="bicubic")`` would not be: it uses ``a = -0.5`` and renormalised
borders (measured 27x27 -> 31x31: max deviation 0.29 on unit-variance noise, 0.009 on a
smooth grid of std 0.64; see the README, "Transformers"). Weights of another grid (a model
built with ``image_size=384`` loading 224 weights) are resampled on load by the same rule, so
both ways of running at 384 give the same numbers.

Deviations from the reference: none in eval outputs.

MACs follow the paper: dense and convolution layers only, without attention's two
token-by-token products; see :mod:`pf_keras.profiling`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras

from pf_keras.layers.position_embedding import PositionEmbedding
from pf_keras.layers.transformer_block import LAYER_NORM_EPSILON
from pf_keras.layers.transformer_stack import MIXER_PATTERNS, apply_transformer_stack, resolve_mixers
from pf_keras.models.common import (
    apply_classifier_head,
    check_applications_args,
    check_blocks,
    check_number,
    check_params,
    check_positive_ints,
    finish_model,
    make_inputs,
    transformer_params_bound,
)
from pf_keras.models.features import FeatureInfo, feature_model, resolve_out_indices
from pf_keras.models.registry import create_model, resolve_variant
from pf_keras.models.vit import block_torch_name
from pf_keras.values import is_positive_int

DEFAULT_SIZE = 224

# The published configurations (reference ``pit_pf.pit_*_max``; ``head_dims`` is the reference's
# ``base_dims``) are specs in pf_keras.models.specs.
VARIANTS = {"ti": "pit_ti_max", "s": "pit_s_max", "b": "pit_b_max"}

_BLOCK = re.compile(r"stage(\d+)_block(\d+)(?:/(.*))?")
_POOL = re.compile(r"pool(\d+)")
_FIXED_NAMES = {
    "patch_embed": "patch_embed.conv",
    "pos_embed": "",  # a bare parameter of the root module:
    "pos_embed/embedding": "pos_embed",
    "norm": "norm",
    "predictions": "head",
}


def _torch_name(path: str) -> str | None:
    """Keras layer or sublayer path -> PyTorch name in the reference ``pit_pf.PoolingTransformer``."""
    if path in _FIXED_NAMES:
        return _FIXED_NAMES[path]
    match = _POOL.fullmatch(path)
    if match is not None:
        return f"pools.{match.group(1)}.conv"
    match = _BLOCK.fullmatch(path)
    if match is None:
        return None
    stage, block, sub_path = match.groups()
    return block_torch_name(f"transformers.{stage}.blocks.{block}", sub_path or "")


def _resolve_stage_mixers(mixers, depths: Sequence[int]) -> list[list[str]]:
    if isinstance(mixers, str):
        return [resolve_mixers(mixers, depth) for depth in depths]
    mixers = list(mixers) if isinstance(mixers, Sequence) else mixers
    if not isinstance(mixers, list) or len(mixers) != len(depths):
        raise ValueError(
            f"`mixers` must be a pattern in {MIXER_PATTERNS} or have one entry per stage ({len(depths)}). "
            f"Received: mixers={mixers!r}"
        )
    return [resolve_mixers(stage, depth) for stage, depth in zip(mixers, depths, strict=True)]


def _positive_ints(arg: str, values) -> tuple[int, ...]:
    values = tuple(values) if isinstance(values, Sequence) else (values,)
    if not values or not all(is_positive_int(v) for v in values):
        raise ValueError(f"`{arg}` must be a sequence of positive ints, one per stage. Received: {arg}={values!r}")
    return values


def PiT(
    *,
    patch_size: int = 16,
    stride: int = 8,
    head_dims: Sequence[int] = (48, 48, 48),
    depths: Sequence[int] = (2, 6, 4),
    num_heads: Sequence[int] = (3, 6, 12),
    mlp_ratio: float = 4.0,
    mixers: str | Sequence = "alternating",
    drop_path_rate: float = 0.0,
    image_size: int = DEFAULT_SIZE,
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
    name: str = "pit",
) -> keras.Model:
    """Builds a pooling-based ViT whose blocks mix tokens by attention or max-pool.

    Args:
        patch_size: int. Kernel of the conv embedding. Defaults to 16.
        stride: int. Stride of the conv embedding. Defaults to 8.
        head_dims: sequence of ints. Channels per head in each stage (the reference's
            ``base_dims``). Defaults to (48, 48, 48) (PiT-S).
        depths: sequence of ints. Blocks per stage. Defaults to (2, 6, 4).
        num_heads: sequence of ints. Heads per stage. Stage ``s`` has
            ``head_dims[s] * num_heads[s]`` channels, a multiple of the previous stage's
            (the depthwise pooling multiplies channels). Defaults to (3, 6, 12).
        mlp_ratio: float. MLP hidden width over the channels. Defaults to 4.
        mixers: str or list. "alternating" (attention in even blocks and max-pool in odd
            ones, in every stage), "attention", "max", or one entry per stage (a pattern or a
            list with one kind per block). Defaults to "alternating".
        drop_path_rate: float. Stochastic depth: block ``i`` of ``n`` gets
            ``drop_path_rate * i / n``. Defaults to 0.
        image_size: int. Image side the position embedding grid is made for
            (``(image_size - patch_size) // stride + 1`` per side); other inputs get it
            resized. Defaults to 224.
        include_top: bool. Add the mean over positions and the ``predictions`` layer.
            Defaults to True.
        weights: None, "imagenet" (official checkpoint, published configurations only), or
            the path to an official PyTorch checkpoint or a Keras ``.weights.h5`` file.
            Defaults to None.
        input_tensor: optional Keras tensor to build the model on.
        input_shape: (height, width, channels); sides may be None. Defaults to
            (image_size, image_size, 3) with a top, else (None, None, 3).
        pooling: None, "avg" or "max". Global pooling when ``include_top=False``. Defaults to None.
        classes: int. Number of classes with a top. Defaults to 1000.
        classifier_activation: activation of ``predictions``; None gives logits. Defaults to "softmax".
        include_preprocessing: bool. False: inputs are normalised float RGB as for the PyTorch
            originals; True: inputs are RGB in [0, 255]. Defaults to False.
        features_only: bool. Return the stage outputs instead (see
            :mod:`pf_keras.models.features`): outputs ``stage{s}_block{n-1}`` at strides
            ``stride * 2**s``, and a ``feature_info`` attribute. Defaults to False.
        out_indices: int, sequence of ints or None. With ``features_only``: the stages to
            return (an int n: the last n). Defaults to None (all).
        name: str. Model name. Defaults to "pit".

    Returns:
        A ``keras.Model``. Without a top and pooling, its output is the final (LayerNorm-ed)
        map of the last stage.

    Raises:
        ValueError: for stage lists of unequal lengths, bad sizes, counts, rates or mixers,
            channels that do not grow by an integer factor, inputs smaller than a patch,
            bad weights/pooling/classes, or bad ``out_indices``.

    Example:
        >>> model = PiT(patch_size=8, stride=4, head_dims=(4, 4), depths=(2, 2), num_heads=(1, 2),
        ...             image_size=32, classes=10)
        >>> model.output_shape
        (None, 10)
    """
    check_positive_ints(patch_size=patch_size, stride=stride, image_size=image_size)
    head_dims = _positive_ints("head_dims", head_dims)
    depths = _positive_ints("depths", depths)
    num_heads = _positive_ints("num_heads", num_heads)
    if not len(head_dims) == len(depths) == len(num_heads):
        raise ValueError(
            "`head_dims`, `depths` and `num_heads` need one entry per stage each. "
            f"Received: head_dims={head_dims}, depths={depths}, num_heads={num_heads}"
        )
    check_blocks(sum(depths), "PiT")
    dims = [d * h for d, h in zip(head_dims, num_heads, strict=True)]
    for stage in range(1, len(dims)):
        if dims[stage] % dims[stage - 1]:
            raise ValueError(
                "Each stage's channels (head_dims[s] * num_heads[s]) must be a multiple of the previous stage's "
                f"(the depthwise pooling multiplies them). Received: channels={dims}"
            )
    if image_size < patch_size:
        raise ValueError(
            f"`image_size` must be at least patch_size={patch_size}. Received: image_size={image_size}"
        )
    check_number("mlp_ratio", mlp_ratio, below=1e4)
    check_number("drop_path_rate", drop_path_rate)
    if not mlp_ratio > 0 or int(min(dims) * mlp_ratio) < 1:
        raise ValueError(f"`mlp_ratio` must leave at least 1 MLP unit. Received: mlp_ratio={mlp_ratio}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"`drop_path_rate` must be in [0, 1). Received: drop_path_rate={drop_path_rate}")
    stage_mixers = _resolve_stage_mixers(mixers, depths)
    if features_only:
        out_indices = resolve_out_indices(out_indices, len(depths), default=range(len(depths)))
    input_shape = check_applications_args(
        include_top=include_top,
        weights=weights,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        default_size=image_size,
        min_size=patch_size,
    )
    grid = (image_size - patch_size) // stride + 1
    params = (patch_size * patch_size * (input_shape[2] or 3) + grid * grid + 1) * dims[0] + (dims[-1] + 1) * classes
    params += sum(d * transformer_params_bound(dim, mlp_ratio) for d, dim in zip(depths, dims, strict=True))
    params += sum(10 * dims[s + 1] + dims[s] * dims[s + 1] for s in range(len(dims) - 1))  # the pooling layers
    check_params(params, "PiT")

    inputs, x = make_inputs(input_tensor, input_shape, include_preprocessing)
    x = keras.layers.Conv2D(dims[0], patch_size, strides=stride, padding="valid", name="patch_embed")(x)
    x = PositionEmbedding(grid_size=(grid, grid), name="pos_embed")(x)
    total_blocks, block_index = sum(depths), 0
    for stage, (depth, kinds) in enumerate(zip(depths, stage_mixers, strict=True)):
        rates = [drop_path_rate * (block_index + i) / total_blocks for i in range(depth)]
        block_index += depth
        x = apply_transformer_stack(
            x,
            num_heads=num_heads[stage],
            mixers=kinds,
            mlp_ratio=mlp_ratio,
            drop_path_rates=rates,
            name_prefix=f"stage{stage}_",
        )
        if stage < len(depths) - 1:
            # PyTorch pads 1 on every side; Keras "same" would pad (0, 1) on even sides.
            x = keras.layers.ZeroPadding2D(1, name=f"pool{stage}_pad")(x)
            x = keras.layers.DepthwiseConv2D(
                3, strides=2, padding="valid", depth_multiplier=dims[stage + 1] // dims[stage], name=f"pool{stage}"
            )(x)
    x = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="norm")(x)
    outputs = apply_classifier_head(
        x, include_top=include_top, pooling=pooling, classes=classes, classifier_activation=classifier_activation
    )
    model = finish_model(
        inputs,
        outputs,
        input_tensor=input_tensor,
        name=name,
        weights=weights,
        name_map=_torch_name,
        head_prefixes=("head.",),
    )
    if not features_only:
        return model
    stages = stage_output_names(model)
    infos = [FeatureInfo(s, stages[s], dims[s], stride * 2**s) for s in out_indices]
    return feature_model(model, [(info, model.get_layer(info.layer).output) for info in infos])


def stage_output_names(model: keras.Model) -> list[str]:
    """Names of the layers holding each stage's output map (the last block of each stage)."""
    last = {}
    for layer in model.layers:
        match = _BLOCK.fullmatch(layer.name)
        if match is not None:
            last[match.group(1)] = layer.name
    return list(last.values())


def pit_ti_max(**kwargs) -> keras.Model:
    """PiT-Ti-max: 64/128/256 channels, depths 2/6/4 (5.17M params, 0.53 GMACs).

    Takes every keyword argument of :func:`PiT`; architecture arguments override the
    published ones (for small experiments).
    """
    return create_model("pit_ti_max", **kwargs)


def pit_s_max(**kwargs) -> keras.Model:
    """PiT-S-max: 144/288/576 channels, depths 2/6/4 (25.12M params, 2.60 GMACs, 80.8 % top-1, DeiT recipe).

    Example:
        >>> pit_s_max(head_dims=(4, 4), depths=(1, 1), num_heads=(1, 2), input_shape=(64, 64, 3)).name
        'pit_s_max'
    """
    return create_model("pit_s_max", **kwargs)


def pit_b_max(**kwargs) -> keras.Model:
    """PiT-B-max: 256/512/1024 channels, depths 3/6/4, 14/7 embedding (79.01M params, 11.28 GMACs)."""
    return create_model("pit_b_max", **kwargs)


def PfPiT(variant: str = "s", **kwargs) -> keras.Model:
    """PiT-max (attention and max-pool blocks alternating in each stage), keras.applications style.

    Args:
        variant: str. "ti", "s" or "b". Defaults to "s" (PiT-S-max, 25.12M params, 80.8 %
            top-1 with the DeiT recipe).
        **kwargs: any keyword argument of :func:`PiT` (``include_top``, ``weights``,
            ``input_shape``, ``pooling``, ``classes``, architecture overrides, ...).

    Returns:
        A ``keras.Model`` named "pit_ti_max", "pit_s_max" or "pit_b_max".

    Raises:
        ValueError: for an unknown variant, or any argument error of :func:`PiT`.

    Example:
        >>> model = PfPiT("ti", depths=(1, 1, 1), input_shape=(64, 64, 3), classes=10)
        >>> model.name, model.output_shape
        ('pit_ti_max', (None, 10))
    """
    return create_model(resolve_variant(VARIANTS, variant), **kwargs)


__all__ = ["PfPiT", "PiT", "pit_b_max", "pit_s_max", "pit_ti_max", "stage_output_names"]
