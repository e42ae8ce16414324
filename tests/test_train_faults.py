"""Trainer faults (issue 10, item 4): kill -9 of a real training process, a checkpoint write that fails, SIGTERM
during validation or a save, the checkpoint directory's lock, a training setting changed on resume, a corrupt
newest checkpoint. Tiny config, at most one step in this process per test, run eagerly (for so few steps quicker
than tracing the step), and one Trainer for the module: every call restores its whole state from a checkpoint.

Run as a module, ``python -m tests.test_train_faults <run_train.py flags>`` is run_train.py (eager) with a fault
hook: ``HIFIGAN_TEST_KILL_DURING_SAVE=N`` makes it kill itself with SIGKILL while it saves ckpt-N, after the
checkpoint's files are written and before the index file names it (the moment a kill can do most harm).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from core import cli
from model import checkpoint as ckpt_lib
from model.options import TrainingError
from model.run_state import LOCK_NAME
from model.train import train
from model.trainer import Trainer
from tests.test_train import CFG, ROOT, options, start
from tests.train_helpers import config_file, debug_config, tone_shards

KILL_ENV = "HIFIGAN_TEST_KILL_DURING_SAVE"


def save_with_fault(fault, step: int | None = None):
    """A CheckpointManager.save that runs ``fault()`` while it saves ckpt-``step`` (every checkpoint if None),
    between writing the checkpoint's files and naming it in the index (TensorFlow's write callbacks run there,
    before the manager's own)."""
    save = tf.train.CheckpointManager.save

    def save_and_fault(self, checkpoint_number=None, check_interval=True, options=None):
        if step is None or checkpoint_number == step:
            options = tf.train.CheckpointOptions(experimental_write_callbacks=[fault])
        return save(self, checkpoint_number, check_interval, options)

    return save_and_fault


def cli_flags(cfg_path, data_dir, checkpoint_path, steps: int) -> list[str]:
    return ["--config", str(cfg_path), "--data_dir", str(data_dir), "--checkpoint_path", str(checkpoint_path),
            "--training_steps", str(steps), "--checkpoint_interval", "1", "--validation_interval", "0"]


@pytest.fixture(scope="module", autouse=True)
def eager():
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Tone shards, their config file and a step-0 checkpoint (read only: tests copy it with ``start``)."""
    root = tmp_path_factory.mktemp("faults")
    tone_shards(root / "data", CFG, num_train=2, num_val=1, frames=(6, 12), num_shards={"train": 2})
    config_file(root, CFG)
    train(CFG, options(root / "data", root / "init", 0))
    return root


@pytest.fixture(scope="module")
def trainer(root):
    """One Trainer for the module's in-process runs; each train() call replaces its state from a checkpoint."""
    return Trainer(CFG)


def lock_of(path) -> dict:
    return json.loads((path / LOCK_NAME).read_text())


