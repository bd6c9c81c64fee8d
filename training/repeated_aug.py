"""Repeated augmentation (DeiT's ``RASampler``) on a host's stream of encoded examples.

DeiT's ``RASampler(num_repeats=3)``: each epoch shuffles the dataset, repeats every index 3
times in a row and deals the list round-robin to the ``R`` processes (position ``p`` goes to
process ``p % R``), so the three copies of an image go to different GPUs, each augmented
independently; every process stops after about ``N / R`` samples, so an epoch keeps its length
and sees about a third of the distinct images.

:func:`repeat_for_replicas` does this on one host's shuffled stream for its ``L`` local
replicas: the stream is repeated ``repeats`` times element by element, and in every chunk of
``L x b`` elements (``b`` = per-replica batch) position ``p`` goes to local replica ``p % L``,
slot ``p // L``; the output lists replica 0's batch, then replica 1's, ..., which is the
order in which ``distribute_datasets_from_function`` hands batches to the local replicas. With
all replicas on one host (the published runs: 4 GPUs, one node) this is RASampler's
assignment exactly; across hosts the copies stay on the host whose shard holds the file.
It is a pure function of the input stream, so the pipeline stays deterministic and resumable
(every copy has its own stream position, hence its own augmentation seed).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def replica_order(local_replicas: int, per_replica_batch: int) -> np.ndarray:
    """Chunk positions in output order: replica ``j``'s batch holds positions ``j, j + L, j + 2L, ...``."""
    slots = np.arange(per_replica_batch)[None, :] * local_replicas + np.arange(local_replicas)[:, None]
    return slots.reshape(-1)


def repeat_for_replicas(ds: tf.data.Dataset, repeats: int, local_replicas: int,
                        per_replica_batch: int) -> tf.data.Dataset:
    """``ds`` with every element ``repeats`` times, the copies dealt round-robin to the local replicas.

    Args:
        ds: tf.data.Dataset. The host's (shuffled, repeating) stream.
        repeats: int. Copies per element (DeiT: 3); 1 returns ``ds``.
        local_replicas: int. Replicas fed by this host.
        per_replica_batch: int. Batch size of one replica.
    """
    if repeats < 1 or local_replicas < 1 or per_replica_batch < 1:
        raise ValueError(f"repeats, local_replicas and per_replica_batch must be >= 1. Received: repeats={repeats}, "
                         f"local_replicas={local_replicas}, per_replica_batch={per_replica_batch}")
    if repeats == 1:
        return ds
    ds = _untuple(ds.flat_map(lambda *e: tf.data.Dataset.from_tensors(e).repeat(repeats)))
    if local_replicas == 1:
        return ds
    order = tf.constant(replica_order(local_replicas, per_replica_batch), tf.int64)
    ds = ds.batch(local_replicas * per_replica_batch, drop_remainder=True)
    ds = ds.map(lambda *e: tf.nest.map_structure(lambda x: tf.gather(x, order), e))
    return _untuple(ds.unbatch())


def _untuple(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Undoes the 1-tuple that ``flat_map(lambda *e: from_tensors(e))`` puts around single-component elements."""
    spec = ds.element_spec
    if isinstance(spec, tuple) and len(spec) == 1:
        return ds.map(lambda e: e)
    return ds
