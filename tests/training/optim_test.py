"""TorchSGD's fused momentum kernel against torch's update rule written out in NumPy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pf_keras_training import optim


def _torch_sgd(w, grads, lrs, mu, wd, nesterov):
    """torch.optim.SGD(momentum=mu, nesterov, weight_decay=wd) in float64, step by step."""
    w = w.astype(np.float64)
    buf = None
    for g, lr in zip(grads, lrs, strict=True):
        g = g + wd * w
        buf = g.copy() if buf is None else mu * buf + g
        w = w - lr * (g + mu * buf if nesterov else buf)
    return w


class _Steps(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate of step i is ``values[i]``."""

    def __init__(self, values):
        self.values = values

    def __call__(self, step):
        return tf.gather(tf.constant(self.values, tf.float32), step)


def _run(strategy, w0, grads, lrs, *, mu, wd, nesterov, fused=True, monkeypatch=None):
    if not fused:
        monkeypatch.setattr(optim, "_fused_momentum", lambda *args: False)
    with strategy.scope():
        var = tf.Variable(w0)
        opt = optim.TorchSGD(learning_rate=_Steps(lrs), momentum=mu, nesterov=nesterov, weight_decay=wd)
        opt.build([var])

    @tf.function
    def step(g):
        strategy.run(lambda: opt.apply([g / strategy.num_replicas_in_sync], [var]))

    for g in grads:
        step(tf.constant(g))
    return var.numpy(), step


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("strategy_name", ["default", "mirrored"])
def test_fused_step_is_torchs_rule(nesterov, strategy_name, mirrored_strategy):
    strategy = mirrored_strategy if strategy_name == "mirrored" else tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 5)).astype(np.float32)
    grads = [rng.standard_normal((3, 5)).astype(np.float32) for _ in range(4)]
    lrs = [0.1, 0.05, 0.2, 0.01]  # a changing learning rate: torch keeps it out of the buffer
    got, step = _run(strategy, w0, grads, lrs, mu=0.9, wd=1e-2, nesterov=nesterov)
    want = _torch_sgd(w0, grads, lrs, 0.9, 1e-2, nesterov)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    ops = {op.type for fn in step._list_all_concrete_functions() for op in fn.graph.get_operations()}
    ops |= {n.op for fn in step._list_all_concrete_functions() for f in fn.graph.as_graph_def().library.function
            for n in f.node_def}
    assert "ResourceApplyMomentum" in ops  # the fused kernel ran, not the elementwise fallback


def test_fused_and_elementwise_steps_agree(monkeypatch):
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((64,)).astype(np.float32)
    grads = [rng.standard_normal((64,)).astype(np.float32) for _ in range(3)]
    lrs = [0.5, 0.25, 0.125]
    strategy = tf.distribute.get_strategy()
    fused, _ = _run(strategy, w0, grads, lrs, mu=0.9, wd=1e-4, nesterov=True)
    elementwise, _ = _run(strategy, w0, grads, lrs, mu=0.9, wd=1e-4, nesterov=True, fused=False,
                          monkeypatch=monkeypatch)
    assert not np.array_equal(w0, fused)
    np.testing.assert_allclose(fused, elementwise, rtol=0, atol=1e-6)
