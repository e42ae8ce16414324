"""HiFi-GAN training: the original's train.py loop (D update, then G update) on tf.data shards with
tf.distribute, exact resume and TensorBoard logging.

The step is model/trainer.py's, the run's checkpoints model/run_state.py's and validation model/validation.py's;
this module is the loop over epochs and steps, with one small hook per interval (log, save, summary, validate)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time

import tensorflow as tf
from tqdm.contrib.logging import logging_redirect_tqdm

from core.config import HiFiGANConfig
from model import checkpoint as ckpt_lib
from model import data as data_lib
from model.corpora import load_corpora, mixture_record
from model.logging_utils import RunConsole, StepRate, logger, stdout_line, write_config, write_scalars
from model.options import TrainingError, TrainOptions
from model.run_state import RunState, open_run_state, signal_handlers
from model.trainer import Trainer
from model.validation import Validator, result_line

# Trainer, TrainingError and TrainOptions stay importable from here (run_train.py, benchmarks/bench_train.py).
__all__ = ["Trainer", "TrainingError", "TrainOptions", "train"]


def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (so a killed job saves like Ctrl-C); only from the main thread."""
    return signal_handlers({signal.SIGTERM: signal.default_int_handler})


def _trainer_for(cfg: HiFiGANConfig, options: TrainOptions, strategy, trainer: Trainer | None) -> Trainer:
    """A new Trainer, or the reused one when the run has a checkpoint to replace its state."""
    if trainer is None:
        trainer = Trainer(cfg, strategy, options.mixed_precision, options.jit_compile)
    elif not (ckpt_lib.latest_checkpoint(options.checkpoint_path) or options.init_from):
        # NOTE: a reused trainer is not re-initialised: what no checkpoint restores keeps its current values.
        raise TrainingError(f"{options.checkpoint_path}: a reused trainer needs a checkpoint to start from")
    trainer.history = []
    return trainer


def train(cfg: HiFiGANConfig, options: TrainOptions, strategy: tf.distribute.Strategy | None = None,
          trainer: Trainer | None = None) -> Trainer:
    """Trains until ``training_epochs`` or ``training_steps``; resumes from ``checkpoint_path`` if it holds a
    checkpoint. Returns the Trainer (its models hold the final weights; ``history`` the per-step losses).
    Raises TrainingError or KeyboardInterrupt (after saving).

    A ``trainer`` of an earlier call may be passed to skip rebuilding and retracing (tests, notebooks); its
    state is then replaced by the checkpoint in ``checkpoint_path``, which must exist.
    """
    corpora = load_corpora(cfg, options.data_dirs, options.mixture_weights, options.fine_tuning)
    seed = cfg.training.seed if options.seed is None else options.seed
    trainer = _trainer_for(cfg, options, strategy, trainer)
    # SIGTERM is Ctrl-C from here on, final save included; the checkpoint directory is locked inside.
    with _sigterm_as_interrupt(), open_run_state(cfg, trainer, options, corpora) as state:
        _Loop(cfg, options, trainer, state, corpora, seed).run()
    return trainer


