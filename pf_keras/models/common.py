"""Argument checks, input/preprocessing, head and weight loading shared by every family.

Each family builder calls these in order: :func:`check_applications_args` (before any
layer exists), :func:`make_inputs`, its own body, :func:`apply_classifier_head`, then
:func:`finish_model`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import keras

from pf_keras.imagenet import IMAGENET_MEAN, IMAGENET_STD
from pf_keras.values import is_positive_int, is_real
from pf_keras.weights.loading import check_weights_arg, load_weights_file
from pf_keras.weights.torch_convert import NameMap

POOLINGS = (None, "avg", "max")
# Bounds on what a builder creates, checked before any layer exists (a preset's config.json may be hostile):
# far above every published configuration (ViT-B: 86M parameters, 12 blocks; R50: 16 blocks, 224 px).
MAX_PARAMS = 1_000_000_000  # an upper bound of the weights, 4 GB in float32
MAX_BLOCKS = 1_000
MAX_SIDE = 16_384  # pixels per input side
MAX_CHANNELS = 4_096  # input channels


def transformer_params_bound(dim: int, mlp_ratio: float) -> int:
    """An upper bound of one transformer block's parameters: the larger mixer (attention: qkv + proj, 4 C^2;
    max: expand C -> 3C + proj, 6 C^2), the MLP, two LayerNorms, biases."""
    hidden = int(dim * mlp_ratio)
    return 6 * dim * dim + 2 * dim * hidden + hidden + 12 * dim


def check_number(name: str, value, *, below: float = math.inf) -> None:
    """ValueError unless ``value`` is a real number (not a bool) that is NaN or below ``below`` (and so not
    infinite): the builders' own range checks, which follow with their own messages, refuse NaN."""
    if not (is_real(value) and (math.isnan(value) or value < min(below, math.inf))):
        limit = f" below {below:g}" if math.isfinite(below) else ""
        raise ValueError(f"`{name}` must be a finite number{limit}. Received: {name}={value!r}")


def check_positive_ints(**kwargs) -> None:
    """ValueError naming the first argument that is not a positive ``int`` (a ``bool`` is not one)."""
    for arg, value in kwargs.items():
        if not is_positive_int(value):
            raise ValueError(f"`{arg}` must be a positive int. Received: {arg}={value!r}")


def as_shape(input_shape) -> tuple:
    """``input_shape`` as a tuple; ValueError unless it is a sequence (not a string)."""
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, str):
        raise ValueError(f"`input_shape` must be (height, width, channels). Received: input_shape={input_shape!r}")
    return tuple(input_shape)


def check_blocks(blocks: int, model: str) -> None:
    """Refuses more than :data:`MAX_BLOCKS` blocks (call it before anything per block is made).

    Raises:
        ValueError: naming the limit and the received count.
    """
    if blocks > MAX_BLOCKS:
        raise ValueError(f"{model} with {blocks} blocks exceeds the limit of {MAX_BLOCKS}. Received: blocks={blocks}")


def check_params(params: int, model: str) -> None:
    """Refuses a configuration whose parameter upper bound (computed by the family from its arguments)
    exceeds :data:`MAX_PARAMS`, before any layer exists.

    Raises:
        ValueError: naming the bound and the received size.
    """
    if params > MAX_PARAMS:
        raise ValueError(
            f"{model} with these arguments would hold up to {params:.3g} parameters, above the limit of "
            f"{MAX_PARAMS:.0e} (check the widths, depths, classes and input size). Received: params={params:.3g}"
        )


