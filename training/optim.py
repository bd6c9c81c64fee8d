"""Optimizers with PyTorch's update rules, so that a step here equals a step of timm/DeiT.

Keras's own SGD stores the velocity already multiplied by the learning rate, so its
momentum lags behind torch's whenever the learning rate changes (every warm-up epoch); its
Adam puts epsilon outside the bias correction of the second moment. Both differ from
``torch.optim.SGD`` / ``torch.optim.AdamW``, which timm's ``create_optimizer`` builds:

- :class:`TorchSGD`: ``torch.optim.SGD(momentum, nesterov, weight_decay)``: the coupled
  decay ``g + wd * w`` is added to the gradient (after clipping, as torch's step does), the
  buffer is ``b = mu * b + g`` (``b = g`` at the first step), the update ``lr * (g + mu * b)``
  with Nesterov, ``lr * b`` without.
- :class:`TorchAdamW`: ``torch.optim.AdamW``: ``w *= 1 - lr * wd`` first, then
  ``w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

Variables passed to ``exclude_from_weight_decay`` are not decayed (timm's no-decay group:
1-D parameters, biases, ``no_weight_decay()``).
"""

from __future__ import annotations

import keras
from keras import ops


def _fused_momentum(variable, buf, gradient, lr, mu, nesterov: bool) -> bool:
    """torch's momentum step as one ``ResourceApplyMomentum`` kernel (TensorFlow backend only).

    TensorFlow's kernel computes ``b = mu * b + g`` and ``w -= lr * g + lr * mu * b`` (Nesterov) or
    ``w -= lr * b``: torch's rule, evaluated in one pass over the three tensors instead of five
    elementwise ops (the rounding of ``lr * (g + mu * b)`` differs by at most an ulp). On CPU the
    update is memory bound, so this saves most of its time. Returns False where it does not apply
    (other backends, sparse gradients): the caller then runs the elementwise rule.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    if isinstance(gradient, tf.IndexedSlices):
        return False
    var = variable.value if isinstance(variable, keras.Variable) else variable
    accum = buf.value if isinstance(buf, keras.Variable) else buf
    if not (hasattr(var, "handle") and hasattr(accum, "handle")):
        return False
    tf.raw_ops.ResourceApplyMomentum(var=var.handle, accum=accum.handle, lr=lr, grad=gradient, momentum=mu,
                                     use_locking=False, use_nesterov=nesterov)
    return True


class TorchSGD(keras.optimizers.Optimizer):
    """SGD with torch's momentum buffer and coupled (L2) weight decay.

    Args:
        learning_rate: float or schedule.
        momentum: float. ``mu``.
        nesterov: bool. timm's ``--opt sgd`` is Nesterov.
        weight_decay: float. Coupled decay (added to the gradient).
        **kwargs: the base optimizer's arguments (``global_clipnorm``, ``name``, ...).
    """

    def __init__(self, learning_rate=0.01, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0,
                 name: str = "torch_sgd", **kwargs) -> None:
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={momentum}")
        self.momentum = momentum
        self.nesterov = nesterov
        self.coupled_weight_decay = weight_decay

    def build(self, variables) -> None:
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum") if self.momentum else []

    def update_step(self, gradient, variable, learning_rate) -> None:
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay and self._use_weight_decay(variable):
            gradient = gradient + ops.cast(self.coupled_weight_decay, variable.dtype) * variable
        if not self.momentum:
            self.assign_sub(variable, lr * gradient)
            return
        mu = ops.cast(self.momentum, variable.dtype)
        buf = self.momentums[self._get_variable_index(variable)]
        if _fused_momentum(variable, buf, gradient, lr, mu, self.nesterov):
            return
        self.assign(buf, mu * buf + gradient)  # the first step gives b = g (b starts at 0)
        update = gradient + mu * buf if self.nesterov else buf
        self.assign_sub(variable, lr * update)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.coupled_weight_decay)
        return config


class TorchAdamW(keras.optimizers.Optimizer):
    """AdamW with torch's decoupled decay and epsilon placement.

    Args:
        learning_rate: float or schedule.
        weight_decay: float. Decoupled: ``w *= 1 - lr * wd`` before the Adam update.
        beta_1, beta_2, epsilon: float. torch's ``betas`` and ``eps``.
        **kwargs: the base optimizer's arguments.
    """

    def __init__(self, learning_rate=0.001, weight_decay: float = 0.01, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, name: str = "torch_adamw", **kwargs) -> None:
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.decoupled_weight_decay = weight_decay
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon

    def build(self, variables) -> None:
        if self.built:
            return
        super().build(variables)
        self.first_moments = self.add_optimizer_variables(variables, "m")
        self.second_moments = self.add_optimizer_variables(variables, "v")

    def update_step(self, gradient, variable, learning_rate) -> None:
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        t = ops.cast(self.iterations + 1, dtype)
        b1 = ops.cast(self.beta_1, dtype)
        b2 = ops.cast(self.beta_2, dtype)
        if self.decoupled_weight_decay and self._use_weight_decay(variable):
            self.assign(variable, variable * (1 - lr * ops.cast(self.decoupled_weight_decay, dtype)))
        index = self._get_variable_index(variable)
        m, v = self.first_moments[index], self.second_moments[index]
        self.assign(m, b1 * m + (1 - b1) * gradient)
        self.assign(v, b2 * v + (1 - b2) * ops.square(gradient))
        denom = ops.sqrt(v) / ops.sqrt(1 - ops.power(b2, t)) + ops.cast(self.epsilon, dtype)
        self.assign_sub(variable, lr / (1 - ops.power(b1, t)) * m / denom)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(weight_decay=self.decoupled_weight_decay, beta_1=self.beta_1, beta_2=self.beta_2,
                      epsilon=self.epsilon)
        return config
