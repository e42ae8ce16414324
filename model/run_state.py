"""The state of a training run on disk: which worker is the chief, the checkpoint it resumes from or the one it is
initialised from (--init_from), the lock that keeps a second training out of its directory, and the
CheckpointManager that saves it. The format is model/checkpoint.py's.

What a fault leaves:
  - kill -9 at any moment: the ``checkpoint`` index names the newest checkpoint written whole (TensorFlow writes
    a checkpoint's files first and the index last, by a rename), and the lock stays behind; the next run finds
    its holder gone and takes it over.
  - a save that fails (full disk, I/O error): the run stops with one line (CheckpointSaveError); the previous
    checkpoint stays the newest and what the failed save wrote is deleted.
  - SIGINT or SIGTERM during a save: held until the save has ended, then delivered (the trainer saves and stops).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import signal
import socket
import tempfile

import tensorflow as tf

from core.config import CONFIG_NAME, HiFiGANConfig
from core.storage import TF_IO, check_writable, first_line, is_uri
from model import checkpoint as ckpt_lib
from model.corpora import mixture_record_for, write_mixture
from model.data import Corpus
from model.logging_utils import logger
from model.options import TrainingError, TrainOptions
from model.trainer import Trainer

LOCK_NAME = "train.lock"


class CheckpointSaveError(ckpt_lib.CheckpointError):
    """A checkpoint that could not be written (full disk, I/O or bucket error); the previous one is kept."""

    exit_status = 1


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


def _process_ended(pid: int) -> bool:
    """Whether no process ``pid`` runs on this host (a zombie, killed but not yet reaped by its parent, has ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2] == "Z"  # the state follows the command name, which is in parentheses
    except (OSError, ValueError, IndexError):  # no /proc (not Linux)
        return False


class RunLock:
    """``train.lock`` in a checkpoint directory while a training writes to it: JSON with host, pid and start time,
    created with O_EXCL (only one process can create it), deleted when the run ends.

    A lock whose holder ran on this host and no longer runs (killed by -9, by the OOM killer) is taken over, with
    one log line. One of another host cannot be checked: the run is refused, and the message says to delete it if
    that training is gone. NOTE: object stores (gs://, s3://) have no O_EXCL and tf.io.gfile no conditional write:
    there the lock is checked, then written, and two runs started within that moment could both go on.
    """

    def __init__(self, checkpoint_dir: str):
        self.directory, self.path = checkpoint_dir, os.path.join(checkpoint_dir, LOCK_NAME)
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}

    def acquire(self) -> None:
        """Takes the lock; TrainingError (one line naming the holder) when another training holds it."""
        for _ in range(3):  # the lock can vanish or be taken over between our tries
            if self._create():
                return
            holder = self._read()
            if holder is None:
                continue
            if not self._ended(holder):
                raise TrainingError(f"{self.directory}: another training writes to this checkpoint directory "
                                    f"({self._describe(holder)}); wait for it to end, or delete {self.path} if it "
                                    f"no longer runs")
            logger.warning("%s: taking over the lock of a training that no longer runs (%s)", self.directory,
                           self._describe(holder))
            if self._read() == holder:
                tf.io.gfile.remove(self.path)
        raise TrainingError(f"{self.path}: cannot take the lock (other trainings keep taking it)")

    def release(self) -> None:
        """Deletes the lock if it is still ours."""
        try:
            if self._read() == self.holder:
                tf.io.gfile.remove(self.path)
        except (tf.errors.OpError, TrainingError) as e:  # the run's own outcome matters more
            logger.warning("%s: cannot delete the lock (%s)", self.path, first_line(e, with_type=False))

    def _create(self) -> bool:
        text = json.dumps(self.holder)
        if is_uri(self.path):
            if tf.io.gfile.exists(self.path):
                return False
            with tf.io.gfile.GFile(self.path, "w") as f:
                f.write(text)
            return True
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return True

    def _read(self) -> dict | None:
        """The holder written in the lock; None if it has gone. TrainingError if it cannot be read."""
        try:
            with tf.io.gfile.GFile(self.path, "r") as f:
                holder = json.loads(f.read())
            if {"host", "pid", "started"} <= set(holder):
                return holder
            why = "not a lock of this trainer"
        except tf.errors.NotFoundError:
            return None
        except (tf.errors.OpError, json.JSONDecodeError, TypeError) as e:
            why = first_line(e)
        raise TrainingError(f"{self.path}: a lock that cannot be read ({why}) holds this checkpoint directory; "
                            f"delete it if no training writes there")

    def _ended(self, holder: dict) -> bool:
        return holder["host"] == self.holder["host"] and isinstance(holder["pid"], int) and \
            holder["pid"] != os.getpid() and _process_ended(holder["pid"])

    @staticmethod
    def _describe(holder: dict) -> str:
        return f"host {holder['host']}, pid {holder['pid']}, started {holder['started']}"


