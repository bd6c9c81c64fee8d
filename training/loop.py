"""The distributed training loop: one ``strategy.run`` code path for every strategy.

Orbit-style: :meth:`Trainer.train_loop_begin` (eager) resets the host-side timers;
:meth:`Trainer.train_loop` is one ``tf.function`` that runs ``num_steps`` steps, each a
``strategy.run`` of the per-replica step; :meth:`Trainer.train_loop_end` (eager) turns the
sums into metrics. Checkpoint, eval, logging and preemption decisions happen on the host
between inner loops. Inside ``train_loop`` only TensorFlow ops and variable updates run:
the learning rate of each step is computed in-graph from the global step.

Per replica, the loss is ``sum(per-example loss) / global_batch``; the optimizer
all-reduces (sums) the gradients, so the update equals single-device training on the
global batch (as DDP's gradient mean). The optimizers follow torch's update rules
(:mod:`training.optim`): SGD's weight decay is coupled (added to the gradient), AdamW's
decoupled; neither touches norms, biases or position embeddings (:func:`decay_variables`,
timm's no-decay group). A step equals timm's (tests/training/step_parity_test.py).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import math
import os
import sys
import time
import types

import keras
import tensorflow as tf

from pf_keras import fileio, safe_open
from pf_keras.cli import one_line
from pf_keras.values import is_int
from pf_keras_training import lock as lock_lib
from pf_keras_training import optim as optim_lib
from pf_keras_training import recipes as recipes_lib
from pf_keras_training.recipes import Recipe

STRATEGIES = ("one_device", "mirrored", "multi_worker", "tpu")
METRICS_FILE = "metrics.jsonl"
MAX_METRICS_BYTES = 256 << 20  # read_metrics: ~300 bytes a record; 90 ImageNet epochs at steps_per_loop=1: ~140 MB
MAX_METRICS_LINE = 1 << 20


# ---------------------------------------------------------------- strategies


def configure_cpu_replicas(num_replicas: int) -> None:
    """Splits the host CPU into ``num_replicas`` logical devices (before TensorFlow starts).

    Raises:
        ValueError: if TensorFlow already started with fewer logical CPUs.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_replicas)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < num_replicas:
            raise ValueError(
                f"TensorFlow was initialised before the CPU could be split into {num_replicas} logical devices; "
                f"call configure_cpu_replicas first. Logical CPUs available: {have}. "
                f"Received: num_replicas={num_replicas}"
            ) from None


def check_tf_config(text: str) -> None:
    """ValueError (one line) unless ``text`` is a TF_CONFIG TensorFlow can use: a JSON object whose ``cluster``
    maps job names to non-empty lists of ``host:port`` strings and whose ``task`` names one of them (``type``, and
    an ``index`` within its list). TensorFlow itself raises a TypeError on most malformed ones, and treats some
    (``[]``) as no cluster at all, silently training alone."""
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"TF_CONFIG is not JSON ({error}). Received: TF_CONFIG={text[:200]!r}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    jobs_ok = isinstance(cluster, dict) and cluster and all(
        isinstance(job, str) and isinstance(hosts, list) and hosts and all(isinstance(h, str) and ":" in h
                                                                               for h in hosts)
        for job, hosts in cluster.items())
    task_ok = (jobs_ok and isinstance(task, dict) and task.get("type") in cluster and is_int(task.get("index"))
               and 0 <= task["index"] < len(cluster[task["type"]]))
    if not task_ok:
        raise ValueError(
            'TF_CONFIG must be {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}} '
            f"with the task's index within its job. Received: TF_CONFIG={text[:200]!r}")


