"""HiFi-GAN training: the original's train.py loop (D update, then G update) on tf.data shards with
tf.distribute, exact resume and TensorBoard logging."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from model import checkpoint as ckpt_lib
from model import data as data_lib
from model.discriminators import MultiPeriodDiscriminator, MultiScaleDiscriminator
from model.generator import Generator
from model.logging_utils import logger, multi_resolution_stft_distance, stdout_line, write_clip, write_scalars
from model.losses import MelSpectrogram, discriminator_loss, feature_matching_loss, generator_adversarial_loss
from model.outputs import writable_dir
from core.config import HiFiGANConfig
from model.optimizers import adamw
from model.options import PRECISIONS, TrainingError, TrainOptions



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
    settings are back afterwards."""
    saved = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options(options)
    try:
        yield
    finally:
        # Options unset before go back to their default (on); set_experimental_options cannot unset a key.
        tf.config.optimizer.set_experimental_options({**{name: True for name in options}, **saved})


# --- validation --------------------------------------------------------------------------------------------


class Validator:
    """Mel L1 and multi-resolution STFT distance on whole val clips; audio and mel images of a few of them."""

    def __init__(self, trainer: Trainer, data_dir: str, manifest, limit: int | None, logged_clips: int):
        cfg = trainer.cfg
        self.trainer, self.logged_clips, self.gt_written = trainer, logged_clips, False
        self.data_dir, self.manifest = data_dir, manifest
        self.dataset = data_lib.validation_dataset(data_dir, manifest, cfg, limit)
        self.mel_input = MelSpectrogram(cfg.audio, for_loss=False)
        num_mels = cfg.audio.num_mels

        @tf.function(input_signature=[tf.TensorSpec([1, None, num_mels], tf.float32),
                                      tf.TensorSpec([1, None, num_mels], tf.float32),
                                      tf.TensorSpec([1, None], tf.float32)], reduce_retracing=True)
        def infer(mel, mel_loss, audio):
            y_hat = tf.cast(trainer.generator(mel, training=False)[..., 0], tf.float32)
            error = tf.reduce_mean(tf.abs(mel_loss - trainer.mel(y_hat)))
            return y_hat, self.mel_input(y_hat), error, multi_resolution_stft_distance(audio, y_hat)

        self.infer = infer

    def run(self, writer, step: int) -> dict:
        sr = self.trainer.cfg.audio.sampling_rate
        errors, distances = [], []
        for j, clip in enumerate(data_lib.checked_read(self.dataset, self.data_dir, self.manifest)):
            y_hat, mel_hat, error, distance = self.infer(clip["mel"], clip["mel_loss"], clip["audio"])
            errors.append(float(error))
            distances.append(float(distance))
            if j < self.logged_clips and writer is not None:
                mel = clip["mel"][0].numpy()
                if not self.gt_written:
                    with writer.as_default(step=step):
                        tf.summary.audio(f"gt/y_{j}", clip["audio"][..., None], sr)
                write_clip(writer, f"generated/y_hat_{j}", y_hat[0].numpy(), sr, mel, mel_hat[0].numpy(), step)
        self.gt_written = True
        result = {"mel_spec_error": float(np.mean(errors)), "stft_distance": float(np.mean(distances))}
        if writer is not None:
            write_scalars(writer, result, step, "validation")
        return result


# --- the loop ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (so a killed job saves like Ctrl-C); only from the main thread."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _worker_is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (resolver.task_type == "worker" and resolver.task_id == 0
                                                      and "chief" not in resolver.cluster_spec().as_dict())


def _check_data(cfg: HiFiGANConfig, options: TrainOptions):
    manifest = data_lib.load_manifest(options.data_dir)
    reason = manifest.mismatch(cfg.audio)
    if reason:
        raise TrainingError(f"{options.data_dir}: shards do not fit the config: {reason}")
    if options.fine_tuning and not manifest.teacher_forced:
        raise TrainingError(f"{options.data_dir}: --fine_tuning needs teacher-forced shards (run_preprocess.py "
                            f"with teacher mels); these hold ground-truth mels")
    data_lib.check_shards_exist(options.data_dir, manifest)
    data_lib.steps_per_epoch(manifest, cfg.training.batch_size, options.data_dir)
    return manifest


def _init_from(trainer: Trainer, source: str, keep_schedule: bool) -> None:
    latest = ckpt_lib.latest_checkpoint(source)
    if latest is None:
        raise TrainingError(f"--init_from {source}: no checkpoint found")
    objects = {"generator": trainer.generator}
    if ckpt_lib.has_discriminators(latest):
        objects.update(mpd=trainer.mpd, msd=trainer.msd)
    else:
        logger.warning("--init_from %s has no discriminator weights: MPD and MSD start from random weights", source)
    trainer.step.assign(0)
    trainer.epoch.assign(0)
    if keep_schedule:
        objects.update(step=trainer.step, epoch=trainer.epoch)
        if ckpt_lib.has_optimizers(latest):
            objects.update(optim_g=trainer.optim_g, optim_d=trainer.optim_d)
    ckpt_lib.restore(tf.train.Checkpoint(**objects), latest, trainer.cfg, discriminators="mpd" in objects,
                     partial=True)
    logger.info("initialised from %s%s", latest, " (keeping its step and schedule)" if keep_schedule else "")


