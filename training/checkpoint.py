"""Checkpoints: ``tf.train.Checkpoint`` written as ``ckpt-<step>``, verified before a resume.

A checkpoint holds the model (weights and BatchNorm statistics), the optimizer (slots,
iteration count, loss scale), the EMA weights, the global step (the input position: the
epoch is ``step // steps_per_epoch`` and the batches already seen in it
``step % steps_per_epoch``), the last evaluated epoch and the counts of skipped files (in all, and in the current
epoch: with none, a resumed run skips the consumed files before decoding).

Resume order (as big_vision): the run's own newest intact checkpoint in
``model_dir/checkpoints``; else an explicit ``resume_from`` checkpoint; else pretrained
weights given to the model builder (``model.init_weights``); else the fresh initialisation.

Which checkpoint (:meth:`Checkpointer.choose`): every ``ckpt-N`` in the folder (the folder
is scanned; the ``checkpoint`` pointer file is only compared), newest first, is verified: its
``.index`` and every ``.data`` shard exist and are regular files (checked without blocking before
TensorFlow opens them: a FIFO there would hang it) and every tensor reads back with its stored CRC32C
(a truncated or zero-filled file fails). The first intact one is used; damaged ones are moved
to ``checkpoints/damaged/`` and one line says which were damaged and which is used. A pointer
that cannot be read is rewritten; one that is not a regular file (a folder, a FIFO: a folder
could not be replaced by the new pointer) is moved to ``checkpoints/damaged/`` first. Nothing
set aside overwrites an earlier file there (``name.1``, ``name.2``, ... instead). A folder
holding checkpoint files none of which is intact is an error unless the run asks for
``restart_from_scratch`` (then every old checkpoint is moved to
``checkpoints/before_restart/``): a run never silently starts again from step 0. Nor beside a
finished run's model: a folder with ``final/`` but no checkpoint is an error without
``restart_from_scratch``; with it, ``final/``, the EMA weights and ``metrics.jsonl`` are moved to
``model_dir/before_restart/`` (before the checkpoints), so nothing of the old run passes for the new one's.

Rotation is ours (not CheckpointManager's): after a save, only checkpoints older than the
newest ``keep`` are deleted, and the list starts from the verified folder, so an intact
checkpoint is never deleted while a newer one is damaged. Our own leftovers of an interrupted
save (``ckpt-N_temp*``, ``checkpoint.tmp*``, the pointer's temporary files) are removed at start.

Multi-worker: the chief decides and broadcasts the chosen step through a collective
(:func:`broadcast_from_chief`), so every worker restores the same checkpoint even if they saw
the folder at different moments. Every worker calls :meth:`Checkpointer.save` (saving reads
distributed variables collectively), but only the chief writes into ``model_dir``; other
workers write to a private temporary folder that is deleted right away.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence

import tensorflow as tf

from pf_keras import fileio, safe_open
from pf_keras.cli import one_line
from pf_keras_training import bundle_check

POINTER = "checkpoint"
MAX_POINTER_BYTES = 1 << 16  # ours holds a few lines
DAMAGED = "damaged"
BEFORE_RESTART = "before_restart"
_CKPT = re.compile(r"^ckpt-(\d+)\.(index|data-(\d{5})-of-(\d{5}))$")
_STRAY = re.compile(r"^(ckpt-\d+_temp.*|checkpoint\.tmp.*|\." + re.escape(POINTER + fileio.TEMP_MARK) + r".*)$")
NONE = 0  # broadcast codes: step + 1 for ckpt-<step>, NONE for "no checkpoint", ERROR if the chief failed
ERROR = -1


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the single host of a local strategy and on the chief (or worker 0) of a multi-worker run."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def broadcast_from_chief(strategy: tf.distribute.Strategy, value: int) -> int:
    """The chief's ``value`` on every worker (a SUM collective where other workers add 0); local runs: ``value``."""
    workers = getattr(strategy.extended, "_num_workers", 1) or 1
    if workers <= 1:
        return value
    mine = tf.constant(value if is_chief(strategy) else 0, tf.int64)

    @tf.function(autograph=False)
    def reduce(x):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(x)), axis=None)

    local_replicas = strategy.num_replicas_in_sync // workers  # each of the chief's replicas adds ``value``
    return int(reduce(mine).numpy()) // local_replicas


def list_checkpoints(directory: str) -> dict[int, list[str]]:
    """``{step: [file names]}`` of every ``ckpt-<step>.*`` file in ``directory``."""
    found: dict[int, list[str]] = {}
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            match = _CKPT.match(name)
            if match:
                found.setdefault(int(match.group(1)), []).append(name)
    return found