def training_state(prefix: str) -> dict:
    """Every value a checkpoint holds (weights, optimiser slots, step, epoch) but its save counter."""
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith("save_counter") and name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def test_kill_9_during_a_save_then_resume_gives_the_uninterrupted_state(root, trainer, caplog):
    """A real run_train.py process killed at a random step N (seeded), inside the save of ckpt-N: the newest
    complete checkpoint (ckpt-N-1) loads, and the step resumed from it ends in the state the killed run had
    computed and written in ckpt-N (weights, optimiser slots, step, epoch)."""
    kill_at = random.Random(10).randint(1, 3)
    killed = start(root, "killed")
    proc = subprocess.Popen([sys.executable, "-m", "tests.test_train_faults",
                             *cli_flags(root / "config.json", root / "data", killed, 4)], cwd=ROOT,
                            env={**os.environ, KILL_ENV: str(kill_at)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
    # ckpt-<kill_at> was written but the index does not name it; the lock of the dead process stays.
    assert ckpt_lib.latest_checkpoint(str(killed)) == str(killed / f"ckpt-{kill_at - 1}")
    assert lock_of(killed)["pid"] == proc.pid
    uninterrupted = training_state(str(killed / f"ckpt-{kill_at}"))  # written whole, not yet named by the index
    with caplog.at_level(logging.WARNING, logger="hifigan.train"):
        train(CFG, options(root / "data", killed, kill_at), trainer=trainer)
    assert f"{killed}: taking over the lock of a training that no longer runs (host {socket.gethostname()}, " \
           f"pid {proc.pid}, started " in caplog.text
    assert len(trainer.history) == 1 and not (killed / LOCK_NAME).exists()
    resumed = training_state(ckpt_lib.latest_checkpoint(str(killed)))
    assert resumed.keys() == uninterrupted.keys() and int(resumed["step/.ATTRIBUTES/VARIABLE_VALUE"]) == kill_at
    # Measured: bitwise equal (eager on CPU in both processes); the bound is the exact-resume test's.
    for name, value in uninterrupted.items():
        np.testing.assert_allclose(resumed[name], value, rtol=0, atol=1e-6, err_msg=name)


@contextlib.contextmanager
def file_size_limit(num_bytes: int):
    """In this process, a write that would make a file larger than ``num_bytes`` fails with EFBIG ("File too
    large"), as one on a full disk fails with ENOSPC: a real I/O error inside TensorFlow's checkpoint writer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel's SIGXFSZ ends the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (num_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_stops_with_one_line(root, trainer, capsys, monkeypatch):
    # NOTE: the limit holds for every file of this process: a logging handler an earlier test left on a file
    # (pytest's capture of that test) may pass it and print "--- Logging error ---" with a traceback; that is the
    # test session's, not the trainer's, so such handler errors are dropped here.
    monkeypatch.setattr(logging, "raiseExceptions", False)
    path = start(root, "disk_full")
    kept = {p.name: p.read_bytes() for p in path.glob("ckpt-0*")} | {"checkpoint": (path / "checkpoint").read_bytes()}
    # The tiny trainer's checkpoint data file is ~7 MB; the logs and the index stay far below 1 MB.
    with file_size_limit(1 << 20):  # through run_train.py's wrapper
        status = cli.run(lambda _: train(CFG, options(root / "data", path, 2, checkpoint_interval=1), trainer=trainer))
    stderr = capsys.readouterr().err
    assert status == 1 and "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {path}: cannot save checkpoint ckpt-1 (OutOfRangeError: {path}/ckpt-1_temp/")
    assert line.endswith(f"; File too large); stopped at step 1, the last checkpoint is kept ({path}/ckpt-0)")
    # The previous checkpoint is untouched and loads; nothing of ckpt-1 is left, nor the lock.
    assert {name: (path / name).read_bytes() for name in kept} == kept
    assert ckpt_lib.latest_checkpoint(str(path)) == str(path / "ckpt-0")
    assert int(tf.train.load_checkpoint(str(path / "ckpt-0")).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == 0
    ckpt_lib.restore_generator(str(path))
    assert not list(path.glob("ckpt-1*")) and not (path / LOCK_NAME).exists()


@pytest.fixture
def sigterm_unhandled():
    """While the test runs, a SIGTERM that the trainer does not turn into KeyboardInterrupt fails it (rather than
    ending pytest)."""
    def fail(signum, frame):
        raise AssertionError("SIGTERM reached the default handler")

    previous = signal.signal(signal.SIGTERM, fail)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("during", ["validation", "final save"])
def test_sigterm_leaves_a_loadable_checkpoint_of_the_current_step(root, trainer, monkeypatch, sigterm_unhandled,
                                                                  during):
    """SIGTERM inside validation after step 0, or inside the final save after step 0 (and inside any save after it):
    the run ends with ckpt-1 saved whole and KeyboardInterrupt; the lock was held and is gone. (Were the signal not
    held until the save ends, that save and the one made on the interrupt would both be cut short before the index
    names ckpt-1.)"""
    path = start(root, f"sigterm_{during.replace(' ', '_')}")
    seen = []

    def sigterm():
        seen.append(lock_of(path))
        os.kill(os.getpid(), signal.SIGTERM)

    if during == "validation":
        import model.validation

        distance = model.validation.multi_resolution_stft_distance  # called per val clip (eager)
        monkeypatch.setattr(model.validation, "multi_resolution_stft_distance",
                            lambda *args: (sigterm(), distance(*args))[1])
        steps, intervals = 3, {"validation_interval": 1}
    else:
        monkeypatch.setattr(tf.train.CheckpointManager, "save", save_with_fault(sigterm))
        steps, intervals = 1, {}
    with pytest.raises(KeyboardInterrupt):
        train(CFG, options(root / "data", path, steps, **intervals), trainer=trainer)
    assert seen and seen[0]["pid"] == os.getpid() and not (path / LOCK_NAME).exists()
    assert ckpt_lib.latest_checkpoint(str(path)) == str(path / "ckpt-1")
    assert ckpt_lib.is_complete(str(path / "ckpt-1"))
    train(CFG, options(root / "data", path, 1), trainer=trainer)  # resumes at step 1: no step to run
    assert int(trainer.step) == 1 and trainer.history == []


def test_a_second_training_into_a_locked_directory_is_refused_naming_the_holder(root, trainer):
    path = start(root, "locked")
    host = socket.gethostname()
    for holder in ({"host": host, "pid": os.getpid(), "started": "2026-12-01T10:00:00+00:00"},  # alive
                   {"host": "other-host", "pid": 1, "started": "2026-12-01T11:00:00+00:00"}):  # cannot be checked
        (path / LOCK_NAME).write_text(json.dumps(holder))
        with pytest.raises(TrainingError) as err:
            train(CFG, options(root / "data", path, 1), trainer=trainer)
        assert str(err.value) == (f"{path}: another training writes to this checkpoint directory (host "
                                  f"{holder['host']}, pid {holder['pid']}, started {holder['started']}); wait for it "
                                  f"to end, or delete {path / LOCK_NAME} if it no longer runs")
        assert lock_of(path) == holder
    assert ckpt_lib.latest_checkpoint(str(path)) == str(path / "ckpt-0")


def test_a_stale_lock_is_reported_and_taken_over(root, trainer, caplog):
    path = start(root, "stale")
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = {"host": socket.gethostname(), "pid": int(ended.stdout), "started": "2026-12-01T10:00:00+00:00"}
    (path / LOCK_NAME).write_text(json.dumps(holder))
    with caplog.at_level(logging.WARNING, logger="hifigan.train"):
        train(CFG, options(root / "data", path, 0), trainer=trainer)
    taken = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert taken == [f"{path}: taking over the lock of a training that no longer runs (host {holder['host']}, pid "
                     f"{holder['pid']}, started {holder['started']})"]
    assert not (path / LOCK_NAME).exists()


def test_a_changed_training_setting_is_refused_unless_allowed_then_recorded(root, trainer, caplog):
    path = start(root, "changed")
    config_json = (path / "config.json").read_text()
    changed = debug_config(**{**CFG.raw, "batch_size": 2, "learning_rate": 0.0005, "segment_size": 512,
                              "lambda_mel": 30.0})
    with pytest.raises(TrainingError) as err:
        train(changed, options(root / "data", path, 0), trainer=trainer)
    where = "in the checkpoint's config.json"
    assert str(err.value) == (f"{path}: batch_size is 1 {where}, 2 here; lambda_mel is 45.0 {where}, 30.0 here; "
                              f"learning_rate is 0.001 {where}, 0.0005 here; segment_size is 256 {where}, 512 here; "
                              f"pass --allow_config_change to resume with these (recorded in config_history.jsonl "
                              f"beside the checkpoint)")
    assert not (path / "config_history.jsonl").exists() and not (path / LOCK_NAME).exists()
    with caplog.at_level(logging.WARNING, logger="hifigan.train"):
        train(changed, options(root / "data", path, 0, allow_config_change=True), trainer=trainer)
    assert "config change at step 0: batch_size 1 -> 2 (--allow_config_change)" in caplog.text
    history = [json.loads(line) for line in (path / "config_history.jsonl").read_text().splitlines()]
    assert history == [{"step": 0, "key": "batch_size", "old": 1, "new": 2},
                       {"step": 0, "key": "lambda_mel", "old": 45.0, "new": 30.0},
                       {"step": 0, "key": "learning_rate", "old": 0.001, "new": 0.0005},
                       {"step": 0, "key": "segment_size", "old": 256, "new": 512}]
    assert (path / "config.json").read_text() == config_json
    effective = ckpt_lib.config_beside(str(path))
    assert effective.training.batch_size == 2 and effective.loss.lambda_mel == 30.0
    # The new settings are now the checkpoint's: resuming with them needs no flag; going back is a change again.
    train(changed, options(root / "data", path, 0), trainer=trainer)
    with pytest.raises(TrainingError, match=r"batch_size is 2 in the checkpoint's config.json \+ "
                                            r"config_history.jsonl, 1 here; "):
        train(CFG, options(root / "data", path, 0), trainer=trainer)
    # A new run's config.json starts without a history.
    ckpt_lib.write_json_beside(str(path), CFG)
    assert not (path / "config_history.jsonl").exists() and ckpt_lib.config_beside(str(path)) == CFG


def test_a_corrupt_newest_checkpoint_names_the_newest_complete_one(root, trainer):
    path = start(root, "corrupt")
    for name in ("index", "data-00000-of-00001"):  # a second checkpoint, ckpt-1 (holding step 0), the newest
        shutil.copy(path / f"ckpt-0.{name}", path / f"ckpt-1.{name}")
    (path / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    data_file = path / "ckpt-1.data-00000-of-00001"
    with open(data_file, "r+b") as f:
        f.truncate(os.path.getsize(data_file) // 2)
    line = 'model_checkpoint_path: "ckpt-0"'
    with pytest.raises(ckpt_lib.CheckpointError) as err:
        train(CFG, options(root / "data", path, 0), trainer=trainer)
    assert str(err.value).startswith(f"{path}: checkpoint ckpt-1 is incomplete or corrupt (")
    assert str(err.value).endswith(f"); the newest complete one is ckpt-0: write the line '{line}' into "
                                   f"{path / 'checkpoint'} to use it")
    # Without an index file, the one it suggests is the newest complete one too.
    os.remove(path / "checkpoint")
    with pytest.raises(ckpt_lib.CheckpointError, match=f"the index file is missing but ckpt-0 is there: write the "
                                                       f"line '{line}' into it"):
        train(CFG, options(root / "data", path, 0), trainer=trainer)
    (path / "checkpoint").write_text(line + "\n")  # as the messages say
    train(CFG, options(root / "data", path, 0), trainer=trainer)
    assert ckpt_lib.latest_checkpoint(str(path)) == str(path / "ckpt-0") and int(trainer.step) == 0


if __name__ == "__main__":
    import keras

    from tests.conftest import TEST_SEED

    keras.utils.set_random_seed(TEST_SEED)  # NOTE: tf.data's seeded shuffles also depend on the global seed
    tf.config.run_functions_eagerly(True)
    if os.environ.get(KILL_ENV):
        tf.train.CheckpointManager.save = save_with_fault(lambda: os.kill(os.getpid(), signal.SIGKILL),
                                                          int(os.environ[KILL_ENV]))
    import run_train

    sys.exit(run_train.main(sys.argv[1:]))