@contextlib.contextmanager
def signal_handlers(handlers: dict):
    """Installs ``handlers`` ({signum: handler}) for the block, then puts the earlier ones back (SIG_DFL for one
    that was not set from Python, which signal.signal reports as None). Nothing outside the main thread, which
    gets the signals."""
    previous = {}
    try:
        for signum, handler in handlers.items():
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM wait until the block has ended, then reach the handlers they would have reached
    (KeyboardInterrupt in the loop): a save is never cut short. Only from the main thread."""
    received = []
    hold = lambda signum, frame: received.append(signum)  # noqa: E731
    try:
        with signal_handlers({signal.SIGINT: hold, signal.SIGTERM: hold}):
            yield
    finally:  # the earlier handlers are back: the held signals reach them
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


class RunState:
    """Saves the trainer's whole state (``ckpt-<step>``) once per step at most; every worker saves (the save is a
    collective), the chief into ``--checkpoint_path`` (which it holds locked until :meth:`close`) and the others
    into a scratch directory."""

    def __init__(self, trainer: Trainer, manager: tf.train.CheckpointManager, chief: bool, resumed: bool,
                 lock: RunLock | None = None):
        self.trainer, self.manager, self.chief, self.lock = trainer, manager, chief, lock
        self._last_saved = int(trainer.step) if resumed and chief else None

    def save(self) -> None:
        """Saves the current step unless saved; CheckpointSaveError (one line) if it cannot be written."""
        step = int(self.trainer.step)
        if self._last_saved == step:
            return
        with _signals_held():
            try:
                self.manager.save(checkpoint_number=step)
            except (tf.errors.OpError, OSError) as e:
                raise self._save_error(step, e) from None
            self._last_saved = step  # before a held signal is delivered: the save is done

    def _save_error(self, step: int, error: BaseException) -> CheckpointSaveError:
        """Deletes what the failed save of ``step`` wrote; the one-line error."""
        prefix = os.path.join(self.manager.directory, f"{ckpt_lib.CHECKPOINT_NAME}-{step}")
        if self.manager.latest_checkpoint != prefix:
            ckpt_lib.remove_unfinished(prefix)
        why = error.message if isinstance(error, tf.errors.OpError) else first_line(error, with_type=False)
        why = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:\w+\]", "", why)  # TensorFlow's function and op names
        return CheckpointSaveError(f"{self.manager.directory}: cannot save checkpoint {os.path.basename(prefix)} "
                                   f"({type(error).__name__}: {why}); stopped at step {step}, the last checkpoint "
                                   f"is kept ({self.kept()})")

    def kept(self) -> str:
        """The newest checkpoint saved by this manager, for error messages."""
        return self.manager.latest_checkpoint or "none saved"

    def close(self) -> None:
        """Releases the checkpoint directory's lock."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> "RunState":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _resume(cfg: HiFiGANConfig, trainer: Trainer, options: TrainOptions, latest: str, chief: bool) -> None:
    """Restores ``latest``; refuses a training setting that differs from the checkpoint's config unless
    --allow_config_change, which logs each change and (on the chief) appends it to config_history.jsonl."""
    ckpt_lib.restore(trainer.checkpoint, latest, trainer.cfg)
    step = int(trainer.step)
    logger.info("resumed from step %d", step)
    changes = ckpt_lib.setting_changes(options.checkpoint_path, cfg)
    if changes and not options.allow_config_change:
        described = ckpt_lib.describe_changes(changes, ckpt_lib.config_source(options.checkpoint_path))
        raise TrainingError(f"{options.checkpoint_path}: {described}; pass "
                            f"--allow_config_change to resume with {'this change' if len(changes) == 1 else 'these'} "
                            f"(recorded in {ckpt_lib.HISTORY_NAME} beside the checkpoint)")
    for key, old, new in changes:
        logger.warning("config change at step %d: %s %s -> %s (--allow_config_change)", step, key,
                       json.dumps(old), json.dumps(new))
    if changes and chief:
        ckpt_lib.record_changes(options.checkpoint_path, step, changes)


def open_run_state(cfg: HiFiGANConfig, trainer: Trainer, options: TrainOptions,
                   corpora: list[Corpus] | None = None) -> RunState:
    """Resumes ``trainer`` from ``options.checkpoint_path`` if it holds a checkpoint, else initialises it from
    ``options.init_from`` if given; the chief checks that it can write there, locks it and writes config.json
    beside (a new run's; a resumed run keeps its own), and the data mixture of ``corpora`` (data_mixture.json;
    a resumed run's mixture must sample as the recorded one unless --allow_config_change, as for config.json).
    Close the RunState to release the lock."""
    chief = worker_is_chief(trainer.strategy)
    lock = None
    if chief:
        check_writable(options.checkpoint_path, "checkpoint directory", io=TF_IO)
        lock = RunLock(options.checkpoint_path)
        lock.acquire()
    try:
        # Every worker resumes from the chief's directory (a shared filesystem); non-chiefs write to a scratch
        # one. NOTE: looked up before the CheckpointManager is made: it would read a corrupt index as "none".
        latest = ckpt_lib.latest_checkpoint(options.checkpoint_path)
        save_dir = options.checkpoint_path if chief else tempfile.mkdtemp(prefix="hifigan_worker_")
        manager = tf.train.CheckpointManager(trainer.checkpoint, save_dir, max_to_keep=options.max_to_keep,
                                             checkpoint_name=ckpt_lib.CHECKPOINT_NAME)
        if latest:
            _resume(cfg, trainer, options, latest, chief)
            if options.init_from:
                logger.warning("--init_from ignored: %s already holds a checkpoint", save_dir)
        elif options.init_from:
            init_from(trainer, options.init_from, options.keep_schedule)
        mixture = mixture_record_for(options.checkpoint_path, corpora, int(trainer.step) if latest else None,
                                     options.allow_config_change) if corpora else None
        if chief:
            # A resumed run keeps its config.json (written anew only where it is missing).
            with_config = not latest or not tf.io.gfile.exists(os.path.join(options.checkpoint_path, CONFIG_NAME))
            ckpt_lib.write_json_beside(options.checkpoint_path, cfg, with_config=with_config)
            if mixture is not None:
                write_mixture(options.checkpoint_path, mixture)
        return RunState(trainer, manager, chief, resumed=bool(latest), lock=lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
