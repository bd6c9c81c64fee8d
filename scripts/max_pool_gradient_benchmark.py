"""Forward + backward time of the 3x3 max-pool: built-in gradient vs shifted-window gradient.

    python scripts/max_pool_gradient_benchmark.py --batch 16
    KERAS_BACKEND=jax python scripts/max_pool_gradient_benchmark.py --batch 256 --dtype bfloat16   # e.g. on a GPU

Times the gradient of ``sum(pool(x) ** 2)`` for the pool shapes of R50-max at 224x224 (stem,
stage 1, the stage-2 stride-2 pool, stage 2, the stage-4 stride-2 pool) and prints the best of
``--runs`` per cell in ms. On the TensorFlow backend (the default where TensorFlow is
installed): ``tf.GradientTape`` inside ``tf.function`` (graph mode, oneDNN kernels on x86) and
``tf.function(jit_compile=True)`` (XLA). On the JAX backend: ``jax.jit(jax.grad(...))`` on the
default device (XLA; a GPU where JAX has one), data resident there. ``pf_keras.layers.MaxPool2D
(gradient="auto")`` picks the shifted gradient exactly where it measured faster (under XLA).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable


def _best_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # compile / warm up
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _tensorflow_cells(x, strides: int, padding: str, runs: int) -> list[float]:
    import tensorflow as tf

    from pf_keras.layers.max_pool import max_pool_2d

    pools = (lambda x: tf.nn.max_pool2d(x, 3, strides, padding.upper()),
             lambda x: max_pool_2d(x, pool_size=3, strides=strides, padding=padding))
    x = tf.constant(x)
    cells = []
    for jit in (False, True):
        for pool in pools:
            @tf.function(jit_compile=jit)
            def step(x, pool=pool):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = pool(x)
                    loss = tf.reduce_sum(tf.cast(y, "float32") ** 2)
                return tape.gradient(loss, x)

            cells.append(_best_ms(lambda step=step: step(x).numpy(), runs))
    return cells


def _jax_cells(x, strides: int, padding: str, runs: int) -> list[float]:
    import jax
    import jax.numpy as jnp
    from keras import ops

    from pf_keras.layers.max_pool import max_pool_2d

    pools = (lambda x: ops.max_pool(x, 3, strides, padding),
             lambda x: max_pool_2d(x, pool_size=3, strides=strides, padding=padding))
    x = jax.device_put(x)
    cells = []
    for pool in pools:
        step = jax.jit(jax.grad(lambda x, pool=pool: jnp.sum(pool(x).astype("float32") ** 2)))
        cells.append(_best_ms(lambda step=step: step(x).block_until_ready(), runs))
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args(argv)
    if args.batch < 1 or args.runs < 1:
        parser.error("--batch and --runs must be >= 1")
    import keras
    import ml_dtypes
    import numpy as np

    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        parser.error(f"the TensorFlow or JAX backend is needed. Received: KERAS_BACKEND={backend}")
    dtype = ml_dtypes.bfloat16 if args.dtype == "bfloat16" else np.float32
    b = args.batch
    shapes = [((b, 114, 114, 64), 2, "valid"), ((b, 56, 56, 64), 1, "same"), ((b, 58, 58, 128), 2, "valid"),
              ((b, 28, 28, 128), 1, "same"), ((b, 16, 16, 512), 2, "valid")]
    if backend == "tensorflow":
        import tensorflow as tf

        where, columns = f"TF {tf.__version__}, {os.cpu_count()} cores", ("builtin", "shifted", "builtin XLA",
                                                                        "shifted XLA")
        cells_of = _tensorflow_cells
    else:
        import jax

        where, columns = f"JAX {jax.__version__} on {jax.devices()[0].device_kind}", ("builtin XLA", "shifted XLA")
        cells_of = _jax_cells
    print(f"{where}, {args.dtype}; forward + backward, best of {args.runs}, ms")
    print(f"{'input (NHWC)':<22} {'stride':>6} " + " ".join(f"{c:>12}" for c in columns))
    for shape, strides, padding in shapes:
        x = np.random.default_rng(0).normal(size=shape).astype(dtype)
        cells = cells_of(x, strides, padding, args.runs)
        print(f"{str(shape):<22} {strides:>6} " + " ".join(f"{c:>12.2f}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
