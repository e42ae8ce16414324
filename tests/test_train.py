"""The trainer on real shards: overfitting one batch, exact resume, guards, fine-tuning, logs, presets, CLI."""

import glob
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from model import checkpoint as ckpt_lib
from model.data import DataError
from model.generator import Generator
from core.storage import OutputError
from model.options import TrainingError, TrainOptions
from model.train import train
from model.trainer import Trainer
from core.config import load_config
from tests.train_helpers import config_file, debug_config, scalars, tone_clip, tone_shards, write_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny: 4 frames per segment, batch 1, one period discriminator (the MSD is always the full one).
CFG = debug_config(segment_size=256, batch_size=1, mpd_periods=[2], learning_rate=0.001)


def options(data_dir, checkpoint_path, steps, **kwargs):
    kwargs.setdefault("validation_interval", 0)
    return TrainOptions(data_dir=str(data_dir), checkpoint_path=str(checkpoint_path), training_steps=steps,
                        stdout_interval=1, checkpoint_interval=kwargs.pop("checkpoint_interval", 1000),
                        progress_bar=False, **kwargs)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Tone shards and a step-0 checkpoint to start from, shared by the tests (read only: tests copy them)."""
    root = tmp_path_factory.mktemp("train")
    tone_shards(root / "data", CFG, num_train=2, num_val=1, frames=(6, 12), num_shards={"train": 2})
    train(CFG, options(root / "data", root / "init", 0))
    return root


@pytest.fixture
def make_trainer():
    """A factory of fresh Trainers of the tiny CFG: no test sees the weights, optimiser slots or traced step
    another test left. A fresh one holds random weights until train() restores a checkpoint into it."""
    return lambda: Trainer(CFG)


def start(root, name):
    """A checkpoint directory holding a copy of the shared step-0 checkpoint."""
    shutil.copytree(root / "init", root / name)
    return root / name


def weights(trainer):
    return [v.numpy() for v in trainer.generator.weights + trainer.mpd.weights + trainer.msd.weights]


def test_overfitting_one_batch_lowers_the_mel_error(root, make_trainer, tmp_path):
    frames = CFG.frames_per_segment
    clip = tone_clip(np.random.default_rng(1), frames * CFG.audio.hop_size, CFG.audio.sampling_rate)
    write_shards(tmp_path, CFG, {"train": [clip], "val": [clip]})
    trainer = train(CFG, options(tmp_path, start(root, "overfit"), 24), trainer=make_trainer())
    errors = [h["mel_spec_error"] for h in trainer.history]
    assert len(errors) == 24
    # Measured: ~0.4 after 24 steps (after 12 steps 0.65-0.78, too close to the bound for a GAN on 2 threads)
    assert np.mean(errors[-3:]) < 0.75 * np.mean(errors[:3]), errors


def test_resume_is_exact(root, make_trainer):
    trainer = make_trainer()
    split, whole = start(root, "split"), start(root, "whole")
    train(CFG, options(root / "data", split, 1), trainer=trainer)  # stops mid-epoch (2 steps per epoch)
    assert ckpt_lib.latest_checkpoint(str(split)).endswith("ckpt-1")
    train(CFG, options(root / "data", split, 3), trainer=trainer)  # finishes epoch 1, one step of epoch 2
    resumed = weights(trainer)
    train(CFG, options(root / "data", whole, 3), trainer=trainer)
    assert int(trainer.step) == 3 and int(trainer.epoch) == 1
    for a, b in zip(resumed, weights(trainer)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # The learning rate followed the epochs: lr * lr_decay ** 1.
    np.testing.assert_allclose(float(trainer.optim_g.learning_rate), 0.001 * 0.999, rtol=1e-6)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(root, make_trainer, tmp_path):
    trainer = make_trainer()
    path = start(root, "nan")
    train(CFG, options(root / "data", path, 1), trainer=trainer)
    good = weights(trainer)
    clips = [tone_clip(np.random.default_rng(k), 8 * CFG.audio.hop_size, CFG.audio.sampling_rate) for k in range(2)]
    nan_mel = np.full((8, CFG.audio.num_mels), np.nan, np.float32)
    write_shards(tmp_path, CFG, {"train": clips, "val": clips}, mels={"train": [(nan_mel, nan_mel)] * 2,
                                                                      "val": [(nan_mel, nan_mel)] * 2})
    with pytest.raises(TrainingError, match="non-finite loss at step 1 .*ckpt-1"):
        train(CFG, options(tmp_path, path, 4, checkpoint_interval=1), trainer=trainer)
    assert sorted(os.path.basename(p) for p in glob.glob(str(path / "ckpt-*.index"))) == ["ckpt-0.index",
                                                                                           "ckpt-1.index"]
    restored = Generator(CFG.generator)
    restored.build((None, None, CFG.audio.num_mels))
    tf.train.Checkpoint(generator=restored).restore(ckpt_lib.latest_checkpoint(str(path))).expect_partial()
    for a, b in zip(good, [v.numpy() for v in restored.weights]):
        np.testing.assert_array_equal(a, b)


def test_fine_tuning_from_a_generator_only_checkpoint(root, make_trainer, tmp_path, caplog):
    trainer = make_trainer()
    # The converted checkpoint holds the step-0 checkpoint's generator.
    trainer.checkpoint.restore(ckpt_lib.latest_checkpoint(str(root / "init")))
    converted = tmp_path / "converted"
    source = tf.train.Checkpoint(generator=trainer.generator, step=tf.Variable(7, dtype=tf.int64),
                                 epoch=tf.Variable(3, dtype=tf.int64))
    tf.train.CheckpointManager(source, str(converted), 1, checkpoint_name="ckpt").save()
    tone_shards(tmp_path / "teacher", CFG, num_train=2, num_val=1, frames=(6, 10), teacher_forced=True)
    with caplog.at_level(logging.INFO, logger="hifigan.train"):
        train(CFG, options(tmp_path / "teacher", tmp_path / "ft", 1, fine_tuning=True, init_from=str(converted)),
              trainer=trainer)
    assert "no discriminator weights" in caplog.text
    assert int(trainer.step) == 1 and int(trainer.epoch) == 0  # schedule afresh
    train(CFG, options(tmp_path / "teacher", tmp_path / "ft_keep", 9, fine_tuning=True, init_from=str(converted),
                       keep_schedule=True), trainer=trainer)
    assert len(trainer.history) == 2 and int(trainer.step) == 9
    assert json.loads((tmp_path / "ft" / "audio_fingerprint.json").read_text()) == CFG.audio.fingerprint()
    generator, cfg = ckpt_lib.restore_generator(str(tmp_path / "ft"))
    assert cfg.audio == CFG.audio and not generator.weight_norm


def test_validation_writes_tensorboard_logs_and_no_grappler_failure(root, make_trainer, capfd):
    """Two steps, each followed by validation: the logs hold every tag, the evaluation metrics' (core/metrics.py)
    among them. TF 2.21's remapper fails on the train step's graph with an E-level log line; the step runs without
    it, and the option is back on afterwards for the functions that fuse fine (inference, validation: it runs
    between the steps here)."""
    trainer = make_trainer()
    path = start(root, "logs")
    train(CFG, options(root / "data", path, 2, validation_interval=1, summary_interval=1, validation_metric_clips=1),
          trainer=trainer)
    assert len(trainer.history) == 2 and all(np.isfinite(h["gen_loss_total"]) for h in trainer.history)
    output = capfd.readouterr()
    assert "remapper failed" not in output.err
    assert tf.config.optimizer.get_experimental_options().get("remapping", True)
    tags = set()
    for event_file in glob.glob(str(path / "logs" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            tags.update(v.tag for v in event.summary.value)
    expected = {"training/gen_loss_total", "training/mel_spec_error", "training/disc_loss_total",
                "training/d_real_score", "training/grad_norm_g", "training/learning_rate",
                "validation/mel_spec_error", "validation/stft_distance", "gt/y_0", "generated/y_hat_0/audio",
                "generated/y_hat_0/mel"}
    assert expected <= tags, expected - tags
    # The metrics defined on the val clip (a tone of 6-12 frames at 8 kHz: too short for PESQ, which is left out,
    # and voiced, so V/UV F1 and periodicity are defined) are written once per validation, finite.
    written = scalars(path / "logs")
    metrics = {"validation/mel_l1", "validation/mrstft", "validation/periodicity", "validation/vuv_f1"}
    assert metrics <= set(written) and "validation/pesq" not in written, set(written)
    for tag in metrics:
        assert len(written[tag]) == 2 and np.all(np.isfinite(written[tag])), (tag, written[tag])
    assert np.all(np.asarray(written["validation/vuv_f1"]) <= 1)
    assert np.all(np.asarray(written["validation/mrstft"]) > 0)
    assert output.out.count("validation at step") == 2 and "V/UV F1 " in output.out


def run_cli(*args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "run_train.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    return proc.returncode, lines


def test_unwritable_checkpoint_directory_is_refused_before_training(tmp_path):
    tone_shards(tmp_path / "data", CFG, num_train=2, num_val=1)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OutputError, match="a_file/ckpt: cannot write to this checkpoint directory .*not a directory"):
        train(CFG, options(tmp_path / "data", tmp_path / "a_file" / "ckpt", 1))


def test_cli_refuses_shards_of_another_fingerprint(tmp_path):
    other = debug_config(fmax=3000)
    tone_shards(tmp_path, CFG, num_train=2, num_val=1, fingerprint_cfg=other)
    rc, lines = run_cli("--config", config_file(tmp_path, CFG), "--data_dir", str(tmp_path),
                        "--checkpoint_path", str(tmp_path / "ckpt"))
    assert rc == 2 and len(lines) == 1
    assert "fmax is 3000.0 in the shards but 4000.0 in the config" in lines[0]


def test_cli_refuses_fine_tuning_on_ground_truth_shards(tmp_path):
    tone_shards(tmp_path, CFG, num_train=2, num_val=1, teacher_forced=False)
    rc, lines = run_cli("--config", config_file(tmp_path, CFG), "--data_dir", str(tmp_path), "--fine_tuning",
                        "--checkpoint_path", str(tmp_path / "ckpt"))
    assert rc == 2 and len(lines) == 1 and "--fine_tuning needs teacher-forced shards" in lines[0]


@pytest.mark.parametrize("preset", ["v1_16k", "v1_24k", "v1_44k"])
def test_presets_train(preset, tmp_path):
    """Each preset validates and trains (channels and segment shrunk so that it is fast)."""
    full = load_config(os.path.join(ROOT, "configs", f"{preset}.json"))
    raw = {**full.raw, "upsample_initial_channel": 32, "segment_size": 4 * full.audio.hop_size, "batch_size": 1,
           "mpd_periods": [2]}
    cfg = debug_config(**raw)
    tone_shards(tmp_path / "data", cfg, num_train=1, num_val=1, frames=(4, 6))
    # One step: running it eagerly is quicker than tracing it.
    tf.config.run_functions_eagerly(True)
    try:
        trainer = train(cfg, options(tmp_path / "data", tmp_path / "ckpt", 1))
    finally:
        tf.config.run_functions_eagerly(False)
    assert len(trainer.history) == 1 and np.isfinite(trainer.history[0]["gen_loss_total"])
    assert trainer.generator(tf.zeros([1, 4, cfg.audio.num_mels])).shape == (1, 4 * cfg.audio.hop_size, 1)


# --- bad input: one-line errors ----------------------------------------------------------------------------


def other_model_checkpoint(path, cfg):
    """A generator-only checkpoint of ``cfg`` with its config.json beside it, as run_convert.py writes."""
    generator = Generator(cfg.generator)
    generator.build((None, None, cfg.audio.num_mels))
    tf.train.CheckpointManager(tf.train.Checkpoint(generator=generator), str(path), 1, checkpoint_name="ckpt").save()
    ckpt_lib.write_json_beside(str(path), cfg)
    return path


def test_checkpoint_of_another_model_is_a_one_line_error(root, make_trainer, tmp_path):
    trainer = make_trainer()
    other = other_model_checkpoint(tmp_path / "other", debug_config(**{**CFG.raw, "upsample_initial_channel": 32}))
    why = "the checkpoint is of another model: upsample_initial_channel is 32 in the checkpoint's config.json, 16 here"
    with pytest.raises(ckpt_lib.CheckpointError, match=f"^{other}: {why}") as err:
        train(CFG, options(root / "data", tmp_path / "init", 1, init_from=str(other)), trainer=trainer)
    assert "\n" not in str(err.value)
    with pytest.raises(ckpt_lib.CheckpointError, match=f"^{other}: {why}"):
        ckpt_lib.restore_generator(str(other), CFG)
    # Resuming: the discriminators' keys count too.
    resumed = start(root, "other_discriminators")
    (resumed / "config.json").write_text(json.dumps({**CFG.raw, "mpd_periods": [2, 3]}))
    with pytest.raises(ckpt_lib.CheckpointError, match=r"mpd_periods is \[2, 3\] in the checkpoint's config.json, "
                                                       r"\[2\] here"):
        train(CFG, options(root / "data", resumed, 1), trainer=trainer)
    # Without config.json beside it: the restore's own error, on one line.
    os.remove(other / "config.json")
    with pytest.raises(ckpt_lib.CheckpointError, match=f"^{other}: checkpoint ckpt-1 is of another model "
                                                       r"\(ValueError: .*incompatible") as err:
        ckpt_lib.restore_generator(str(other), CFG)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_broken_checkpoint_files_are_one_line_errors(root, make_trainer, damage):
    trainer = make_trainer()
    path = start(root, f"broken_{damage}")
    (data_file,) = glob.glob(str(path / "ckpt-0.data-*"))
    if damage == "missing":
        os.remove(data_file)
    else:
        with open(data_file, "r+b") as f:
            f.truncate(os.path.getsize(data_file) // 2)
    why = f"^{path}: checkpoint ckpt-0 is incomplete or corrupt"
    with pytest.raises(ckpt_lib.CheckpointError, match=why) as err:
        ckpt_lib.restore_generator(str(path))
    assert "\n" not in str(err.value)
    with pytest.raises(ckpt_lib.CheckpointError, match=why):
        train(CFG, options(root / "data", path, 1), trainer=trainer)
    with pytest.raises(ckpt_lib.CheckpointError, match=why):
        train(CFG, options(root / "data", root / f"from_broken_{damage}", 1, init_from=str(path)), trainer=trainer)


def test_discriminators_of_a_training_checkpoint_are_found(root):
    """tf.train.list_variables names a trainer's discriminator weights under optim_d/, not mpd/."""
    prefix = ckpt_lib.latest_checkpoint(str(root / "init"))
    assert ckpt_lib.has_discriminators(prefix) and ckpt_lib.has_optimizers(prefix)


