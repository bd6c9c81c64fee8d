"""Trainable parameters and multiply-accumulates (MACs) of a model at a given input size.

MACs count the multiplications of convolutions, depthwise convolutions and dense layers
(per output element: kernel area x input channels / groups), which is what the paper's
"FLOPs" column reports. Normalisation, activations, pooling and additions are not counted.
A custom layer adds its own share through a ``count_macs(input_shape) -> int`` method
(attention's two matrix products, for example); its sublayers are then not walked.

CLI: ``python -m pf_keras.profiling --model resnet50_hybrid [--image_size 224]``.
"""

from __future__ import annotations

import dataclasses
import math

import keras


@dataclasses.dataclass(frozen=True)
class Profile:
    """Result of :func:`profile`."""

    name: str
    input_shape: tuple
    params: int
    macs: int

    def __str__(self) -> str:
        size = "x".join(str(s) for s in self.input_shape)
        return f"{self.name}: {self.params / 1e6:.2f}M params, {self.macs / 1e9:.2f} GMACs at {size}"


def _per_position(shape) -> int:
    return math.prod(int(s) for s in shape[1:-1]) if len(shape) > 2 else 1


def _layer_macs(layer) -> int:
    if hasattr(layer, "count_macs"):
        return int(layer.count_macs(tuple(layer.input.shape)))
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw, _, multiplier = layer.kernel.shape  # Keras 3 names the depthwise kernel "kernel"
        return _per_position(layer.output.shape) * int(layer.output.shape[-1]) * kh * kw
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw, cin_per_group, cout = layer.kernel.shape
        return _per_position(layer.output.shape) * kh * kw * cin_per_group * cout
    if isinstance(layer, keras.layers.Dense):
        cin, cout = layer.kernel.shape
        return _per_position(layer.output.shape) * cin * cout
    if isinstance(layer, keras.Model):
        return sum(_layer_macs(sub) for sub in layer.layers)
    return 0


def _with_input_size(model: keras.Model, image_size: int) -> keras.Model:
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            shape = list(layer["config"]["batch_shape"])
            layer["config"]["batch_shape"] = [shape[0], image_size, image_size, *shape[3:]]
    return model.__class__.from_config(config)


def profile(model: keras.Model | str, image_size: int | None = None, **create_kwargs) -> Profile:
    """Counts trainable parameters and MACs (batch 1).

    Args:
        model: keras.Model or registry name (built with ``weights=None`` and ``create_kwargs``).
        image_size: int or None. Input side; required when the model's sides are unknown,
            otherwise it overrides them. Defaults to the model's own input size.

    Returns:
        A :class:`Profile` with ``params`` and ``macs``.

    Raises:
        ValueError: when the input size is unknown and ``image_size`` is not given.

    Example:
        >>> profile("resnet50", depths=(1, 1, 1, 1), width_mult=0.125, image_size=64).params > 0
        True
    """
    if isinstance(model, str):
        from pf_keras.models.registry import create_model

        if image_size is not None:
            create_kwargs.setdefault("input_shape", (image_size, image_size, 3))
        model = create_model(model, **create_kwargs)
    input_shape = tuple(model.input_shape[1:])
    if image_size is not None and input_shape[:2] != (image_size, image_size):
        model = _with_input_size(model, image_size)
        input_shape = tuple(model.input_shape[1:])
    if None in input_shape:
        raise ValueError(f"Profiling needs a known input size: pass image_size=... Received: input_shape={input_shape}")
    params = sum(math.prod(w.shape) for w in model.trainable_weights)
    macs = sum(_layer_macs(layer) for layer in model.layers)
    return Profile(model.name, input_shape, int(params), int(macs))


MAX_PROFILE_SIZE = 4096  # pixels per side the command profiles at (the builders allow 16,384: minutes of tracing)


def profile_table(names: list[str], image_size: int = 224) -> str:
    """Markdown table of measured params / GMACs next to the paper's (from each model's spec)."""
    from pf_keras.models.specs import SPECS  # noqa: PLC0415

    header = f"| model | params (M) | GMACs @ {image_size} | paper params (M) | paper GMACs @ 224 |"
    rows = [header, "|---|---|---|---|---|"]
    for name in names:
        result = profile(name, image_size=image_size)
        spec = SPECS.get(name)
        paper = (f"{spec.params / 1e6:.2f}", f"{spec.macs_g:.2f}") if spec else ("-", "-")
        rows.append(f"| {name} | {result.params / 1e6:.2f} | {result.macs / 1e9:.2f} | {paper[0]} | {paper[1]} |")
    return "\n".join(rows)


def _main(argv: list[str]) -> int:
    from pf_keras.cli import DEBUG_FLAG, ArgumentParser
    from pf_keras.models.registry import list_models

    parser = ArgumentParser(prog="pf-keras-profile", description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="registry name or preset folder (repeatable); default: all")
    parser.add_argument("--pattern", default=None, help="shell-style pattern of names, e.g. '*max*'")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    names = args.model or list_models(args.pattern)
    if not names:
        raise ValueError(f"No model name matches the pattern. Valid names: {list_models()}. "
                         f"Received: pattern={args.pattern!r}")
    if not 1 <= args.image_size <= MAX_PROFILE_SIZE:
        raise ValueError(f"`image_size` must be in 1..{MAX_PROFILE_SIZE}. Received: image_size={args.image_size}")
    print(profile_table(names, args.image_size))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Prints the profile of registry models (all of them by default) next to the paper's numbers; a bad model
    or preset is one line on stderr and exit 2."""
    from pf_keras.cli import run_cli

    return run_cli(_main, argv, prog="pf-keras-profile")


if __name__ == "__main__":
    raise SystemExit(main())
