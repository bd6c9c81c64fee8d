"""Multi-scale feature extraction for every family (timm's ``features_only`` / ``out_indices``).

``create_model(name, features_only=True, out_indices=...)`` (or the family builders with
the same arguments) returns a functional model whose outputs are feature maps, (batch,
height, width, channels) each, and whose ``feature_info`` attribute describes them: one
:class:`FeatureInfo` per output, in output order. The candidate maps of each family, by
index (``out_indices`` picks among them):

- ResNet: 0 the stem (``stem_relu``, stride 2), 1-4 the stages (``stage{s}_block{n}_out``,
  strides 4, 8, 16, 32);
- PiT: 0-2 the stages (``stage{s}_block{n-1}``, strides ``e``, ``2e``, ``4e`` for the
  embedding stride ``e``: 8, 16, 32, or 7, 14, 28 for PiT-B);
- ViT: 0 to depth - 1 the blocks (``block{i}_map``, stride ``patch_size``).

Maps are the raw outputs of those layers (no final LayerNorm, as timm's intermediates with
``norm=False``); a ViT block's tokens become a map through a Reshape named ``block{i}_map``.
Defaults: ResNet (1, 2, 3, 4) (the stride 4-32 pyramid; timm also returns the stem), PiT all
three stages, ViT the last three blocks (timm's default). ``out_indices`` follows timm: a
sequence of indices (negative ones count from the end), or an int ``n`` for the last ``n``.
PiT's strides are nominal (``stride * 2**s``; a 224 input gives 27x27, 14x14, 7x7 maps for
stride 8): timm reports ``(stride - 1) * 2**s`` instead.

``feature_info`` is a Python attribute set at build time; a ``.keras`` file keeps the model
but not the attribute (build again with the same arguments to get it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """One output of a feature model.

    Attributes:
        index: int. Position among the family's candidate maps (what ``out_indices`` names).
        layer: str. Name of the layer whose output this is.
        channels: int. Channels of the map.
        stride: int. Reduction from the input (nominal for PiT).
    """

    index: int
    layer: str
    channels: int
    stride: int


def resolve_out_indices(out_indices, num_features: int, default: Sequence[int]) -> tuple[int, ...]:
    """Non-negative indices of the maps to return, in ascending order (timm's rules).

    Args:
        out_indices: None (``default``), an int ``n`` (the last ``n`` maps), or a sequence of
            ints (negative ones count from the end).
        num_features: int. Number of candidate maps.
        default: sequence of int. Indices used for None.

    Returns:
        The indices, ascending, without duplicates.

    Raises:
        ValueError: for an index out of range, a duplicate, an empty selection or another type.

    Example:
        >>> resolve_out_indices(3, 12, ())
        (9, 10, 11)
        >>> resolve_out_indices((-1, 0), 12, ())
        (0, 11)
    """
    if out_indices is None:
        out_indices = tuple(default)
    if isinstance(out_indices, bool) or not isinstance(out_indices, (int, Sequence)) or isinstance(out_indices, str):
        raise ValueError(
            f"`out_indices` must be None, an int (the last n maps) or a sequence of ints. "
            f"Received: out_indices={out_indices!r}"
        )
    if isinstance(out_indices, int):
        if not 1 <= out_indices <= num_features:
            raise ValueError(
                f"`out_indices` as an int takes the last n of the {num_features} maps, so 1 <= n <= {num_features}. "
                f"Received: out_indices={out_indices}"
            )
        return tuple(range(num_features - out_indices, num_features))
    resolved = []
    for index in out_indices:
        if isinstance(index, bool) or not isinstance(index, int) or not -num_features <= index < num_features:
            raise ValueError(
                f"Each of `out_indices` must be an int in [{-num_features}, {num_features - 1}] (this model has "
                f"{num_features} feature maps). Received: out_indices={out_indices!r}"
            )
        resolved.append(index % num_features)
    if not resolved or len(set(resolved)) != len(resolved):
        raise ValueError(f"`out_indices` must name at least one map, each once. Received: out_indices={out_indices!r}")
    return tuple(sorted(resolved))


def feature_model(model: keras.Model, features: Sequence[tuple], *, name: str | None = None) -> keras.Model:
    """A model from ``model``'s inputs to the given maps, with ``feature_info`` set.

    Args:
        model: keras.Model. The (headless) model holding the layers; weights are shared.
        features: sequence of ``(FeatureInfo, tensor)``: each map and its description.
        name: str or None. Model name. Defaults to ``model.name``.

    Returns:
        A functional ``keras.Model`` with one output per entry, and a ``feature_info``
        tuple of :class:`FeatureInfo`.
    """
    infos = tuple(info for info, _ in features)
    outputs = [tensor for _, tensor in features]
    extractor = keras.Model(model.inputs, outputs, name=name or model.name)
    extractor.feature_info = infos  # a tuple: Keras would wrap a list in a tracked list
    return extractor


__all__ = ["FeatureInfo", "feature_model", "resolve_out_indices"]
