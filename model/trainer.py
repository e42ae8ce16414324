"""One training step of HiFi-GAN: the generator, both discriminators and their optimisers built under a strategy
and a dtype policy, and the compiled step (the original's D update, then G update)."""

from __future__ import annotations

import contextlib
import os

import keras
import tensorflow as tf

from core.config import HiFiGANConfig
from model.discriminators import MultiPeriodDiscriminator, MultiScaleDiscriminator
from model.generator import Generator
from model.logging_utils import logger
from model.losses import MelSpectrogram, discriminator_loss, feature_matching_loss, generator_adversarial_loss
from model.optimizers import adamw
from model.options import PRECISIONS, TrainingError


def default_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG is set, MirroredStrategy over >1 GPU, else the default."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def _dtype_policy(name: str):
    """Build layers under a Keras dtype policy, then put the previous global policy back."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32" if name == "none" else name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class Trainer:
    """Models, optimisers, the checkpoint and the compiled train step of one run."""

    def __init__(self, cfg: HiFiGANConfig, strategy: tf.distribute.Strategy | None = None,
                 mixed_precision: str = "none", jit_compile: bool = False):
        if mixed_precision not in PRECISIONS:
            raise TrainingError(f"--mixed_precision must be one of {PRECISIONS}, got {mixed_precision!r}")
        self.cfg = cfg
        self.strategy = strategy or default_strategy()
        self.mixed_precision = mixed_precision
        mels = (None, None, cfg.audio.num_mels)
        with self.strategy.scope():
            with _dtype_policy(mixed_precision):
                self.generator = Generator(cfg.generator)
                self.mpd = MultiPeriodDiscriminator(cfg.discriminator.mpd_periods, cfg.discriminator.channel_divisor)
                self.msd = MultiScaleDiscriminator(cfg.discriminator.channel_divisor)
            self.generator.build(mels)
            self.mpd.build((None, None, 1))
            self.msd.build((None, None, 1))
            self.optim_g = adamw(cfg, mixed_precision)
            self.optim_d = adamw(cfg, mixed_precision)
            self.optim_g.build(self.generator.trainable_variables)
            self.optim_d.build(self.d_variables)
        self.mel = MelSpectrogram(cfg.audio, for_loss=True)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.checkpoint = tf.train.Checkpoint(generator=self.generator, mpd=self.mpd, msd=self.msd,
                                              optim_g=self.optim_g, optim_d=self.optim_d, step=self.step,
                                              epoch=self.epoch)
        replicas = self.strategy.num_replicas_in_sync
        if jit_compile and replicas > 1:
            # NOTE: the optimisers all-reduce with a merge_call that XLA cannot compile; per-replica XLA of the
            # loss and gradient part alone would need the step split in two. Left for later.
            logger.warning("--jit_compile is ignored with %d replicas (XLA runs single-replica steps only)",
                           replicas)
            jit_compile = False
        self._replica_step_fn = tf.function(self._replica_step, jit_compile=jit_compile, autograph=False)
        self._train_step = None
        self.history: list[dict] = []

    @property
    def d_variables(self) -> list:
        return self.mpd.trainable_variables + self.msd.trainable_variables

    def learning_rate_for(self, epoch: int) -> float:
        """The original's ExponentialLR stepped once per epoch: lr * lr_decay ** epoch."""
        return self.cfg.optimizer.learning_rate * self.cfg.optimizer.lr_decay ** epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch.assign(epoch)
        for optimizer in (self.optim_g, self.optim_d):
            optimizer.learning_rate = self.learning_rate_for(epoch)

    # --- the step -------------------------------------------------------------------------------------------

    def _discriminate(self, real, generated):
        """Both discriminators on [real, generated] audio [B, samples, 1]: per discriminator and signal,
        (logits list, fmap lists). Each layer's normalised kernel is computed once for both signals."""
        return self.mpd([real, generated], training=True), self.msd([real, generated], training=True)

    def _apply(self, optimizer, tape, loss, variables):
        """Gradients of a per-replica loss already divided by the replica count; returns the gradient norm of
        this replica's batch mean."""
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            # The loss scale is a plain product: its gradient is the scale times the loss's.
            grads = [None if g is None else g * optimizer.dynamic_scale
                     for g in tape.gradient(loss, variables)]
            norm = tf.linalg.global_norm(grads) / tf.cast(optimizer.dynamic_scale, tf.float32)
        else:
            grads = tape.gradient(loss, variables)
            norm = tf.linalg.global_norm(grads)
        # Keras' optimisers sum the gradients over replicas (all-reduce) inside apply().
        optimizer.apply(grads, variables)
        return norm * self.strategy.num_replicas_in_sync

    def _replica_step(self, mel, mel_loss, audio):
        """One D update then one G update on this replica's batch (the original's order).

        mel, mel_loss [B, F, num_mels], audio [B, F * hop_size]. Loss terms are means over this replica's batch
        divided by the replica count: summed by the all-reduce, they are the mean over the global batch.
        """
        lam = self.cfg.loss
        scale = 1.0 / self.strategy.num_replicas_in_sync
        y = audio[..., None]
        g_vars, d_vars = self.generator.trainable_variables, self.d_variables
        with tf.GradientTape() as g_tape:
            y_hat = self.generator(mel, training=True)
            # NOTE: like the original, the discriminators see real and generated audio one after the other (so
            # MSD's spectral norm does its two power iterations per pass). The D update is no part of G's
            # gradient: not recording it on g_tape makes the first call cheaper (eager, full discriminators,
            # 2 CPU cores: 22 s -> 10 s; tracing: 21 s -> 18 s).
            with g_tape.stop_recording(), tf.GradientTape() as d_tape:
                ((f_real, _), (f_fake, _)), ((s_real, _), (s_fake, _)) = self._discriminate(
                    y, tf.stop_gradient(y_hat))
                loss_disc_f, _, _ = discriminator_loss(f_real, f_fake)
                loss_disc_s, _, _ = discriminator_loss(s_real, s_fake)
                loss_disc_all = loss_disc_f + loss_disc_s
                d_replica_loss = loss_disc_all * scale
            with g_tape.stop_recording():
                d_grad_norm = self._apply(self.optim_d, d_tape, d_replica_loss, d_vars)

            mel_error = tf.reduce_mean(tf.abs(mel_loss - self.mel(y_hat)))
            # The real half depends on no generator variable: the compiled step runs no backward pass through it.
            ((f_real, fm_f_real), (f_fake, fm_f_fake)), ((s_real, fm_s_real), (s_fake, fm_s_fake)) = \
                self._discriminate(y, y_hat)
            loss_fm = feature_matching_loss(fm_f_real, fm_f_fake) + feature_matching_loss(fm_s_real, fm_s_fake)
            loss_adv = generator_adversarial_loss(f_fake)[0] + generator_adversarial_loss(s_fake)[0]
            loss_gen_all = (lam.lambda_adversarial * loss_adv + lam.lambda_feature_matching * loss_fm
                            + lam.lambda_mel * mel_error)
            g_replica_loss = loss_gen_all * scale
        g_grad_norm = self._apply(self.optim_g, g_tape, g_replica_loss, g_vars)
        mean = lambda logits: tf.reduce_mean([tf.reduce_mean(tf.cast(t, tf.float32)) for t in logits])  # noqa
        return {
            "gen_loss_total": loss_gen_all, "mel_spec_error": mel_error, "gen_adversarial": loss_adv,
            "feature_matching": loss_fm, "disc_loss_total": loss_disc_all, "disc_mpd": loss_disc_f,
            "disc_msd": loss_disc_s, "d_real_score": mean(s_real + f_real), "d_fake_score": mean(s_fake + f_fake),
            "grad_norm_g": g_grad_norm, "grad_norm_d": d_grad_norm,
        }

    def batch_signature(self, batch_size: int) -> dict:
        """The train step's input signature from the config: [B, F, num_mels] mels and [B, F * hop] audio."""
        frames, num_mels = self.cfg.frames_per_segment, self.cfg.audio.num_mels
        return {"mel": tf.TensorSpec([batch_size, frames, num_mels], tf.float32),
                "mel_loss": tf.TensorSpec([batch_size, frames, num_mels], tf.float32),
                "audio": tf.TensorSpec([batch_size, frames * self.cfg.audio.hop_size], tf.float32)}

    def train_step(self, batch) -> dict:
        """One global step on a (distributed) batch; returns the losses averaged over replicas.

        NOTE: on CPU the step runs with grappler's remapper off. TF 2.21's remapper fails on this graph (a leaky
        ReLU's gradient reads the bias add it would fuse into the conv), logs an E-level "remapper failed" line
        and leaves the graph as it was; skipping it gives the same step time (V3, batch 4: 3.05-3.09 vs
        3.13-3.30 s) without the line, and the first step is traced and optimised 2-10 s sooner. Inference and
        validation keep it (their conv + bias fusions succeed).
        """
        if self._train_step is None:
            strategy = self.strategy
            multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            if strategy.num_replicas_in_sync == 1 and not multi_worker:
                signature = self.batch_signature(self.cfg.training.batch_size)
            else:
                signature = None  # distributed values: traced once from the distributed dataset's element spec

            def step_fn(batch):
                out = strategy.run(self._replica_step_fn, args=(batch["mel"], batch["mel_loss"], batch["audio"]))
                self.step.assign_add(1)
                return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in out.items()}

            self._train_step = tf.function(step_fn, input_signature=[signature] if signature else None, autograph=False,
                                           reduce_retracing=True)
            self._step_options = {} if tf.config.list_logical_devices("GPU") else {"remapping": False}
        with grappler_options(**self._step_options):
            return self._train_step(batch)


@contextlib.contextmanager
def grappler_options(**options: bool):
    """Grappler options for the tf.function calls made inside (TF reads them at each call); the earlier
    settings are back afterwards. None given: nothing is set (each set makes TF rebuild its call options)."""
    if not options:
        yield
        return
    saved = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options(options)
    try:
        yield
    finally:
        # Options unset before go back to their default (on); set_experimental_options cannot unset a key.
        tf.config.optimizer.set_experimental_options({**{name: True for name in options}, **saved})
