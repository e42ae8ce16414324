"""The training checkpoint format, shared by the trainer, the converter and inference.

A checkpoint directory holds one ``tf.train.Checkpoint(generator=G, mpd=MPD, msd=MSD, optim_g=..., optim_d=...,
step=int64, epoch=int64)`` kept by a ``tf.train.CheckpointManager`` (``ckpt-N.index`` / ``.data-*`` and the
``checkpoint`` index file), with ``config.json`` (the resolved config, original flat keys) and
``audio_fingerprint.json`` beside it. Converted checkpoints have no optimisers; inference reads the generator
only.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from pipeline.config import ConfigError, HiFiGANConfig, config_from_dict

CHECKPOINT_NAME = "ckpt"
CONFIG_NAME = "config.json"
FINGERPRINT_NAME = "audio_fingerprint.json"


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used; one line naming the path."""


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """Prefix of the newest complete checkpoint in ``checkpoint_dir`` (e.g. ``dir/ckpt-12``), or None."""
    return tf.train.latest_checkpoint(checkpoint_dir)


def write_json_beside(checkpoint_dir: str, cfg: HiFiGANConfig) -> None:
    """Writes config.json and audio_fingerprint.json into ``checkpoint_dir`` (created if needed)."""
    tf.io.gfile.makedirs(checkpoint_dir)
    with tf.io.gfile.GFile(os.path.join(checkpoint_dir, CONFIG_NAME), "w") as f:
        f.write(cfg.to_json())
    with tf.io.gfile.GFile(os.path.join(checkpoint_dir, FINGERPRINT_NAME), "w") as f:
        f.write(json.dumps(cfg.audio.fingerprint(), indent=2, sort_keys=True))


def config_beside(checkpoint_dir: str) -> HiFiGANConfig:
    """The config.json written beside a checkpoint."""
    path = os.path.join(checkpoint_dir, CONFIG_NAME)
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return config_from_dict(json.loads(f.read()))
    except tf.errors.NotFoundError:
        raise CheckpointError(f"{path}: not found (pass the config explicitly)") from None
    except (json.JSONDecodeError, ConfigError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def restore_generator(checkpoint_dir: str, cfg: HiFiGANConfig | None = None, fold_weight_norm: bool = True):
    """Builds a Generator and restores its weights from the latest checkpoint in ``checkpoint_dir``.

    ``cfg`` defaults to the config.json beside the checkpoint. Returns (generator, cfg); the generator's weight
    norms are folded for inference unless ``fold_weight_norm`` is False.
    """
    from model.generator import Generator

    latest = latest_checkpoint(checkpoint_dir)
    if latest is None:
        raise CheckpointError(f"{checkpoint_dir}: no checkpoint found")
    cfg = cfg or config_beside(checkpoint_dir)
    generator = Generator(cfg.generator)
    generator.build((None, None, cfg.audio.num_mels))
    tf.train.Checkpoint(generator=generator).restore(latest).expect_partial().assert_existing_objects_matched()
    if fold_weight_norm:
        generator.remove_weight_norm()
    return generator, cfg


def has_discriminators(checkpoint_prefix: str) -> bool:
    """Whether a checkpoint holds discriminator weights (converted generator-only checkpoints do not)."""
    names = {name for name, _ in tf.train.list_variables(checkpoint_prefix)}
    return any(name.startswith("mpd/") for name in names) and any(name.startswith("msd/") for name in names)


def has_optimizers(checkpoint_prefix: str) -> bool:
    names = {name for name, _ in tf.train.list_variables(checkpoint_prefix)}
    return any(name.startswith("optim_g/") for name in names)