def create_strategy(name: str, *, num_replicas: int = 0, tpu: str = "") -> tf.distribute.Strategy:
    """Builds a strategy by name.

    Args:
        name: str. One of ``one_device``, ``mirrored``, ``multi_worker``, ``tpu``.
        num_replicas: int. ``mirrored`` on a host without GPUs: split the CPU into this many
            logical devices (0 = one). With GPUs: use the first ``num_replicas`` GPUs (0 = all).
        tpu: str. TPU name or address for ``tpu`` ("" = local / from the environment).

    Raises:
        ValueError: for an unknown name, or ``multi_worker`` without ``TF_CONFIG``.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy. Valid strategies: {list(STRATEGIES)}. Received: strategy={name!r}")
    if num_replicas and name not in ("mirrored",):
        raise ValueError(
            f"`num_replicas` only applies to the mirrored strategy. "
            f"Received: strategy={name!r}, num_replicas={num_replicas}"
        )
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "The multi_worker strategy reads the cluster from the TF_CONFIG environment variable, "
                "which is not set. "
                "Received: strategy='multi_worker', TF_CONFIG=None"
            )
        check_tf_config(os.environ["TF_CONFIG"])
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if gpus:
        devices = [f"/gpu:{i}" for i in range(num_replicas or len(gpus))]
        if len(devices) > len(gpus):
            raise ValueError(f"Only {len(gpus)} GPUs are visible. Received: num_replicas={num_replicas}")
        return tf.distribute.MirroredStrategy(devices)
    count = max(num_replicas, 1)
    configure_cpu_replicas(count)
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(count)])


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Hosts in the run (1 unless multi-worker): chief and worker tasks of the public cluster resolver."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return max(1, sum(len(spec.get(job, ())) for job in ("chief", "worker")))


# ---------------------------------------------------------------- optimizer


def decay_variables(model: keras.Model) -> tuple[list, list]:
    """(decayed, not decayed) trainable variables, as timm's ``add_weight_decay``: 1-D parameters
    (norms), biases and the models' ``no_weight_decay()`` set (position embeddings) are exempt."""
    decay, no_decay = [], []
    for v in model.trainable_variables:
        name = v.path.lower()
        if len(v.shape) <= 1 or name.endswith("bias") or "pos_embed" in name or "position" in name:
            no_decay.append(v)
        else:
            decay.append(v)
    return decay, no_decay


def build_optimizer(recipe: Recipe, model: keras.Model, *, mixed_precision: str) -> keras.optimizers.Optimizer:
    """timm's optimizer from ``recipe.optim`` (torch update rules); wrapped for loss scaling under mixed_float16."""
    o = recipe.optim
    clip = {"global_clipnorm": o.clip_norm} if o.clip_norm > 0 else {}
    if o.name == "sgd":
        optimizer = optim_lib.TorchSGD(learning_rate=0.0, momentum=o.momentum, nesterov=o.nesterov,
                                       weight_decay=o.weight_decay, **clip)
    else:
        optimizer = optim_lib.TorchAdamW(learning_rate=0.0, weight_decay=o.weight_decay, beta_1=o.beta_1,
                                         beta_2=o.beta_2, epsilon=o.epsilon, **clip)
    _, no_decay = decay_variables(model)
    optimizer.exclude_from_weight_decay(var_list=no_decay)
    if mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    return optimizer


def lr_at(recipe: Recipe, step: tf.Tensor, steps_per_epoch: int) -> tf.Tensor:
    """In-graph twin of :func:`recipes.learning_rate` (timm's schedulers)."""
    s = recipe.schedule
    peak = recipes_lib.scaled_lr(recipe)
    epoch = tf.cast(step, tf.float32) / steps_per_epoch
    if not s.per_step:
        epoch = tf.floor(epoch)
    t = tf.maximum(epoch - s.lag_epochs, 0.0)
    warm = s.warmup_init_lr + (peak - s.warmup_init_lr) * t / max(s.warmup_epochs, 1e-8)
    if s.decay == "step":
        after = peak * tf.pow(s.step_factor, tf.floor(t / s.step_epochs))
    elif s.decay == "cosine":
        after = tf.where(t < s.epochs, s.min_lr + 0.5 * (peak - s.min_lr) * (1 + tf.cos(math.pi * t / s.epochs)),
                         s.min_lr)
    else:
        after = tf.constant(peak, tf.float32)
    return tf.where(t < s.warmup_epochs, warm, after)


# ---------------------------------------------------------------- trainer