class _Loop:
    """Epochs of steps from the run's current step and epoch (mid-epoch after a resume), then a final save."""

    def __init__(self, cfg: HiFiGANConfig, options: TrainOptions, trainer: Trainer, state: RunState, corpora,
                 seed: int):
        self.cfg, self.options, self.trainer, self.state = cfg, options, trainer, state
        self.corpora, self.seed, self.chief = corpora, seed, state.chief
        self.writer = tf.summary.create_file_writer(os.path.join(options.checkpoint_path, "logs")) \
            if self.chief else None
        self.validator = Validator(trainer, corpora, options.validation_clips, options.logged_clips,
                                   options.validation_metric_clips) \
            if self.chief and options.validation_interval > 0 else None
        self.steps_per_epoch = data_lib.mixture_steps_per_epoch(corpora, cfg.training.batch_size)
        self.last = None  # the last step's losses
        self.total_steps = options.training_epochs * self.steps_per_epoch
        if options.training_steps is not None:
            self.total_steps = min(self.total_steps, options.training_steps)
        self.console = RunConsole(self.total_steps, int(trainer.step), self.chief, options.progress_bar)
        self.step_rate = StepRate()
        self.started = (int(trainer.step), time.monotonic())

    def run(self) -> None:
        """Raises TrainingError, DataError (no save) or KeyboardInterrupt (saved unless the last loss was not
        finite)."""
        trainer = self.trainer
        try:
            with logging_redirect_tqdm():
                self._report_start()
                while int(trainer.epoch) < self.options.training_epochs and not self._done():
                    self._train_epoch()
            self.state.save()
            self._report_end()
        except data_lib.DataError as e:
            # A shard that cannot be read: no save, the last checkpoint stays the newest.
            raise data_lib.DataError(f"{e}; stopped at step {int(trainer.step)}, the last checkpoint is kept "
                                     f"({self.state.kept()})") from None
        except KeyboardInterrupt:
            if self.last is None or all(math.isfinite(v) for v in self.last.values()):
                self.state.save()
                logger.info("interrupted: saved step %d to %s", int(trainer.step), self.options.checkpoint_path)
            raise
        finally:
            self.console.close()
            if self.writer is not None:
                self.writer.flush()

    def _done(self) -> bool:
        return self.options.training_steps is not None and int(self.trainer.step) >= self.options.training_steps

    def _train_epoch(self) -> None:
        """The rest of the current epoch (its first ``skip`` steps ran before a resume)."""
        trainer, options, spe = self.trainer, self.options, self.steps_per_epoch
        epoch = int(trainer.epoch)
        trainer.set_epoch(epoch)
        skip = min(max(int(trainer.step) - epoch * spe, 0), spe)
        dataset = data_lib.distributed_mixture_dataset(trainer.strategy, self.corpora, self.cfg, self.seed, epoch,
                                                       skip_steps=skip)
        start = time.time()
        # NOTE: the original prints "Epoch: N" and the epoch's time at every epoch: hundreds of lines on a small
        # corpus. The run's one bar shows the epoch; these lines are DEBUG.
        logger.debug("Epoch: %d", epoch + 1)
        self.console.epoch(epoch + 1)
        for batch in data_lib.checked_mixture_read(dataset, self.corpora):
            if self._done():
                break
            step_start = time.time()
            step, values = self._train_step(batch)
            self.console.step(values)
            self._check_log_interval(step, values, step_start)
            self._check_save_interval(step)
            self._check_summary_interval(step, values, epoch)
            self._check_eval_interval(step)
        if int(trainer.step) >= (epoch + 1) * spe:
            trainer.set_epoch(epoch + 1)
            if self.chief:
                logger.debug("Time taken for epoch %d is %d sec", epoch + 1, int(time.time() - start))

    def _train_step(self, batch) -> tuple[int, dict]:
        """One step; returns its number (before the step) and its losses. A non-finite loss stops the run."""
        step = int(self.trainer.step)
        values = {k: float(v) for k, v in self.trainer.train_step(batch).items()}
        if not all(math.isfinite(v) for v in values.values()):
            bad = ", ".join(k for k, v in values.items() if not math.isfinite(v))
            raise TrainingError(f"non-finite loss at step {step} ({bad}); stopped, the last good checkpoint is "
                                f"kept ({self.state.kept()})")
        self.last = values
        self.trainer.history.append(values)
        return step, values

    def _check_log_interval(self, step: int, values: dict, step_start: float) -> None:
        if self.chief and step % self.options.stdout_interval == 0:
            self.console.line(stdout_line(step, values["gen_loss_total"], values["mel_spec_error"],
                                          time.time() - step_start))

    def _check_save_interval(self, step: int) -> None:
        if (step + 1) % self.options.checkpoint_interval == 0:
            self.state.save()

    def _check_summary_interval(self, step: int, values: dict, epoch: int) -> None:
        if self.chief and step % self.options.summary_interval == 0:
            write_scalars(self.writer, {**values, "learning_rate": self.trainer.learning_rate_for(epoch),
                                        **self.step_rate(step)}, step, "training")

    def _check_eval_interval(self, step: int) -> None:
        if self.validator is not None and step % self.options.validation_interval == 0:
            self.console.line(result_line(step, self.validator.run(self.writer, step)))

    def _report_start(self) -> None:
        """Where the run stands and where its outputs go (a line), and the resolved config in TensorBoard."""
        if not self.chief:
            return
        cfg, options, step = self.cfg, self.options, int(self.trainer.step)
        logger.info("training %s from step %d to %d (%d steps per epoch, batch %d, %d Hz, %d mels); checkpoints, "
                    "config.json and TensorBoard logs (logs/) in %s", _describe(self.corpora), step, self.total_steps,
                    self.steps_per_epoch, cfg.training.batch_size, cfg.audio.sampling_rate, cfg.audio.num_mels,
                    options.checkpoint_path)
        write_config(self.writer, {"config": cfg.to_json(),
                                   "options": json.dumps(dataclasses.asdict(options), indent=2),
                                   "data_mixture": json.dumps(mixture_record(self.corpora), indent=2)})

    def _report_end(self) -> None:
        """The bar's last state, then a summary line."""
        self.console.close()
        if self.chief:
            steps, seconds = int(self.trainer.step) - self.started[0], time.monotonic() - self.started[1]
            logger.info("done: step %d, %d steps in %.0f s (%.2f steps/s); saved to %s; TensorBoard: "
                        "tensorboard --logdir %s", int(self.trainer.step), steps, seconds,
                        steps / max(seconds, 1e-9), self.options.checkpoint_path,
                        os.path.join(self.options.checkpoint_path, "logs"))


def _describe(corpora) -> str:
    """The data directory, or a mixture's directories with their weights."""
    if len(corpora) == 1:
        return corpora[0].data_dir
    return "a mixture of " + ", ".join(f"{c.data_dir} ({c.weight:.3g})" for c in corpora)
