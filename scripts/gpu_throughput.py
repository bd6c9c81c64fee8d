"""Inference latency and training throughput of pf_keras models on one accelerator.

Backend-agnostic Keras 3 (run with KERAS_BACKEND=jax where TensorFlow has no GPU build).
Prints a Markdown table: batch-1 latency (median of N), batch-B inference and training
images/s, under the given dtype policy. Speed is only measured here, never asserted.

    KERAS_BACKEND=jax python scripts/gpu_throughput.py --models resnet50,resnet50_max,resnet50_hybrid \
        --batch 128 --dtype mixed_bfloat16
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import keras
import numpy as np

import pf_keras


def _timed(fn, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _jax_train_steps(model, xb: np.ndarray, runs: int, trace_dir: str = "") -> list[float]:
    """Times a jitted SGD step (forward, backward, update) on device-resident data.

    With ``trace_dir``, two more steps run under ``jax.profiler.trace`` (a TensorBoard profile
    with a Chrome ``*.trace.json.gz`` of every device kernel) after the timed ones.
    """
    import jax

    def loss_fn(tv, ntv, x, y):
        logits, ntv = model.stateless_call(tv, ntv, x, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        return keras.ops.mean(loss), ntv

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @jax.jit
    def step(tv, ntv, x, y):
        (loss, ntv), grads = grad_fn(tv, ntv, x, y)
        return [p - 0.01 * g for p, g in zip(tv, grads, strict=True)], ntv, loss

    state = [[v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]]
    x = jax.device_put(xb)
    y = jax.device_put(np.random.default_rng(2).integers(0, 1000, size=(len(xb),)))

    def one():
        tv, ntv, loss = step(*state, x, y)
        loss.block_until_ready()
        state[:] = [tv, ntv]

    for _ in range(3):
        one()
    times = _timed(one, max(5, runs // 5))
    if trace_dir:
        try:
            with jax.profiler.trace(trace_dir):
                for _ in range(2):
                    one()
        except Exception as error:  # noqa: BLE001 (a profiler that cannot start must not lose the timings)
            print(f"profiling {model.name} failed: {error}", file=sys.stderr)
    return times


def measure(name: str, *, batch: int, image_size: int, runs: int, train: bool, max_pool_gradient: str = "auto",
            trace_dir: str = "") -> dict:
    model = pf_keras.create_model(name, input_shape=(image_size, image_size, 3), classifier_activation=None)
    for layer in model._flatten_layers(include_self=False):  # noqa: SLF001 (nested pools of the token mixers too)
        if isinstance(layer, pf_keras.layers.MaxPool2D):
            layer.gradient = max_pool_gradient  # read when the train step is traced
    x1 = np.random.default_rng(0).normal(size=(1, image_size, image_size, 3)).astype("float32")
    xb = np.random.default_rng(1).normal(size=(batch, image_size, image_size, 3)).astype("float32")

    if keras.backend.backend() == "jax":
        import jax

        # Inputs live on the device and the forward pass is one jitted call: times the model,
        # not host-to-device copies of the batch.
        forward = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]
        x1_dev, xb_dev = jax.device_put(x1), jax.device_put(xb)

        def run1():
            forward(tv, ntv, x1_dev).block_until_ready()

        def runb():
            forward(tv, ntv, xb_dev).block_until_ready()

    else:

        def run1():
            model.predict_on_batch(x1)  # compiled predict step; returns host arrays

        def runb():
            model.predict_on_batch(xb)

    for _ in range(3):
        run1()
        runb()
    lat = _timed(run1, runs)
    tput = _timed(runb, max(3, runs // 5))
    row = {
        "model": name,
        "params_m": pf_keras.profile(model).params / 1e6,
        "latency_ms": 1e3 * statistics.median(lat),
        "infer_img_s": batch / statistics.median(tput),
    }
    if train and keras.backend.backend() == "jax":
        row["train_img_s"] = batch / statistics.median(_jax_train_steps(model, xb, runs, trace_dir))
    elif train:
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=True,
        )
        y = np.random.default_rng(2).integers(0, 1000, size=(batch,))
        for _ in range(3):
            model.train_on_batch(xb, y)
        steps = _timed(lambda: model.train_on_batch(xb, y), max(3, runs // 5))
        row["train_img_s"] = batch / statistics.median(steps)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,resnet50_max,resnet50_hybrid")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--dtype", default="float32", help="float32 | mixed_float16 | mixed_bfloat16")
    parser.add_argument("--no_train", action="store_true")
    parser.add_argument("--trace_dir", default="",
                        help="JAX: profile two training steps per row into TRACE_DIR/<model>-<gradient>.")
    parser.add_argument("--max_pool_gradient", default="auto",
                        help="auto | builtin | shifted | both (a row per gradient for models with max-pools)")
    args = parser.parse_args()
    gradients = ["builtin", "shifted"] if args.max_pool_gradient == "both" else [args.max_pool_gradient]
    if any(g not in pf_keras.layers.max_pool.GRADIENTS for g in gradients):
        parser.error(f"--max_pool_gradient must be auto, builtin, shifted or both. Received: {args.max_pool_gradient}")
    keras.mixed_precision.set_dtype_policy(args.dtype)
    where = ""
    if keras.backend.backend() == "jax":
        import jax

        where = f" jax={jax.__version__} device={jax.devices()[0].device_kind}"
    print(f"backend={keras.backend.backend()} keras={keras.__version__}{where} dtype={args.dtype} "
          f"batch={args.batch} size={args.image_size} python={platform.python_version()}")
    print("| model | max-pool gradient | params (M) | batch-1 latency (ms) | inference img/s | training img/s |\n"
          "|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for gradient in gradients:
            trace_dir = os.path.join(args.trace_dir, f"{name}-{gradient}") if args.trace_dir else ""
            started = time.perf_counter()
            r = measure(name, batch=args.batch, image_size=args.image_size, runs=args.runs, train=not args.no_train,
                        max_pool_gradient=gradient, trace_dir=trace_dir)
            print(f"{name} {gradient}: {time.perf_counter() - started:.0f} s with compilation", file=sys.stderr)
            print(f"| {name} | {gradient} | {r['params_m']:.2f} | {r['latency_ms']:.2f} | {r['infer_img_s']:.0f} | "
                  f"{r.get('train_img_s', float('nan')):.0f} |", flush=True)


if __name__ == "__main__":
    main()