class Trainer:
    """Train and eval loops of one model under one strategy (create it inside ``strategy.scope()``).

    Args:
        strategy: tf.distribute.Strategy.
        model: keras.Model returning logits.
        optimizer: keras optimizer, already built.
        recipe: Recipe.
        steps_per_epoch: int.
        jit_compile: bool. XLA-compile the forward/backward pass (not the all-reduce and update).
    """

    def __init__(self, *, strategy: tf.distribute.Strategy, model: keras.Model, optimizer, recipe: Recipe,
                 steps_per_epoch: int, jit_compile: bool = False) -> None:
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.recipe = recipe
        self.steps_per_epoch = steps_per_epoch
        self.global_batch = recipe.data.global_batch_size
        self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.skipped_files = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_files",
                                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.evaluated_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="evaluated_epoch",
                                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.epoch_skipped_files = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_skipped_files",
                                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.ema_decay = recipe.model.ema_decay
        self.ema = [tf.Variable(w.value, trainable=False, name=f"ema_{i}") for i, w in enumerate(model.weights)
                    ] if self.ema_decay > 0 else []
        # Keras 3 updates BatchNorm moving statistics per replica (MirroredVariables with no
        # aggregation), so replicas drift apart; averaging them after every step keeps them
        # identical (and equals updating with the replicas' mean batch statistics).
        # Synchronized BN computes identical statistics on every replica already.
        self._replica_stats = [
            v for v in model.non_trainable_variables if v.dtype in ("float32", "float16", "bfloat16", "float64")
        ] if strategy.num_replicas_in_sync > 1 and not recipe.model.sync_bn else []
        self._grads = (tf.function(self._compute_grads, jit_compile=True, autograph=False) if jit_compile
                       else self._compute_grads)
        self._start = 0.0
        self.train_loop = tf.function(self._train_loop, autograph=False)
        self.evaluator = Evaluator(strategy, model)

    # -- train

    def _compute_grads(self, images, targets):
        num_replicas = self.strategy.num_replicas_in_sync
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(images, training=True), tf.float32)
            per_example = tf.nn.softmax_cross_entropy_with_logits(targets, logits)
            loss = tf.reduce_sum(per_example) / self.global_batch
            total = loss
            if self.model.losses:
                total = total + tf.add_n(self.model.losses) / num_replicas
            scaled = self.optimizer.scale_loss(total)
        grads = tape.gradient(scaled, variables)
        return loss, logits, grads

    def _replica_step(self, batch):
        loss, logits, grads = self._grads(batch["images"], batch["targets"])
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        if self._replica_stats:
            context = tf.distribute.get_replica_context()
            stats = [tf.identity(v.value) for v in self._replica_stats]
            means = context.all_reduce(tf.distribute.ReduceOp.MEAN, stats)
            for v, mean in zip(self._replica_stats, means, strict=True):
                v.assign(mean)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), batch["labels"]), tf.float32))
        return loss, correct, tf.reduce_sum(tf.cast(batch["skipped"], tf.int64))

    def _train_loop(self, iterator, num_steps: tf.Tensor):
        """Runs ``num_steps`` steps; returns (summed mean loss, correct, skipped). Traced once, without AutoGraph
        (an explicit ``tf.while_loop``: converting the step's code costs ~1 CPU-s per process)."""
        strategy = self.strategy
        sum_ = tf.distribute.ReduceOp.SUM

        def step(i, loss_sum, correct, skipped):
            self.optimizer.learning_rate = lr_at(self.recipe, self.global_step, self.steps_per_epoch)
            loss, c, s = strategy.run(self._replica_step, args=(next(iterator),))
            loss_sum += strategy.reduce(sum_, loss, axis=None)
            correct += strategy.reduce(sum_, c, axis=None)
            skipped += strategy.reduce(sum_, s, axis=None)
            if self.ema:
                d = self.ema_decay
                for e, w in zip(self.ema, self.model.weights, strict=True):
                    e.assign(d * e + (1 - d) * tf.cast(w.value, e.dtype))
            self.global_step.assign_add(1)
            return i + 1, loss_sum, correct, skipped

        start = (tf.constant(0, num_steps.dtype), tf.constant(0.0), tf.constant(0.0), tf.constant(0, tf.int64))
        _, loss_sum, correct, skipped = tf.while_loop(lambda i, *_: i < num_steps, step, start)
        self.skipped_files.assign_add(skipped)
        self.epoch_skipped_files.assign_add(skipped)
        return loss_sum, correct, skipped

    def train_loop_begin(self) -> None:
        """Eager: starts the timer of one inner loop."""
        self._start = time.perf_counter()

    def train_loop_end(self, outputs, num_steps: int) -> dict:
        """Eager: metrics of the inner loop just run (loss, train top-1, images/s, lr, skipped)."""
        loss_sum, correct, skipped = (float(x) for x in outputs)
        seconds = time.perf_counter() - self._start
        images = num_steps * self.global_batch
        step = int(self.global_step.numpy())
        return {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "loss": loss_sum / num_steps,
            "train_top1": correct / images,
            "lr": recipes_lib.learning_rate(self.recipe, step - 1, self.steps_per_epoch),
            "images_per_sec": images / max(seconds, 1e-9),
            "skipped": int(skipped),
        }

    # -- eval

    def evaluate(self, dataset_fn, num_steps: int, *, use_ema: bool = False) -> dict:
        """Top-1/top-5/loss over the eval stream (the EMA weights if ``use_ema``)."""
        if use_ema and not self.ema:
            raise ValueError("EMA evaluation needs model.ema_decay > 0. Received: use_ema=True, ema_decay=0")
        with self.ema_weights() if use_ema else contextlib.nullcontext():
            return self.evaluator.evaluate(dataset_fn, num_steps)

    @contextlib.contextmanager
    def ema_weights(self):
        """The model holds the EMA weights inside the block and its own weights again after it (also on errors)."""
        if not self.ema:
            raise ValueError("The EMA weights need model.ema_decay > 0. Received: ema_decay=0")
        backup = [tf.identity(w.value) for w in self.model.weights]
        for w, e in zip(self.model.weights, self.ema, strict=True):
            w.assign(tf.cast(e, w.dtype))
        try:
            yield self.model
        finally:
            for w, b in zip(self.model.weights, backup, strict=True):
                w.assign(b)