def _file_problem(path: str, label: str) -> str | None:
    """None if ``path`` is a regular file (opened without blocking), else why not ("its <label> file ...")."""
    try:
        os.close(safe_open.open_fd(path))
    except FileNotFoundError:
        return f"its {label} file is missing"
    except OSError as error:
        return f"its {label} file cannot be read ({error.strerror or one_line(error)})"
    return None


def verify(prefix: str) -> str | None:
    """None if the checkpoint ``prefix`` is intact, else why not (one line).

    Intact: the ``.index`` and every ``.data`` shard it names exist and are regular files (checked before
    TensorFlow opens any: a FIFO would block it), the index and its entries pass
    :func:`bundle_check.problem` (nothing TensorFlow's reader would abort on or over-allocate for), and every
    tensor reads back (TensorFlow checks each one against the CRC32C stored in the index).
    """
    folder, base = os.path.split(prefix)
    index = prefix + ".index"
    problem = _file_problem(index, ".index")
    if problem:
        return problem
    if os.path.getsize(index) == 0:
        return "its .index file is empty"
    shards: dict[int, str] = {}
    totals: set[int] = set()
    for name in os.listdir(folder or "."):
        match = _CKPT.match(name)
        if match and name.startswith(base + ".data-") and match.group(1) == base.split("-")[-1]:
            shards[int(match.group(3))] = match.group(2)
            totals.add(int(match.group(4)))
    if not shards:
        return "its .data file is missing"
    if len(totals) != 1 or sorted(shards) != list(range(totals.pop())):
        return f"its .data shards are incomplete ({len(shards)} present)"
    for suffix in shards.values():
        problem = _file_problem(f"{prefix}.{suffix}", f".{suffix}")
        if problem:
            return problem
    # a crafted index can abort TensorFlow's reader or make it allocate gigabytes: checked in Python first
    problem = bundle_check.problem(prefix, {shard: f"{prefix}.{suffix}" for shard, suffix in shards.items()})
    if problem:
        return problem
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as error:  # noqa: BLE001 (the reader raises IndexError, DataLossError, ...: all mean damage)
        return one_line(error)[:300]
    return None


def read_pointer(directory: str) -> tuple[int | None, str | None]:
    """(step named by the ``checkpoint`` pointer file, problem) — the problem is None when it names a checkpoint."""
    path = os.path.join(directory, POINTER)
    try:
        text = safe_open.read_bytes(path, MAX_POINTER_BYTES).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None, "the checkpoint pointer file is missing"
    except OSError as error:  # a FIFO, a folder, too large, ...: treated as garbled (rewritten)
        return None, f"the checkpoint pointer file cannot be read ({error.strerror or one_line(error)})"
    match = re.search(r'^model_checkpoint_path:\s*"(?:.*/)?ckpt-(\d+)"\s*$', text, re.MULTILINE)
    if not match:
        return None, "the checkpoint pointer file is garbled"
    return int(match.group(1)), None


def _free_path(folder: str, name: str) -> str:
    """``folder/name``, else the first free ``folder/name.N``: nothing set aside overwrites an earlier file."""
    path, n = os.path.join(folder, name), 0
    while os.path.lexists(path):
        n += 1
        path = os.path.join(folder, f"{name}.{n}")
    return path


