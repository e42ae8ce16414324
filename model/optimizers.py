"""The optimisers of the original: torch's AdamW (its epsilon placement and defaults) in Keras."""

from __future__ import annotations

import keras
from keras import ops

from core.config import HiFiGANConfig
from model.compat import adam_slots


class TorchAdamW(keras.optimizers.AdamW):
    """Keras' AdamW with torch's epsilon placement: the update is lr * m_hat / (sqrt(v_hat) + eps).

    NOTE: Keras adds eps to sqrt(v) BEFORE the bias correction (Kingma & Ba's "epsilon hat"), an effective
    eps / sqrt(1 - beta_2 ** t) on torch's scale: 1e-7 instead of 1e-8 at step 1 with beta_2 = 0.99, fading over
    the first hundreds of steps. The discriminators hold many gradient elements of that size, whose first updates
    it shrank: after two steps 5-12 % of their weights were over 0.005 lr (up to 0.9 lr) off the original's and
    loss_disc_all 1.2e-4 (tests/test_train_step_parity.py). Variables and checkpoints are keras.optimizers.AdamW's.
    """

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        step = ops.cast(self.iterations + 1, variable.dtype)
        bias_1 = 1 - ops.power(ops.cast(self.beta_1, variable.dtype), step)
        bias_2 = 1 - ops.power(ops.cast(self.beta_2, variable.dtype), step)
        m, v = adam_slots(self, variable)
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        # torch's lr / bias_1 * m / (sqrt(v) / sqrt(bias_2) + eps), times sqrt(bias_2) above and below: as many
        # full-size ops as Keras' Adam.
        alpha = lr * ops.sqrt(bias_2) / bias_1
        epsilon = self.epsilon * ops.sqrt(bias_2)
        self.assign_sub(variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), epsilon)))


def adamw(cfg: HiFiGANConfig, mixed_precision: str) -> keras.optimizers.Optimizer:
    opt = cfg.optimizer
    # NOTE: torch's AdamW defaults to weight_decay=0.01 (the original relies on it) and eps=1e-8; Keras' AdamW
    # defaults to 0.004 and 1e-7, so both are given explicitly.
    optimizer = TorchAdamW(learning_rate=opt.learning_rate, beta_1=opt.adam_b1, beta_2=opt.adam_b2, epsilon=1e-8,
                           weight_decay=opt.weight_decay)
    if mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