def check_applications_args(
    *,
    include_top: bool,
    weights,
    input_shape: Sequence | None,
    pooling: str | None,
    classes: int,
    classifier_activation,
    default_size: int,
    min_size: int,
    multiple_of: int | None = None,
) -> tuple:
    """Validates the keras.applications-style arguments and resolves the input shape.

    Args:
        include_top, weights, input_shape, pooling, classes, classifier_activation: as in
            the family builders.
        default_size: int. Side used when ``input_shape`` is None and ``include_top``.
        min_size: int. Smallest spatial side the architecture allows.
        multiple_of: int or None. Known sides must be multiples of it.

    Returns:
        The resolved ``(height, width, channels)`` input shape (sides may be None).

    Raises:
        ValueError: with the rule, the allowed values and the received value.
    """
    check_weights_arg(weights)
    if not isinstance(include_top, bool):  # a preset's "include_top": "no" is truthy
        raise ValueError(f"`include_top` must be True or False. Received: include_top={include_top!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be one of {POOLINGS}. Received: pooling={pooling!r}")
    if include_top and pooling is not None:
        raise ValueError(
            "`pooling` applies only to feature extraction: pass include_top=False to use it, or drop "
            f"`pooling` (the classifier head always averages). Received: pooling={pooling!r}, include_top=True"
        )
    if not isinstance(classes, int) or classes < 1:
        raise ValueError(f"`classes` must be a positive int. Received: classes={classes!r}")
    if weights == "imagenet":  # resolved by the registry (pf_keras.models.registry) for the published models
        raise ValueError(
            "weights='imagenet' exists only for the published configurations, built by name: "
            "create_model(name, weights='imagenet') with a name from pf_keras.list_models(pretrained=True); "
            "load your own weights file instead, or use weights=None. Received: weights='imagenet'"
        )
    if include_top:
        try:
            keras.activations.get(classifier_activation)
        except (ValueError, TypeError) as error:
            raise ValueError(
                "`classifier_activation` must be None, a Keras activation name or a callable. "
                f"Received: classifier_activation={classifier_activation!r}"
            ) from error

    if input_shape is None:
        input_shape = (default_size, default_size, 3) if include_top else (None, None, 3)
    input_shape = as_shape(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (height, width, channels). Received: input_shape={input_shape}")
    if weights is not None and input_shape[-1] != 3:
        raise ValueError(f"Pretrained weights take 3-channel RGB input. Received: input_shape={input_shape}")
    for size, limit in zip(input_shape, (MAX_SIDE, MAX_SIDE, MAX_CHANNELS), strict=True):
        # (sides below the model's minimum are refused below, with that minimum)
        if size is not None and (not isinstance(size, numbers.Integral) or isinstance(size, bool) or size > limit
                                 or (limit == MAX_CHANNELS and size < 1)):
            raise ValueError(
                f"`input_shape` must hold sides of at most {MAX_SIDE} pixels (or None) and 1..{MAX_CHANNELS} "
                f"channels. Received: input_shape={input_shape}"
            )
    for side in input_shape[:2]:
        if side is None:
            continue
        if side < min_size:
            raise ValueError(
                f"Input sides must be at least {min_size} pixels for this model. Received: input_shape={input_shape}"
            )
        if multiple_of and side % multiple_of:
            raise ValueError(
                f"Input sides of this model must be multiples of {multiple_of} (the reference fails otherwise); "
                f"resize or crop to e.g. {side // multiple_of * multiple_of or multiple_of}. "
                f"Received: input_shape={input_shape}"
            )
    return input_shape


def make_inputs(input_tensor, input_shape: tuple, include_preprocessing: bool):
    """Creates (or adopts) the model input and applies the optional preprocessing.

    With ``include_preprocessing`` the model takes RGB in [0, 255] and a ``preprocessing``
    layer (one multiply-add) turns it into ``(x / 255 - mean) / std``.

    Returns:
        ``(inputs, x)``: the Keras input tensor and the tensor the body starts from.
    """
    if not isinstance(include_preprocessing, bool):
        raise ValueError("`include_preprocessing` must be True or False. "
                         f"Received: include_preprocessing={include_preprocessing!r}")
    if input_tensor is None:
        inputs = keras.Input(shape=input_shape, name="image")
    elif not keras.backend.is_keras_tensor(input_tensor):
        inputs = keras.Input(tensor=input_tensor, shape=input_shape, name="image")
    else:
        inputs = input_tensor
    x = inputs
    if include_preprocessing:
        x = keras.layers.Rescaling(
            scale=[1.0 / (255.0 * s) for s in IMAGENET_STD],
            offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)],
            name="preprocessing",
        )(x)
    return inputs, x


def apply_classifier_head(
    x, *, include_top: bool, pooling: str | None, classes: int, classifier_activation, spatial_rank: int = 2
):
    """Global pooling and the ``predictions`` Dense layer, keras.applications style.

    ``spatial_rank`` is 2 for (batch, h, w, c) maps and 1 for (batch, tokens, c) sequences.
    Layer names: ``avg_pool`` / ``max_pool`` and ``predictions``.
    """
    avg = keras.layers.GlobalAveragePooling2D if spatial_rank == 2 else keras.layers.GlobalAveragePooling1D
    mx = keras.layers.GlobalMaxPooling2D if spatial_rank == 2 else keras.layers.GlobalMaxPooling1D
    if include_top:
        x = avg(name="avg_pool")(x)
        return keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    if pooling == "avg":
        return avg(name="avg_pool")(x)
    if pooling == "max":
        return mx(name="max_pool")(x)
    return x


def finish_model(
    inputs,
    outputs,
    *,
    input_tensor=None,
    name: str,
    weights,
    name_map: NameMap,
    head_prefixes: tuple[str, ...] = (),
) -> keras.Model:
    """Wraps the graph in a functional model and loads ``weights``.

    ``head_prefixes`` name the PyTorch classifier keys, skipped when the model has no top.
    """
    if input_tensor is not None:
        inputs = keras.utils.get_source_inputs(input_tensor)
    model = keras.Model(inputs, outputs, name=name)
    if weights is not None:
        has_head = any(layer.name == "predictions" for layer in model.layers)
        load_weights_file(model, weights, name_map, ignore_prefixes=() if has_head else head_prefixes)
    return model