@pytest.mark.parametrize("index, why", [("garbage\n", "cannot be parsed"),
                                        ('model_checkpoint_path: "ckpt-7"\n', "names ckpt-7, which is not there"),
                                        (None, "is missing")])
def test_corrupt_checkpoint_index_is_refused(root, make_trainer, index, why):
    """TensorFlow reads such an index as "no checkpoint": training would start again at step 0 over ckpt-0."""
    trainer = make_trainer()
    path = start(root, f"index_{why.split()[0]}")
    if index is None:
        os.remove(path / "checkpoint")
    else:
        (path / "checkpoint").write_text(index)
    message = f"^{path / 'checkpoint'}: the index file {why} but ckpt-0 is there: write the line " \
              "'model_checkpoint_path: \"ckpt-0\"' into it"
    with pytest.raises(ckpt_lib.CheckpointError, match=message):
        ckpt_lib.latest_checkpoint(str(path))
    with pytest.raises(ckpt_lib.CheckpointError, match=message):
        train(CFG, options(root / "data", path, 1), trainer=trainer)
    assert sorted(os.listdir(path)) == sorted(["audio_fingerprint.json", "ckpt-0.data-00000-of-00001", "ckpt-0.index",
                                               "config.json", "data_mixture.json", "logs"] +
                                              (["checkpoint"] if index else []))


