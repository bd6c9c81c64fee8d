"""Images/s per core of the JPEG train transform on a generated folder of ImageNet-sized JPEGs.

    python scripts/input_pipeline_benchmark.py --images 256 --batches 8 --threads 1 --repeats 3

Writes ``--images`` JPEGs of 500x375 (ImageNet's typical size) at quality 90 into a
``folder:`` dataset (``train/<class>/`` and ``val/<class>/``; a temporary folder unless
``--folder`` is given), then times, each with tf.data limited to ``--threads`` threads (and
intra-op parallelism 1), these stages, each a prefix of the next:

- ``read``: the files' bytes only;
- ``decode+crop``: the partial JPEG decode of a random crop (``decode_and_crop_jpeg``);
- ``+resize``: ``data.train_resized`` (the crop resized to ``--image_size``, antialiased bilinear);
- ``train per-image``: the train pipeline of ``training/data.py`` with every step per image;
- ``train``: the train pipeline as train.py runs it (flip, colour jitter 0.4 and normalisation
  on whole batches, XLA-compiled: ``augment.finish_batch``).

Each stage reports images/s of wall time and images per CPU-second of the whole process
(``time.process_time``: all threads, XLA's included); on a shared machine the second is the
honest per-core number. The load average is printed with the table.

It also checks that the folder pipeline's graph holds no Python op (no ``from_generator`` /
``py_function``: those hold the GIL and do not scale with threads).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

WIDTH, HEIGHT, QUALITY = 500, 375, 90
PYTHON_OPS = (b"GeneratorDataset", b"PyFunc", b"EagerPyFunc")


def write_jpegs(root: str, count: int, *, classes: int = 4, seed: int = 0) -> float:
    """``count`` train JPEGs (and one val JPEG per class) of natural-looking noise; returns the mean file size."""
    import tensorflow as tf

    rng = tf.random.Generator.from_seed(seed)
    sizes = []
    for i in range(count + classes):
        split, label = ("val", i - count) if i >= count else ("train", i % classes)
        folder = os.path.join(root, split, f"class_{label}")
        os.makedirs(folder, exist_ok=True)
        coarse = rng.uniform([1, 12, 16, 3], 0, 255)  # smooth shapes + grain: a photo-like JPEG size
        image = tf.image.resize(coarse, [HEIGHT, WIDTH], method="bicubic")[0] + rng.normal([HEIGHT, WIDTH, 3], 0, 12)
        data = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), quality=QUALITY).numpy()
        with open(os.path.join(folder, f"{i:06d}.jpg"), "wb") as f:
            f.write(data)
        sizes.append(len(data))
    return sum(sizes) / len(sizes)


def python_ops_in(dataset) -> list[str]:
    """Names of Python-backed ops in a tf.data graph (empty when the pipeline is pure TensorFlow)."""
    graph = dataset._as_serialized_graph().numpy()  # noqa: SLF001 (the only way to read a tf.data graph)
    return [op.decode() for op in PYTHON_OPS if op in graph]


def _rate(dataset, threads: int, elements: int, per_element: int, repeats: int = 1) -> tuple[float, float]:
    """(images/s of wall time, images per CPU-second of the process) over ``elements`` elements: the best
    of ``repeats`` runs of each (on a shared machine the least disturbed one), after as many elements
    untimed (so that no run consumes work buffered ahead while the first element compiled)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    it = iter(dataset.with_options(options))
    for _ in range(elements):  # warm-up: tracing, XLA compilation, and what the pipeline buffered meanwhile
        next(it)
    best_cpu = best_wall = float("inf")
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(elements):
            next(it)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return elements * per_element / best_wall, elements * per_element / max(best_cpu, 1e-9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="JPEGs to generate.")
    parser.add_argument("--folder", default="", help="Write (or reuse) the JPEG folder here instead of a temp one.")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8, help="Timed batches of the train pipeline.")
    parser.add_argument("--threads", default="", help="Comma-separated thread counts (default: 1 and all cores).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per stage; the best is reported.")
    args = parser.parse_args(argv)
    if min(args.images, args.image_size, args.batch_size, args.batches, args.repeats) < 1:
        parser.error("counts and sizes must be >= 1")
    cores = os.cpu_count() or 1
    try:
        threads = sorted({int(t) for t in args.threads.split(",") if t}) or sorted({1, cores})
    except ValueError:
        parser.error(f"--threads takes comma-separated ints. Received: {args.threads!r}")
    if threads[0] < 1:
        parser.error("thread counts must be >= 1")
    import tensorflow as tf

    from pf_keras_training import data as data_lib
    from pf_keras_training import recipes as recipes_lib

    with tempfile.TemporaryDirectory() as tmp:
        root = args.folder or tmp
        if not os.path.isdir(os.path.join(root, "train")):
            mean_bytes = write_jpegs(root, args.images)
        else:
            files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "train")) for f in fs]
            mean_bytes = sum(os.path.getsize(f) for f in files) / max(1, len(files))
        cfg = recipes_lib.DataConfig(dataset=f"folder:{root}", global_batch_size=args.batch_size,
                                     image_size=args.image_size, color_jitter=0.4)
        source = data_lib.resolve_source(cfg)
        paths = tf.constant(list(source.train_files[0]))
        files = tf.data.Dataset.from_tensor_slices(paths).repeat()
        read = files.map(tf.io.read_file, num_parallel_calls=tf.data.AUTOTUNE)
        crop = read.enumerate().map(
            lambda i, b: data_lib.decode_random_crop(b, tf.stack([i, i]), (0.08, 1.0), (3 / 4, 4 / 3)),
            num_parallel_calls=tf.data.AUTOTUNE)
        resized = read.enumerate().map(
            lambda i, b: data_lib.train_resized(b, tf.stack([i, i]), cfg, "bilinear"),
            num_parallel_calls=tf.data.AUTOTUNE)
        ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1)

        def train_stream():
            return data_lib.make_train_dataset_fn(source, cfg, seed=0, epoch=0, steps_per_epoch=10**6, skip_steps=0,
                                                  label_smoothing=0.0, interpolation="bilinear")(ctx)

        train = train_stream()
        batched = data_lib.batched_finish
        data_lib.batched_finish = lambda cfg: False  # the same pipeline with every step per image
        try:
            train_per_image = train_stream()
        finally:
            data_lib.batched_finish = batched
        python_ops = python_ops_in(train)
        per_image = len(source.train_files[0])
        stages = [("read", read, per_image, 1), ("decode+crop", crop, per_image, 1),
                  ("+resize", resized, per_image, 1),
                  ("train per-image", train_per_image, args.batches, args.batch_size),
                  ("train", train, args.batches, args.batch_size)]
        rows = [(n, name, *_rate(ds, n, count, size, args.repeats))
                for n in threads for name, ds, count, size in stages]
    print(f"{args.images} JPEGs {WIDTH}x{HEIGHT} q{QUALITY} (mean {mean_bytes / 1024:.0f} KiB), train transform to "
          f"{args.image_size}x{args.image_size}, batch {args.batch_size}, TF {tf.__version__}, {cores} cores, "
          f"load average {' '.join(_load_average())}")
    print(f"Python ops in the folder pipeline: {', '.join(python_ops) if python_ops else 'none'}")
    print(f"{'threads':>7} {'stage':<16} {'img/s':>7} {'img/CPU-s':>9} {'CPU ms/img':>10}")
    for n, name, wall, cpu in rows:
        print(f"{n:>7} {name:<16} {wall:>7.0f} {cpu:>9.0f} {1000 / cpu:>10.2f}")
    return 0


def _load_average() -> list[str]:
    try:
        return [f"{v:.2f}" for v in os.getloadavg()]
    except OSError:
        return ["unknown"]


if __name__ == "__main__":
    sys.exit(main())