class Evaluator:
    """Top-1 / top-5 / loss of a model over a distributed eval stream (padding has weight 0)."""

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model) -> None:
        self.strategy = strategy
        self.model = model
        self.eval_loop = tf.function(self._eval_loop, autograph=False)  # a tf.while_loop
        self._dataset = None  # (dataset_fn, its distributed dataset) of the last evaluate call
        # Eval steps done (a heartbeat the preemption watchdog of train.py reads from another thread).
        self.steps_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="eval_steps_done",
                                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def _eval_replica(self, batch):
        logits = tf.cast(self.model(batch["images"], training=False), tf.float32)
        labels = batch["labels"]
        w = batch["weights"]
        k = min(5, logits.shape[-1])
        top1 = tf.cast(tf.equal(tf.argmax(logits, -1), labels), tf.float32)
        top5 = tf.cast(tf.math.in_top_k(tf.cast(labels, tf.int32), logits, k), tf.float32)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        return (tf.reduce_sum(top1 * w), tf.reduce_sum(top5 * w), tf.reduce_sum(loss * w), tf.reduce_sum(w),
                tf.reduce_sum(tf.cast(batch["skipped"], tf.float32)))

    def _eval_loop(self, iterator, num_steps: tf.Tensor):
        def step(i, *totals):
            values = self.strategy.run(self._eval_replica, args=(next(iterator),))
            totals = [t + self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                      for t, v in zip(totals, values, strict=True)]
            self.steps_done.assign_add(1)
            return (i + 1, *totals)

        start = (tf.constant(0, num_steps.dtype), *[tf.constant(0.0)] * 5)
        return list(tf.while_loop(lambda i, *_: i < num_steps, step, start)[1:])

    def evaluate(self, dataset_fn, num_steps: int) -> dict:
        """Runs ``num_steps`` global eval steps of ``dataset_fn``'s stream; returns the metrics."""
        if self._dataset is None or self._dataset[0] is not dataset_fn:  # built once per stream: each epoch re-reads it
            self._dataset = (dataset_fn, self.strategy.distribute_datasets_from_function(dataset_fn))
        iterator = iter(self._dataset[1])
        try:
            totals = self.eval_loop(iterator, tf.constant(num_steps))
        except BaseException as error:  # the pipeline ends now, not when the caller's traceback is collected
            drop_from_frames(error, iterator)
            del iterator
            raise
        del iterator
        top1, top5, loss, count, skipped = (float(x) for x in totals)
        if count == 0:
            raise ValueError(
                f"The validation data yielded no decodable image ({int(skipped)} files skipped); an accuracy over "
                f"zero images means nothing. Check the files. Received: val_examples=0"
            )
        return {"val_top1": top1 / count, "val_top5": top5 / count, "val_loss": loss / count,
                "val_examples": int(count), "val_skipped": int(skipped)}


