"""The state of a training run on disk: which worker is the chief, the checkpoint it resumes from or the one it is
initialised from (--init_from), and the CheckpointManager that saves it. The format is model/checkpoint.py's."""

from __future__ import annotations

import tempfile

import tensorflow as tf

from core.config import HiFiGANConfig
from core.storage import TF_IO, check_writable
from model import checkpoint as ckpt_lib
from model.logging_utils import logger
from model.options import TrainingError, TrainOptions
from model.trainer import Trainer


def worker_is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints and logs: a single worker, the "chief" task, or worker 0 of a
    cluster without a chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (resolver.task_type == "worker" and resolver.task_id == 0
                                                      and "chief" not in resolver.cluster_spec().as_dict())


def init_from(trainer: Trainer, source: str, keep_schedule: bool) -> None:
    """Loads the newest checkpoint of ``source`` into a new run: the generator, the discriminators if it has them,
    and with ``keep_schedule`` its step, epoch and optimisers; otherwise the schedule starts at step 0."""
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


class RunState:
    """Saves the trainer's whole state (``ckpt-<step>``) once per step at most; every worker saves (the save is a
    collective), the chief into ``--checkpoint_path`` and the others into a scratch directory."""

    def __init__(self, trainer: Trainer, manager: tf.train.CheckpointManager, chief: bool, resumed: bool):
        self.trainer, self.manager, self.chief = trainer, manager, chief
        self._last_saved = int(trainer.step) if resumed and chief else None

    def save(self) -> None:
        step = int(self.trainer.step)
        if self._last_saved != step:
            self.manager.save(checkpoint_number=step)
            self._last_saved = step

    def kept(self) -> str:
        """The newest checkpoint saved by this manager, for error messages."""
        return self.manager.latest_checkpoint or "none saved"


def open_run_state(cfg: HiFiGANConfig, trainer: Trainer, options: TrainOptions) -> RunState:
    """Resumes ``trainer`` from ``options.checkpoint_path`` if it holds a checkpoint, else initialises it from
    ``options.init_from`` if given; the chief checks that it can write there and writes config.json beside."""
    chief = worker_is_chief(trainer.strategy)
    if chief:
        check_writable(options.checkpoint_path, "checkpoint directory", io=TF_IO)
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
        init_from(trainer, options.init_from, options.keep_schedule)
    if chief:
        ckpt_lib.write_json_beside(options.checkpoint_path, cfg)
    return RunState(trainer, manager, chief, resumed=bool(latest))