def copy_data(root, tmp_path):
    shutil.copytree(root / "data", tmp_path / "data")
    return tmp_path / "data"


def test_missing_shard_is_refused_before_training(root, tmp_path):
    data_dir = copy_data(root, tmp_path)
    os.remove(data_dir / "train-00001-of-00002.tfrecord")
    with pytest.raises(DataError, match=f"^{data_dir}: shard train-00001-of-00002.tfrecord listed in manifest.json "
                                        "does not exist$"):
        train(CFG, options(data_dir, tmp_path / "ckpt", 1))  # refused before a Trainer is built
    assert not (tmp_path / "ckpt").exists()


def test_truncated_shard_stops_training_and_keeps_the_checkpoint(root, make_trainer, tmp_path):
    trainer = make_trainer()
    data_dir = copy_data(root, tmp_path)
    shard = data_dir / "train-00001-of-00002.tfrecord"
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 100)
    path = start(root, "truncated_shard")
    files = lambda: {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}  # noqa: E731
    before = files()
    # NOTE: it fails before the first step (the shuffle buffer reads every shard): a step here would cost ~9 s
    # (conftest's per-test seeding clears TF's kernel cache). Val shards: tests/test_data.py.
    with pytest.raises(DataError, match=f"^{data_dir}: cannot read a shard \\(DataLossError: truncated record .*\\); "
                                        ".*stopped at step 0, the last checkpoint is kept .*ckpt-0") as err:
        train(CFG, options(data_dir, path, 3), trainer=trainer)
    assert "\n" not in str(err.value)
    assert files() == before


