"""Where the CPU time of one training step goes: TensorFlow op types and layers, from a profiler trace.

    python scripts/profile_train_step.py --model resnet50_max --image_size 32 --batch_size 128 --steps 3

Runs the real ``training.benchmark`` train step (``Trainer``, SGD, synthetic data) under
``tf.profiler`` after warm-up, reads the host trace (``.xplane.pb``) and prints the share of the
summed op time per op type and per layer (from the op's name scope). Op times on parallel
threads add up, so shares are relative within the run, not a wall-clock breakdown.

The last table lists the slowest convolution kernels by their rate: each ``Conv2D`` layer's
multiply-adds per step divided by the time of its forward, input-gradient and filter-gradient ops
(or of the matmul that replaces them), slowest first. A kernel far below the others on the same
machine is a shape the backend handles badly (that is how the 1x1-output convolutions of a ResNet's
last stage at 32x32 showed up: 7-13 GMAC/s against 35-180 for the rest; README "Performance").
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

CONV_KINDS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul")


def op_times(trace_dir: str) -> list[tuple[str, str, float]]:
    """(op name, op type, microseconds) of every TensorFlow op event in the host plane of a trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise ValueError(f"No profiler trace was written under {trace_dir}")
    space = xplane_pb2.XSpace()
    with open(files[0], "rb") as f:
        space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                op, _, kind = name.rpartition(":")
                if not op or not kind.isidentifier() or " " in op or ":" in op or kind.startswith("__"):
                    continue  # an executor / function / iterator span, not one op kernel
                events.append((op, kind, event.duration_ps / 1e6))
    return events


def layer_of(op: str) -> str:
    """The layer op of a TF op name, blocks merged (".../stage2_block3_spatial_pool_1/MaxPool" -> "spatial_pool")."""
    for part in op.split("/"):
        match = re.fullmatch(r"stage\d+_block\d+_(\w+?)(?:_\d+)?", part) or re.fullmatch(
            r"((?:stem|predictions|avg_pool|max_pool)\w*?)(?:_\d+)?", part)
        if match:
            return match.group(1)
    return "other (optimizer, loss, loop)"


def conv_macs(model, batch_size: int) -> dict[str, int]:
    """Multiply-adds per forward pass of each ``Conv2D`` layer (by layer name) at ``batch_size``."""
    import keras

    macs = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D):
            _, height, width, _ = layer.output.shape
            kh, kw, cin, cout = layer.kernel.shape
            macs[layer.name] = batch_size * height * width * kh * kw * cin * cout // layer.groups
    return macs


def conv_rates(events: list[tuple[str, str, float]], macs: dict[str, int],
               steps: int) -> list[tuple[float, str, str, float]]:
    """(GMAC/s, layer, kernel, ms per step) of every convolution kernel in ``events``, slowest first.

    A layer's kernels are the ops of the conv kinds (oneDNN's ``_MklNative`` / ``_Mkl`` prefixes
    dropped) in its name scope; each op does as many multiply-adds as the forward pass (the three
    matmuls of a single-window convolution, forward and both gradients, share one row).
    """
    times: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for op, kind, t in events:
        kind = kind.removeprefix("_MklNative").removeprefix("_Mkl")
        if kind not in CONV_KINDS:
            continue
        layer = next((part for part in (re.sub(r"_\d+$", "", p) for p in op.split("/")) if part in macs), None)
        if layer is not None:
            times[(layer, kind)] += t / steps  # microseconds per step
            counts[(layer, kind)] += 1
    rows = [(macs[layer] * counts[layer, kind] / steps / us / 1e3, layer, kind, us / 1e3)
            for (layer, kind), us in times.items() if us > 0]
    return sorted(rows)


def _fail(message: str) -> int:
    print(f"profile_train_step.py: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50_max")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--model_kwargs", default="", help="Architecture overrides, as pf-keras-train-benchmark takes "
                        "them (e.g. 'depths=[1,1,1,1],width_mult=0.25').")
    args = parser.parse_args(argv)
    if min(args.image_size, args.batch_size, args.steps, args.top) < 1:
        return _fail("sizes and counts must be >= 1")
    import tensorflow as tf

    from pf_keras_training import benchmark
    from pf_keras_training import recipes as recipes_lib

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    try:  # a bad model name, override or size: one line
        model_kwargs = recipes_lib.parse_kwargs(args.model_kwargs)
        trainer, iterator = benchmark.build_trainer(args.model, model_kwargs=model_kwargs, image_size=args.image_size,
                                                    batch_size=args.batch_size, steps=args.steps + 2,
                                                    strategy=strategy)
    except ValueError as error:
        return _fail(str(error))
    float(trainer.train_loop(iterator, tf.constant(2))[0])  # trace + warm up
    with tempfile.TemporaryDirectory() as trace_dir:
        tf.profiler.experimental.start(trace_dir)
        float(trainer.train_loop(iterator, tf.constant(args.steps))[0])
        tf.profiler.experimental.stop()
        events = op_times(trace_dir)
    total = sum(t for _, _, t in events)
    by_kind, by_layer = collections.Counter(), collections.Counter()
    for op, kind, t in events:
        by_kind[kind] += t
        by_layer[(layer_of(op), "grad" if "gradient" in op.lower() else "fwd")] += t
    traces = trainer.train_loop.experimental_get_tracing_count()  # 1: the timed calls reused the warm-up graph
    print(f"{args.model} {args.image_size}x{args.image_size} batch {args.batch_size}: "
          f"{total / 1e3 / args.steps:.0f} ms of op time per step ({len(events)} op events); "
          f"train_loop traced {traces}x")
    print(f"\n{'op type':<36} {'share':>7} {'ms/step':>9}")
    for kind, t in by_kind.most_common(args.top):
        print(f"{kind:<36} {t / total:>7.1%} {t / 1e3 / args.steps:>9.1f}")
    print(f"\n{'layer op (all blocks)':<36} {'share':>7} {'ms/step':>9}")
    for (part, phase), t in by_layer.most_common(args.top):
        print(f"{part + ' ' + phase:<36} {t / total:>7.1%} {t / 1e3 / args.steps:>9.1f}")
    rates = conv_rates(events, conv_macs(trainer.model, args.batch_size), args.steps)
    print(f"\n{'slowest convolution kernels':<36} {'kernel':<22} {'ms/step':>9} {'GMAC/s':>8}")
    for rate, layer, kind, ms in rates[:args.top]:
        print(f"{layer:<36} {kind:<22} {ms:>9.2f} {rate:>8.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
