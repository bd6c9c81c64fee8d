"""A stack of transformer blocks with alternating (or uniform) token mixers."""

from __future__ import annotations

from collections.abc import Sequence

from pf_keras.layers.transformer_block import MIXER_KINDS, TransformerBlock

# "alternating": attention in even blocks, max-pool mixing in odd ones (the paper's ViT-max
# and PiT-max; the index restarts in every PiT stage). The other two are uniform stacks.
MIXER_PATTERNS = ("alternating", "attention", "max")


def resolve_mixers(mixers: str | Sequence[str], depth: int) -> list[str]:
    """The mixer kind of each of ``depth`` blocks.

    Args:
        mixers: str or sequence of str. A pattern from ``MIXER_PATTERNS`` ("alternating":
            "attention" at even indices, "max" at odd ones), or one kind per block.
        depth: int. Number of blocks.

    Returns:
        A list of ``depth`` kinds from ``MIXER_KINDS``.

    Raises:
        ValueError: for an unknown pattern or kind, or a list of the wrong length.

    Example:
        >>> resolve_mixers("alternating", 3)
        ['attention', 'max', 'attention']
    """
    if isinstance(mixers, str):
        if mixers not in MIXER_PATTERNS:
            raise ValueError(
                f"`mixers` must be a pattern in {MIXER_PATTERNS} or one kind in {MIXER_KINDS} per block. "
                f"Received: mixers={mixers!r}"
            )
        if mixers == "alternating":
            return ["attention" if index % 2 == 0 else "max" for index in range(depth)]
        return [mixers] * depth
    kinds = list(mixers) if isinstance(mixers, Sequence) else None
    if kinds is None or len(kinds) != depth or any(kind not in MIXER_KINDS for kind in kinds):
        mixers = kinds if kinds is not None else mixers
        raise ValueError(
            f"`mixers` as a list needs {depth} entries, each in {MIXER_KINDS}. Received: mixers={mixers!r}"
        )
    return kinds


def apply_transformer_stack(
    x,
    *,
    num_heads: int,
    mixers: Sequence[str],
    mlp_ratio: float = 4.0,
    drop_path_rates: Sequence[float] | None = None,
    grid_size: tuple[int, int] | None = None,
    name_prefix: str = "",
):
    """Applies one :class:`TransformerBlock` per entry of ``mixers``.

    Blocks are named ``{name_prefix}block{i}`` with a 0-based ``i``, so the odd/even rule and
    the reference's ``blocks.{i}`` read the same.

    Args:
        x: tensor. (batch, tokens, channels) or (batch, height, width, channels).
        num_heads: int. Heads of the attention blocks.
        mixers: sequence of str. Kind of each block (see :func:`resolve_mixers`).
        mlp_ratio: float. MLP hidden width over the channels. Defaults to 4.
        drop_path_rates: sequence of float or None. Stochastic depth of each block.
            Defaults to None (all 0).
        grid_size: (int, int) or None. Token grid of sequence inputs (rows, columns),
            for the max mixers. Defaults to None (square).
        name_prefix: str. Prefix of the block names. Defaults to "".

    Returns:
        The output tensor, shaped like ``x``.

    Example:
        >>> import keras
        >>> inputs = keras.Input((16, 8))
        >>> apply_transformer_stack(inputs, num_heads=2, mixers=resolve_mixers("alternating", 2)).shape
        (None, 16, 8)
    """
    rates = list(drop_path_rates) if drop_path_rates is not None else [0.0] * len(mixers)
    if len(rates) != len(mixers):
        raise ValueError(
            f"`drop_path_rates` needs one rate per block ({len(mixers)}). Received: drop_path_rates={rates}"
        )
    for index, (kind, rate) in enumerate(zip(mixers, rates, strict=True)):
        x = TransformerBlock(
            num_heads,
            mixer=kind,
            mlp_ratio=mlp_ratio,
            drop_path_rate=rate,
            grid_size=grid_size,
            name=f"{name_prefix}block{index}",
        )(x)
    return x
