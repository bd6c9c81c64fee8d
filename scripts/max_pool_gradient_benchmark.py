"""Forward + backward time of the 3x3 max-pool: built-in gradient vs shifted-window gradient, TF graph and XLA.

    python scripts/max_pool_gradient_benchmark.py --batch 16

Times ``tf.GradientTape`` of ``sum(pool(x) ** 2)`` inside ``tf.function`` (graph mode, oneDNN
kernels on x86) and ``tf.function(jit_compile=True)`` (XLA) for the pool shapes of R50-max at
224x224 (stem, stage 1, the stage-2 stride-2 pool, stage 2, the stage-4 stride-2 pool); prints
the best of ``--runs`` per cell in ms. ``pf_keras.layers.MaxPool2D(gradient="auto")`` picks
the shifted gradient exactly where it measured faster (under XLA).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.runs < 1:
        parser.error("--batch and --runs must be >= 1")
    import numpy as np
    import tensorflow as tf

    from pf_keras.layers.max_pool import max_pool_2d

    b = args.batch
    shapes = [((b, 114, 114, 64), 2, "valid"), ((b, 56, 56, 64), 1, "same"), ((b, 58, 58, 128), 2, "valid"),
              ((b, 28, 28, 128), 1, "same"), ((b, 16, 16, 512), 2, "valid")]
    pools = {"builtin": lambda x, s, p: tf.nn.max_pool2d(x, 3, s, p.upper()),
             "shifted": lambda x, s, p: max_pool_2d(x, pool_size=3, strides=s, padding=p)}
    print(f"TF {tf.__version__}, {os.cpu_count()} cores; forward + backward, best of {args.runs}, ms")
    print(f"{'input (NHWC)':<22} {'stride':>6} {'builtin':>8} {'shifted':>8} {'builtin XLA':>12} {'shifted XLA':>12}")
    for shape, strides, padding in shapes:
        x = tf.constant(np.random.default_rng(0).normal(size=shape).astype("float32"))
        cells = []
        for jit in (False, True):
            for pool in pools.values():
                @tf.function(jit_compile=jit)
                def step(x, pool=pool, strides=strides, padding=padding):
                    with tf.GradientTape() as tape:
                        tape.watch(x)
                        y = pool(x, strides, padding)
                        loss = tf.reduce_sum(y * y)
                    return tape.gradient(loss, x)

                step(x).numpy()
                best = float("inf")
                for _ in range(args.runs):
                    start = time.perf_counter()
                    step(x).numpy()
                    best = min(best, time.perf_counter() - start)
                cells.append(best * 1e3)
        print(f"{str(shape):<22} {strides:>6} {cells[0]:>8.1f} {cells[1]:>8.1f} {cells[2]:>12.1f} {cells[3]:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