def train(cfg: HiFiGANConfig, options: TrainOptions, strategy: tf.distribute.Strategy | None = None,
          trainer: Trainer | None = None) -> Trainer:
    """Trains until ``training_epochs`` or ``training_steps``; resumes from ``checkpoint_path`` if it holds a
    checkpoint. Returns the Trainer (its models hold the final weights; ``history`` the per-step losses).
    Raises TrainingError or KeyboardInterrupt (after saving).

    A ``trainer`` of an earlier call may be passed to skip rebuilding and retracing (tests, notebooks); its
    state is then replaced by the checkpoint in ``checkpoint_path``, which must exist.
    """
    manifest = _check_data(cfg, options)
    seed = cfg.training.seed if options.seed is None else options.seed
    if trainer is None:
        trainer = Trainer(cfg, strategy, options.mixed_precision, options.jit_compile)
    elif not (ckpt_lib.latest_checkpoint(options.checkpoint_path) or options.init_from):
        # NOTE: a reused trainer is not re-initialised: what no checkpoint restores keeps its current values.
        raise TrainingError(f"{options.checkpoint_path}: a reused trainer needs a checkpoint to start from")
    trainer.history = []
    strategy = trainer.strategy
    chief = _worker_is_chief(strategy)
    if chief:
        writable_dir(options.checkpoint_path, "checkpoint directory")
    # Every worker resumes from the chief's directory (a shared filesystem); non-chiefs write to a scratch one.
    # NOTE: looked up before the CheckpointManager is made: it would read a corrupt index as "no checkpoint".
    latest = ckpt_lib.latest_checkpoint(options.checkpoint_path)
    save_dir = options.checkpoint_path if chief else tempfile.mkdtemp(prefix="hifigan_worker_")
    manager = tf.train.CheckpointManager(trainer.checkpoint, save_dir, max_to_keep=options.max_to_keep,
                                         checkpoint_name=ckpt_lib.CHECKPOINT_NAME)
    if latest:
        ckpt_lib.restore(trainer.checkpoint, latest, trainer.cfg)
        logger.info("resumed from step %d", int(trainer.step))
        if options.init_from:
            logger.warning("--init_from ignored: %s already holds a checkpoint", save_dir)
    elif options.init_from:
        _init_from(trainer, options.init_from, options.keep_schedule)
    if chief:
        ckpt_lib.write_json_beside(options.checkpoint_path, cfg)
    writer = tf.summary.create_file_writer(os.path.join(options.checkpoint_path, "logs")) if chief else None
    validator = Validator(trainer, options.data_dir, manifest, options.validation_clips, options.logged_clips) \
        if chief and options.validation_interval > 0 else None
    spe = data_lib.steps_per_epoch(manifest, cfg.training.batch_size, options.data_dir)
    last_saved = [int(trainer.step) if latest and chief else None]

    def save():
        step = int(trainer.step)
        if last_saved[0] != step:
            manager.save(checkpoint_number=step)
            last_saved[0] = step

    def done():
        return options.training_steps is not None and int(trainer.step) >= options.training_steps

    last = None
    try:
        with _sigterm_as_interrupt(), logging_redirect_tqdm():
            while int(trainer.epoch) < options.training_epochs and not done():
                epoch = int(trainer.epoch)
                trainer.set_epoch(epoch)
                skip = min(max(int(trainer.step) - epoch * spe, 0), spe)
                dataset = data_lib.distributed_train_dataset(strategy, options.data_dir, manifest, cfg, seed, epoch,
                                                             skip_steps=skip)
                start = time.time()
                logger.info("Epoch: %d", epoch + 1)
                bar = tqdm(total=spe, initial=skip, desc=f"epoch {epoch + 1}", unit="step", leave=False,
                           disable=not (chief and options.progress_bar))
                for batch in data_lib.checked_read(dataset, options.data_dir, manifest):
                    if done():
                        break
                    start_b = time.time()
                    step = int(trainer.step)
                    values = {k: float(v) for k, v in trainer.train_step(batch).items()}
                    if not all(math.isfinite(v) for v in values.values()):
                        bad = ", ".join(k for k, v in values.items() if not math.isfinite(v))
                        raise TrainingError(f"non-finite loss at step {step} ({bad}); stopped, the last good "
                                            f"checkpoint is kept ({manager.latest_checkpoint or 'none saved'})")
                    last = values
                    trainer.history.append(values)
                    bar.update(1)
                    if chief and step % options.stdout_interval == 0:
                        logger.info(stdout_line(step, values["gen_loss_total"], values["mel_spec_error"],
                                                time.time() - start_b))
                    if (step + 1) % options.checkpoint_interval == 0:
                        save()
                    if chief and step % options.summary_interval == 0:
                        write_scalars(writer, {**values, "learning_rate": trainer.learning_rate_for(epoch)}, step,
                                      "training")
                    if validator is not None and step % options.validation_interval == 0:
                        result = validator.run(writer, step)
                        logger.info("validation at step %d: mel error %.3f, STFT distance %.3f", step,
                                    result["mel_spec_error"], result["stft_distance"])
                bar.close()
                if int(trainer.step) >= (epoch + 1) * spe:
                    trainer.set_epoch(epoch + 1)
                    if chief:
                        logger.info("Time taken for epoch %d is %d sec", epoch + 1, int(time.time() - start))
        save()
    except data_lib.DataError as e:
        # A shard that cannot be read: no save, the last checkpoint stays the newest.
        raise data_lib.DataError(f"{e}; stopped at step {int(trainer.step)}, the last checkpoint is kept "
                                 f"({manager.latest_checkpoint or 'none saved'})") from None
    except KeyboardInterrupt:
        if last is None or all(math.isfinite(v) for v in last.values()):
            save()
            logger.info("interrupted: saved step %d to %s", int(trainer.step), options.checkpoint_path)
        raise
    finally:
        if writer is not None:
            writer.flush()
    return trainer