def _reaches(roots, obj, depth: int) -> bool:
    """Whether ``obj`` is among ``roots`` or the objects they refer to, up to ``depth`` references away
    (frames, modules, classes and code are not followed)."""
    level, seen = list(roots), set()
    for _ in range(depth + 1):
        following = []
        for value in level:
            if value is obj:
                return True
            if id(value) in seen or isinstance(value, _NOT_FOLLOWED):
                continue
            seen.add(id(value))
            following.extend(gc.get_referents(value))
        level = following
    return False


_NOT_FOLLOWED = (types.FrameType, types.ModuleType, type, types.CodeType, types.FunctionType, str, bytes)


def drop_from_frames(error: BaseException, obj) -> None:
    """Clears the locals of the finished frames that ``error`` keeps alive and that hold ``obj``.

    An exception keeps its frames (those of its traceback, of its chained exceptions, and their callers up
    to the frame that handles it) with their locals for as long as the caller keeps the exception. An input
    iterator among them keeps its tf.data pipeline (threads, buffers) running until the exception is
    garbage-collected, and the iterator's destructor (which waits for those threads) then runs in whatever
    code triggered the collection. Call this from the ``except`` clause that re-raises, then ``del`` the
    name there: the handling frame is still executing and cannot be cleared. Frames that do not hold ``obj``
    (within three references: arguments tuples, bound arguments) keep their locals for post-mortem
    debugging; the traceback's lines stay.
    """
    executing, frame = set(), sys._getframe(1)  # noqa: SLF001 (the caller and its callers: never read, see below)
    while frame is not None:
        executing.add(id(frame))
        frame = frame.f_back
    frames, seen_errors, pending = {}, set(), [error]
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen_errors:
            continue
        seen_errors.add(id(exc))
        pending += [exc.__cause__, exc.__context__]
        tb = exc.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            while frame is not None and id(frame) not in executing and id(frame) not in frames:
                frames[id(frame)] = frame
                frame = frame.f_back
            tb = tb.tb_next
    for frame in frames.values():
        # Python < 3.13: reading f_locals stores a snapshot dict in the frame, which clear() leaves alone;
        # reading it again afterwards drops the cleared names from it. (Executing frames, the caller's
        # among them, are never read: no snapshot of theirs may outlive a later ``del``.)
        if _reaches(frame.f_locals.values(), obj, depth=3):
            with contextlib.suppress(RuntimeError):  # still executing
                frame.clear()
            frame.f_locals  # noqa: B018


# ---------------------------------------------------------------- host-side logging