class Checkpointer:
    """Saves, verifies and restores the training state of one run.

    Args:
        model_dir: str. The run's folder; checkpoints go to ``model_dir/checkpoints``.
        strategy: tf.distribute.Strategy. Decides who writes.
        keep: int. Checkpoints kept. Defaults to 3.
        **objects: trackables to save (model, optimizer, ema, step, ...).
    """

    def __init__(self, model_dir: str, strategy: tf.distribute.Strategy, *, keep: int = 3, **objects) -> None:
        self.chief = is_chief(strategy)
        self.strategy = strategy
        self.directory = os.path.join(model_dir, "checkpoints")
        self.checkpoint = tf.train.Checkpoint(**objects)
        _ = self.checkpoint.save_counter  # created now, so write() saves it and restore() finds it
        self._keep = max(keep, 1)
        self._kept: list[int] = []  # steps of the checkpoints in the folder (intact or assumed so), oldest first

    def prefix(self, step: int) -> str:
        """The path prefix of checkpoint ``ckpt-<step>``."""
        return os.path.join(self.directory, f"ckpt-{step}")

    @property
    def latest(self) -> str | None:
        """Path prefix of the newest checkpoint this run knows (after :meth:`choose` or a save), or None."""
        return self.prefix(self._kept[-1]) if self._kept else None

    def clean_strays(self) -> list[str]:
        """Removes our own leftovers of interrupted saves (``ckpt-N_temp*``, pointer temporaries); returns them."""
        removed = []
        if os.path.isdir(self.directory):
            for name in sorted(os.listdir(self.directory)):
                if _STRAY.match(name):
                    path = os.path.join(self.directory, name)
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.remove(path)
                    removed.append(name)
        return removed

    def choose(self, *, restart_from_scratch: bool = False, finished: Sequence[str] = (),
               history: Sequence[str] = ()) -> tuple[str | None, str]:
        """Picks the checkpoint to resume from (chief: verifies the folder; everyone: the chief's choice).

        Args:
            restart_from_scratch: bool. Set every old checkpoint aside (``checkpoints/before_restart/``) and start
                afresh; ``finished`` and ``history`` go to ``model_dir/before_restart/``.
            finished: names in ``model_dir`` that mark a finished run's model (``final/``, ...). A run that does not
                resume from this folder's checkpoints must not start beside them (a reader would take the old
                model for the new run's): an error without ``restart_from_scratch``, set aside with it.
            history: names in ``model_dir`` of the old run's records (``metrics.jsonl``), set aside on a restart.

        Returns:
            (prefix or None, a one-line note: what was damaged and what is used; "" if nothing to say).

        Raises:
            ValueError: if the folder holds checkpoint files but none is intact, or no checkpoint but a
                ``finished`` output, and ``restart_from_scratch`` is False.
        """
        code, note, error = NONE, "", None
        if self.chief:
            try:
                code, note = self._choose_on_chief(restart_from_scratch, finished, history)
            except ValueError as e:  # still broadcast, so that the other workers stop too
                code, error = ERROR, e
        code = broadcast_from_chief(self.strategy, code)
        if error is not None:
            raise error
        if code == ERROR:
            raise ValueError(f"The chief found no usable checkpoint in {self.directory}; see its log. "
                             f"Received: model_dir={os.path.dirname(self.directory)!r}")
        if code == NONE:
            return None, note
        step = code - 1
        if not self.chief:
            self._kept = [step]
        return self.prefix(step), note

    def _choose_on_chief(self, restart_from_scratch: bool, finished: Sequence[str],
                         history: Sequence[str]) -> tuple[int, str]:
        self.clean_strays()
        found = list_checkpoints(self.directory)
        pointed, pointer_problem = read_pointer(self.directory)
        moved = ""  # the note on a pointer that is not a regular file, set aside
        if self._set_aside_pointer():
            pointer_problem = moved = f"{pointer_problem} (moved to {os.path.join(self.directory, DAMAGED)})"
        model_dir = os.path.dirname(self.directory)
        outputs = [name for name in finished if os.path.lexists(os.path.join(model_dir, name))]
        if restart_from_scratch and (found or outputs):
            old = outputs + [name for name in history if os.path.lexists(os.path.join(model_dir, name))]
            self._set_aside_outputs(old)  # first: a kill after it leaves checkpoints without final/, a resumable run
            self._set_aside(found, BEFORE_RESTART)
            notes = [f"{len(found)} old checkpoint(s) to {os.path.join(self.directory, BEFORE_RESTART)}" * bool(found),
                     f"{', '.join(old)} to {os.path.join(model_dir, BEFORE_RESTART)}" * bool(old)]
            return NONE, f"restart_from_scratch: moved {' and '.join(note for note in notes if note)}"
        if not found:
            if outputs:
                raise ValueError(
                    f"{model_dir} holds a finished run's model ({', '.join(outputs)}) but no checkpoint to resume: "
                    f"a run started there would leave it beside the new one. Pass --restart_from_scratch (the old "
                    f"outputs are set aside in {os.path.join(model_dir, BEFORE_RESTART)}), or use another "
                    f"--model_dir. Received: model_dir={model_dir!r}"
                )
            return NONE, moved
        damaged: list[str] = []
        chosen = None
        for step in sorted(found, reverse=True):
            reason = verify(self.prefix(step))
            if reason is None:
                chosen = step
                break
            damaged.append(f"ckpt-{step} ({reason})")
        problems = list(damaged)
        if pointer_problem:
            problems.insert(0, pointer_problem)
        elif pointed not in found:
            problems.insert(0, f"the checkpoint pointer names ckpt-{pointed}, which is missing")
        elif chosen is not None and pointed < chosen:
            problems.insert(0, f"the checkpoint pointer names ckpt-{pointed}, an older one")
        if chosen is None:
            raise ValueError(
                f"{self.directory} holds checkpoint files but none is intact: {'; '.join(problems)}. "
                f"Pass --restart_from_scratch to start again from step 0 (the old files are set aside), "
                f"or use another --model_dir. Received: model_dir={os.path.dirname(self.directory)!r}"
            )
        self._set_aside({s: found[s] for s in found if s > chosen}, DAMAGED)
        self._kept = sorted(s for s in found if s <= chosen)
        if problems:
            self._write_pointer()
            aside = f" (moved to {os.path.join(self.directory, DAMAGED)})" if damaged else ""
            return chosen + 1, f"{'; '.join(problems)}{aside}; resuming from ckpt-{chosen}, the newest intact one"
        return chosen + 1, ""

    def _set_aside(self, found: dict[int, list[str]], folder: str) -> None:
        if not found:
            return
        target = os.path.join(self.directory, folder)
        os.makedirs(target, exist_ok=True)
        for step in sorted(found):
            for name in sorted(found[step], key=lambda n: not n.endswith(".index")):  # the .index first
                os.replace(os.path.join(self.directory, name), _free_path(target, name))

    def _set_aside_outputs(self, names: Sequence[str]) -> None:
        if not names:
            return
        model_dir = os.path.dirname(self.directory)
        target = os.path.join(model_dir, BEFORE_RESTART)
        os.makedirs(target, exist_ok=True)
        for name in names:
            os.replace(os.path.join(model_dir, name), _free_path(target, name))

    def _set_aside_pointer(self) -> bool:
        """Moves a pointer that is not a regular file (a folder, a FIFO) to ``damaged/``; True if it did."""
        path = os.path.join(self.directory, POINTER)
        if not os.path.lexists(path) or os.path.isfile(path):
            return False
        target = os.path.join(self.directory, DAMAGED)
        os.makedirs(target, exist_ok=True)
        os.replace(path, _free_path(target, POINTER))
        return True

    def restore(self, path: str) -> None:
        """Restores every saved object from ``path`` (a checkpoint prefix).

        Raises:
            ValueError: if the checkpoint cannot be read or does not fit this run's objects.
        """
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
        except Exception as error:  # noqa: BLE001 - also a damaged object graph: IndexError, DecodeError, TypeError
            raise ValueError(
                f"The checkpoint {path} does not fit this run (another model, optimizer or precision?): "
                f"{one_line(error)[:400]}. Received: checkpoint={path!r}"
            ) from None

    def save(self, step: int) -> str | None:
        """Writes ``ckpt-<step>``, then the pointer, then deletes the oldest beyond ``keep``; returns the path
        on the chief, None elsewhere.

        Raises:
            fileio.WriteError: if the disk is full (or another OS error); the partial files are removed and
                the previous checkpoints and pointer are intact.
        """
        if not self.chief:
            tmp = tempfile.mkdtemp(prefix="pf_keras_worker_ckpt_")
            try:
                self.checkpoint.write(os.path.join(tmp, f"ckpt-{step}"))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return None
        os.makedirs(self.directory, exist_ok=True)
        prefix = self.prefix(step)
        existed = step in self._kept
        try:
            self.checkpoint.write(prefix)
        except (tf.errors.OpError, OSError) as error:
            if not existed:  # never delete a checkpoint that was intact before this save
                for name in list_checkpoints(self.directory).get(step, []):
                    os.remove(os.path.join(self.directory, name))
            self.clean_strays()
            previous = f"the previous checkpoint {self.latest} is intact" if self._kept else "no earlier checkpoint"
            raise fileio.WriteError(f"cannot write checkpoint {prefix} ({one_line(error)[:300]}); {previous}") from None
        self._kept = [s for s in self._kept if s != step] + [step]
        self._write_pointer()
        while len(self._kept) > self._keep:
            old = self._kept.pop(0)
            for name in sorted(list_checkpoints(self.directory).get(old, []), key=lambda n: not n.endswith(".index")):
                os.remove(os.path.join(self.directory, name))
        return prefix

    def _write_pointer(self) -> None:
        if not self._kept:
            return
        lines = [f'model_checkpoint_path: "ckpt-{self._kept[-1]}"']
        lines += [f'all_model_checkpoint_paths: "ckpt-{s}"' for s in self._kept[-self._keep:]]
        fileio.write_text(os.path.join(self.directory, POINTER), "\n".join(lines) + "\n")