def test_train_split_smaller_than_a_batch_names_the_data_dir(tmp_path):
    write_shards(tmp_path, CFG, {"train": [], "val": []})
    with pytest.raises(DataError, match=f"^{tmp_path}: the train split has 0 clips, fewer than one batch of 1$"):
        train(CFG, options(tmp_path, tmp_path / "ckpt", 1))


@pytest.mark.parametrize("flag, value", [("training_steps", -1), ("training_epochs", 0), ("checkpoint_interval", 0),
                                         ("validation_interval", -5), ("max_to_keep", 0), ("stdout_interval", -1),
                                         ("validation_clips", 0), ("seed", -1)])
def test_nonsensical_options_are_refused(tmp_path, capsys, flag, value):
    """In-process: run_train.main exits 2 with one line (TrainOptions refuses the value)."""
    import run_train

    rc = run_train.main(["--config", config_file(tmp_path, CFG), "--data_dir", str(tmp_path),
                         "--checkpoint_path", str(tmp_path / "ckpt"), f"--{flag}", str(value)])
    minimum = 0 if flag in ("training_steps", "validation_interval", "seed") else 1
    assert rc == 2
    assert capsys.readouterr().err.strip() == f"error: --{flag} must be an integer >= {minimum}, got {value}"
    assert not (tmp_path / "ckpt").exists()
