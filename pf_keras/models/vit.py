"""ViT-max: vision transformers whose odd blocks mix tokens with a 3x3 max-pool.

Paper: Han, Yoo, Kim, Heo, "Learning Features with Parameter-Free Layers", ICLR 2022
(https://arxiv.org/abs/2202.02777). Reference: github.com/naver-ai/PfLayer @ 008a096,
``vit_pf.py`` (built on timm's ViT). This is an independent Keras 3 implementation whose
converted weights reproduce the reference outputs (parity tests: 1e-4 absolute on logits
and on every block's tokens).

Architecture: a patch embedding (Conv ``patch_size`` x ``patch_size``, stride
``patch_size``) flattened to tokens in row-major order; NO class token; a learned position
embedding over the patches only; ``depth`` pre-norm :class:`~pf_keras.layers.TransformerBlock`
s, self-attention in even blocks and the parameter-free
:class:`~pf_keras.layers.MaxPoolTokenMixer` in odd ones (``mixers`` changes that); a final
LayerNorm (epsilon 1e-6); the mean over tokens; Dense. Stochastic depth rises linearly from
0 in the first block to ``drop_path_rate`` in the last (``torch.linspace`` in the reference).

Layer names (stable; they are the left column of the PyTorch name table):
``patch_embed`` (Conv2D), ``patch_tokens`` (Reshape), ``pos_embed``, ``block{i}`` (0-based,
as the reference's ``blocks.{i}``), ``norm``, ``feature_map`` (Reshape to the patch grid),
then ``avg_pool``/``max_pool`` and ``predictions``; optional ``preprocessing`` after the input.
With ``features_only``: ``block{i}_map`` (Reshape of block ``i``'s tokens to the patch grid).

Deviations from the reference: none in eval outputs. The input size is fixed by the
position embedding, so it must be known, with sides that are multiples of ``patch_size``
(the reference silently drops the remainder pixels); it may be non-square (the max-pool
mixers get the grid). Weights trained at another size (a 224 checkpoint in a 384 model) have
their position embedding resampled on load, bicubic without antialiasing, as timm's
``resample_abs_pos_embed(..., antialias=False)`` and DeiT's fine-tuning script do
(:func:`~pf_keras.layers.position_embedding.resample_position_embedding`). ``include_top=False``
returns the final (LayerNorm-ed) tokens as a (batch, h, w, C) map.

MACs follow the paper: dense and convolution layers only, without attention's two
token-by-token products (those add 2 N^2 C per attention block: 0.09 / 0.18 / 0.35 G for
Ti / S / B at 224x224); see :mod:`pf_keras.profiling`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras

from pf_keras.layers.position_embedding import PositionEmbedding
from pf_keras.layers.transformer_block import LAYER_NORM_EPSILON
from pf_keras.layers.transformer_stack import apply_transformer_stack, resolve_mixers
from pf_keras.models.common import (
    apply_classifier_head,
    as_shape,
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

DEFAULT_SIZE = 224

# The published configurations (reference ``vit_pf.vit_*_max``) are specs in pf_keras.models.specs.
VARIANTS = {"ti": "vit_ti_max", "s": "vit_s_max", "b": "vit_b_max"}

# Sublayer paths of a TransformerBlock -> reference module names (``vit_pf.Block``); sublayers
# not listed keep their own name (norm1, norm2, and qkv/proj inside the attention).
BLOCK_TORCH_NAMES = {
    "mixer": "attn",
    "mixer/expand": "attn.qkv",  # the max mixer's expansion keeps the upstream name
    "mlp_fc1": "mlp.fc1",
    "mlp_fc2": "mlp.fc2",
}


def block_torch_name(torch_block: str, sub_path: str) -> str | None:
    """Torch module of the path ``sub_path`` inside a block whose reference module is ``torch_block``."""
    if not sub_path:
        return torch_block
    if sub_path in BLOCK_TORCH_NAMES:
        return f"{torch_block}.{BLOCK_TORCH_NAMES[sub_path]}"
    return None


_BLOCK = re.compile(r"block(\d+)(?:/(.*))?")
_FIXED_NAMES = {
    "patch_embed": "patch_embed.proj",
    "pos_embed": "",  # a bare parameter of the root module:
    "pos_embed/embedding": "pos_embed",
    "norm": "norm",
    "predictions": "head",
}


def _torch_name(path: str) -> str | None:
    """Keras layer or sublayer path -> PyTorch name in the reference ``vit_pf.EffTransformer``."""
    if path in _FIXED_NAMES:
        return _FIXED_NAMES[path]
    match = _BLOCK.fullmatch(path)
    if match is None:
        return None
    return block_torch_name(f"blocks.{match.group(1)}", match.group(2) or "")


def ViT(
    *,
    patch_size: int = 16,
    hidden_dim: int = 384,
    depth: int = 12,
    num_heads: int = 6,
    mlp_ratio: float = 4.0,
    mixers: str | Sequence[str] = "alternating",
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
    name: str = "vit",
) -> keras.Model:
    """Builds a ViT without class token whose blocks mix tokens by attention or max-pool.

    Args:
        patch_size: int. Side of the square patches. Defaults to 16.
        hidden_dim: int. Token width. Defaults to 384 (ViT-S).
        depth: int. Number of blocks. Defaults to 12.
        num_heads: int. Attention heads; must divide ``hidden_dim``. Defaults to 6.
        mlp_ratio: float. MLP hidden width over ``hidden_dim``. Defaults to 4.
        mixers: str or list. "alternating" (attention in even blocks, max-pool in odd
            ones), "attention", "max", or one of "attention"/"max" per block.
            Defaults to "alternating".
        drop_path_rate: float. Stochastic depth of the last block (linear from 0).
            Defaults to 0.
        include_top: bool. Add the mean over tokens and the ``predictions`` layer.
            Defaults to True.
        weights: None, "imagenet" (official checkpoint, published configurations at 224
            only), or the path to an official PyTorch checkpoint or a Keras ``.weights.h5``
            file. Defaults to None.
        input_tensor: optional Keras tensor to build the model on.
        input_shape: (height, width, channels), known sides that are multiples of
            ``patch_size`` (square or not; the position embedding has one entry per patch,
            and weights of another grid are resampled on load). Defaults to (224, 224, 3).
        pooling: None, "avg" or "max". Global pooling when ``include_top=False``. Defaults to None.
        classes: int. Number of classes with a top. Defaults to 1000.
        classifier_activation: activation of ``predictions``; None gives logits. Defaults to "softmax".
        include_preprocessing: bool. False: inputs are normalised float RGB as for the PyTorch
            originals; True: inputs are RGB in [0, 255]. Defaults to False.
        features_only: bool. Return the block outputs as maps instead (see
            :mod:`pf_keras.models.features`): outputs ``block{i}_map``, (batch, height /
            patch_size, width / patch_size, hidden_dim), and a ``feature_info`` attribute.
            Defaults to False.
        out_indices: int, sequence of ints or None. With ``features_only``: the blocks to
            return (an int n: the last n). Defaults to None (the last 3, as timm).
        name: str. Model name. Defaults to "vit".

    Returns:
        A ``keras.Model``. Without a top and pooling, its output is the final token map
        (batch, height / patch_size, width / patch_size, hidden_dim).

    Raises:
        ValueError: for bad sizes, counts, rates or mixers, ``hidden_dim`` not divisible by
            ``num_heads``, an unknown or wrongly sized input, bad weights/pooling/classes,
            or bad ``out_indices``.

    Example:
        >>> model = ViT(patch_size=8, hidden_dim=16, depth=2, num_heads=2, input_shape=(32, 32, 3), classes=10)
        >>> model.output_shape
        (None, 10)
    """
    check_positive_ints(patch_size=patch_size, hidden_dim=hidden_dim, depth=depth, num_heads=num_heads)
    check_blocks(depth, "ViT")
    check_number("mlp_ratio", mlp_ratio, below=1e4)
    check_number("drop_path_rate", drop_path_rate)
    if not mlp_ratio > 0 or int(hidden_dim * mlp_ratio) < 1:
        raise ValueError(f"`mlp_ratio` must leave at least 1 MLP unit. Received: mlp_ratio={mlp_ratio}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"`drop_path_rate` must be in [0, 1). Received: drop_path_rate={drop_path_rate}")
    kinds = resolve_mixers(mixers, depth)
    if "attention" in kinds and hidden_dim % num_heads:
        raise ValueError(
            f"`hidden_dim` must be divisible by `num_heads` (each head gets hidden_dim / num_heads channels). "
            f"Received: hidden_dim={hidden_dim}, num_heads={num_heads}"
        )
    if features_only:
        out_indices = resolve_out_indices(out_indices, depth, default=range(max(depth - 3, 0), depth))
    if input_shape is None:
        input_shape = (DEFAULT_SIZE, DEFAULT_SIZE, 3)
    input_shape = as_shape(input_shape)
    if len(input_shape) == 3 and None in input_shape[:2]:
        raise ValueError(
            "ViT needs a known input size (its position embedding has one entry per patch); resize or "
            f"crop to e.g. ({DEFAULT_SIZE}, {DEFAULT_SIZE}, 3). Received: input_shape={input_shape}"
        )
    input_shape = check_applications_args(
        include_top=include_top,
        weights=weights,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        default_size=DEFAULT_SIZE,
        min_size=patch_size,
    )
    for side in input_shape[:2]:
        if side % patch_size:
            raise ValueError(
                f"The input sides must be multiples of patch_size={patch_size} (no partial patches); resize or "
                f"crop to e.g. {side // patch_size * patch_size}. Received: input_shape={input_shape}"
            )
    grid = (input_shape[0] // patch_size, input_shape[1] // patch_size)
    embed = (patch_size * patch_size * (input_shape[2] or 3) + grid[0] * grid[1] + 3) * hidden_dim
    check_params(embed + depth * transformer_params_bound(hidden_dim, mlp_ratio) + (hidden_dim + 1) * classes, "ViT")

    inputs, x = make_inputs(input_tensor, input_shape, include_preprocessing)
    x = keras.layers.Conv2D(hidden_dim, patch_size, strides=patch_size, padding="valid", name="patch_embed")(x)
    x = keras.layers.Reshape((grid[0] * grid[1], hidden_dim), name="patch_tokens")(x)  # row-major, as torch's flatten
    x = PositionEmbedding(grid_size=grid, name="pos_embed")(x)
    rates = [drop_path_rate * index / max(depth - 1, 1) for index in range(depth)]
    x = apply_transformer_stack(
        x, num_heads=num_heads, mixers=kinds, mlp_ratio=mlp_ratio, drop_path_rates=rates, grid_size=grid
    )
    x = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="norm")(x)
    x = keras.layers.Reshape((*grid, hidden_dim), name="feature_map")(x)
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
    maps = []
    for index in out_indices:  # block outputs are tokens: reshape them to the patch grid
        tokens = model.get_layer(f"block{index}").output
        info = FeatureInfo(index, f"block{index}_map", hidden_dim, patch_size)
        maps.append((info, keras.layers.Reshape((*grid, hidden_dim), name=info.layer)(tokens)))
    return feature_model(model, maps)


def vit_ti_max(**kwargs) -> keras.Model:
    """ViT-Ti-max: 192 dims, 3 heads, 12 blocks (6.16M params, 1.16 GMACs).

    Takes every keyword argument of :func:`ViT`; architecture arguments override the
    published ones (for small experiments).
    """
    return create_model("vit_ti_max", **kwargs)


def vit_s_max(**kwargs) -> keras.Model:
    """ViT-S-max: 384 dims, 6 heads, 12 blocks (23.82M params, 4.58 GMACs, 80.0 % top-1 with the DeiT recipe).

    Example:
        >>> vit_s_max(patch_size=8, hidden_dim=16, depth=2, num_heads=2, input_shape=(32, 32, 3)).name
        'vit_s_max'
    """
    return create_model("vit_s_max", **kwargs)


def vit_b_max(**kwargs) -> keras.Model:
    """ViT-B-max: 768 dims, 12 heads, 12 blocks (93.64M params, 18.17 GMACs)."""
    return create_model("vit_b_max", **kwargs)


def PfViT(variant: str = "s", **kwargs) -> keras.Model:
    """ViT-max (attention and max-pool blocks alternating), keras.applications style.

    Args:
        variant: str. "ti", "s" or "b". Defaults to "s" (ViT-S-max, 23.82M params, 80.0 %
            top-1 with the DeiT recipe).
        **kwargs: any keyword argument of :func:`ViT` (``include_top``, ``weights``,
            ``input_shape``, ``pooling``, ``classes``, architecture overrides, ...).

    Returns:
        A ``keras.Model`` named "vit_ti_max", "vit_s_max" or "vit_b_max".

    Raises:
        ValueError: for an unknown variant, or any argument error of :func:`ViT`.

    Example:
        >>> model = PfViT("ti", depth=2, input_shape=(32, 32, 3), classes=10)
        >>> model.name, model.output_shape
        ('vit_ti_max', (None, 10))
    """
    return create_model(resolve_variant(VARIANTS, variant), **kwargs)


__all__ = ["BLOCK_TORCH_NAMES", "PfViT", "ViT", "vit_b_max", "vit_s_max", "vit_ti_max"]