def format_seconds(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """A one-line progress bar with loss, images/s and ETA (redrawn in place on a terminal)."""

    def __init__(self, total_steps: int, *, enabled: bool = True, stream=None) -> None:
        self.total = total_steps
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._rate = None

    def update(self, metrics: dict, steps_per_epoch: int, epochs: int, global_batch: int) -> None:
        """Redraws the line from one inner loop's metrics (smoothed images/s for the ETA)."""
        if not self.enabled:
            return
        step = metrics["step"]
        rate = metrics["images_per_sec"]
        self._rate = rate if self._rate is None else 0.7 * self._rate + 0.3 * rate
        eta = (self.total - step) * global_batch / max(self._rate, 1e-9)
        frac = step / max(self.total, 1)
        bar = "=" * int(20 * frac) + ">" + "." * (20 - int(20 * frac))
        epoch = min((step - 1) // steps_per_epoch + 1, epochs)
        line = (f"epoch {epoch}/{epochs} [{bar[:21]}] step {step}/{self.total} loss {metrics['loss']:.4f} "
                f"lr {metrics['lr']:.3g} {rate:.0f} img/s ETA {format_seconds(eta)}")
        if metrics.get("skipped"):
            line += f" skipped {metrics['skipped']}"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def newline(self) -> None:
        """Ends the in-place line before other output."""
        if self.enabled and self.tty:
            self.stream.write("\n")


def _scalar_metadata() -> bytes:
    """The "scalars" plugin tag: events load as scalars (tf.summary.scalar needs the tensorboard package)."""
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    return metadata.SerializeToString()


_SCALAR_METADATA = _scalar_metadata()


class MetricsLogger:
    """JSON lines (``metrics.jsonl``) and TensorBoard scalars (``tb/``); writes nothing when not chief.

    Raises:
        ValueError: ``tb`` cannot hold TensorBoard logs (a file there, ...): one line naming it.
    """

    def __init__(self, model_dir: str, *, enabled: bool) -> None:
        self.enabled = enabled
        self.path = os.path.join(model_dir, METRICS_FILE)
        self._writer = None
        if enabled:
            folder = os.path.join(model_dir, "tb")
            try:
                self._writer = tf.summary.create_file_writer(folder)
            except tf.errors.OpError as error:
                raise ValueError(f"{folder} cannot hold the TensorBoard logs ({one_line(error)[:300]}); it must be "
                                 f"a folder: remove or rename it, or use a new model_dir. "
                                 f"Received: model_dir={model_dir!r}") from None

    def write(self, record: dict, *, kind: str) -> None:
        """Appends ``record`` (tagged ``kind``) to metrics.jsonl and its numbers to TensorBoard."""
        if not self.enabled:
            return
        record = {"kind": kind, "time": time.time(), **record}
        append_line(self.path, json.dumps(record))
        with self._writer.as_default(step=int(record.get("step", 0))):
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "time"):
                    tf.summary.write(f"{kind}/{key}", tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)
        self._writer.flush()


def open_for_append(path: str) -> int:
    """A descriptor appending to ``path`` (created if missing; :func:`lock.open_own_file`: a regular file with
    no other link, never through a symlink, never blocking).

    Raises:
        fileio.WriteError: one line naming the file and what it is instead (a symbolic link, a FIFO, ...) or why
            it cannot be opened.
    """
    try:
        return lock_lib.open_own_file(path, os.O_WRONLY | os.O_APPEND)
    except OSError as error:
        hint = ("; it must be a regular file of this run alone: replace it by a copy or remove it"
                if isinstance(error, lock_lib.NotOwnFileError) else "")
        raise fileio.WriteError(f"cannot append to {path} ({error.strerror or error}){hint}") from None


def append_line(path: str, line: str) -> None:
    """Appends one line to ``path`` whole or not at all: a failed write (full disk) is cut off again.

    Raises:
        fileio.WriteError: one line naming the file (also a symlink, FIFO or folder there: see
            :func:`open_for_append`); the lines before are intact.
    """
    data = (line + "\n").encode()
    fd = open_for_append(path)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as error:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise fileio.WriteError(f"cannot append to {path} ({errno.errorcode.get(error.errno or 0, 'OSError')}: "
                                    f"{error.strerror or error}); the earlier records are intact") from None
    finally:
        os.close(fd)


def _after(record: dict, step: int, evaluated_epoch: int) -> bool:
    """True for a record a run resumed at ``step`` (its last eval: epoch ``evaluated_epoch``) writes again."""
    at = record.get("step")
    if not is_int(at):
        return False
    if record.get("kind") == "final":
        return at >= step  # written after everything at its step, and again when the resumed run completes
    if record.get("kind") == "eval":
        epoch = record.get("epoch")
        return at > step or (is_int(epoch) and epoch > evaluated_epoch)
    return at > step


def _lines_backwards(fd: int, size: int, chunk: int = 1 << 20):
    """(offset, line without its newline) of the file's lines, last first; stops at a line over the limit."""
    pos, rest = size, b""
    while pos > 0:
        n = min(chunk, pos)
        pos -= n
        lines = (os.pread(fd, n, pos) + rest).split(b"\n")
        rest = lines[0]  # may continue to the left
        offset = pos + len(rest) + 1
        found = []
        for line in lines[1:]:
            found.append((offset, line))
            offset += len(line) + 1
        yield from reversed(found)
        if len(rest) > MAX_METRICS_LINE:
            return
    yield 0, rest


def cut_metrics(model_dir: str, step: int, evaluated_epoch: int) -> int:
    """Cuts from the end of ``metrics.jsonl`` the records a run resumed at ``step`` writes again; returns how many.

    A run killed without SIGTERM (SIGKILL, OOM, power loss) has appended records after its last checkpoint:
    the resumed run repeats those steps and evals, so without the cut each would appear twice (from two
    timelines). They are the file's last records (it is written in time order), so the file is read backwards
    only as far as the first record to keep, and truncated there: any size, one system call. A last line
    without its newline (an append torn by a power loss) is cut too: the next record would be glued to it.

    Raises:
        fileio.WriteError: the file cannot be opened or truncated (one line naming it).
    """
    path = os.path.join(model_dir, METRICS_FILE)
    if not os.path.lexists(path):
        return 0
    try:
        fd = lock_lib.open_own_file(path, os.O_RDWR)
    except OSError as error:
        raise fileio.WriteError(f"cannot update {path} ({error.strerror or error})") from None
    try:
        size = os.fstat(fd).st_size
        cut, dropped = size, 0
        for offset, line in _lines_backwards(fd, size):
            if not line.strip():
                cut = offset
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                record = None
            torn = offset + len(line) == size  # no newline after it
            if (isinstance(record, dict) and _after(record, step, evaluated_epoch)) or (record is None and torn):
                cut, dropped = offset, dropped + 1
                continue
            break
        if cut < size:
            os.ftruncate(fd, cut)
        elif size and os.pread(fd, 1, size - 1) != b"\n":  # a whole record torn just before its newline
            os.pwrite(fd, b"\n", size)
    except OSError as error:
        raise fileio.WriteError(f"cannot update {path} ({error.strerror or error})") from None
    finally:
        os.close(fd)
    return dropped


def read_metrics(model_dir: str, kind: str | None = None) -> list[dict]:
    """The records of ``model_dir/metrics.jsonl`` (of one ``kind``: train, eval, final).

    The file is read without blocking, at most :data:`MAX_METRICS_BYTES` and lines of at most
    :data:`MAX_METRICS_LINE` bytes.

    Raises:
        ValueError: naming the file (and line): not a regular file, too large, a line that is not a JSON record.
    """
    path = os.path.join(model_dir, METRICS_FILE)
    try:
        f = os.fdopen(safe_open.open_fd(path, limit=MAX_METRICS_BYTES), "rb")
    except FileNotFoundError:
        return []
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror or one_line(error)})") from None
    records = []
    with f:
        for number, line in enumerate(iter(lambda: f.readline(MAX_METRICS_LINE + 1), b""), start=1):
            if len(line) > MAX_METRICS_LINE:
                raise ValueError(f"{path} line {number} is longer than {MAX_METRICS_LINE} bytes")
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8", errors="replace"))
            except (json.JSONDecodeError, RecursionError) as error:
                why = getattr(error, "msg", "nested too deeply")
                raise ValueError(f"{path} line {number} is not a JSON record ({why})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path} line {number} is not a JSON object")
            records.append(record)
    return [r for r in records if kind is None or r.get("kind") == kind]
