"""The training checkpoint format, shared by the trainer, the converter and inference.

A checkpoint directory holds one ``tf.train.Checkpoint(generator=G, mpd=MPD, msd=MSD, optim_g=..., optim_d=...,
step=int64, epoch=int64)`` kept by a ``tf.train.CheckpointManager`` (``ckpt-N.index`` / ``.data-*`` and the
``checkpoint`` index file), with ``config.json`` (the resolved config, original flat keys) and
``audio_fingerprint.json`` beside it. Converted checkpoints have no optimisers; inference reads the generator
only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import trackable_object_graph_pb2

from core.config import CONFIG_NAME, ConfigError, HiFiGANConfig, config_from_dict
from core.errors import UserError
from core.storage import first_line
from model.compat import silence_failed_restore

CHECKPOINT_NAME = "ckpt"
FINGERPRINT_NAME = "audio_fingerprint.json"
INDEX_NAME = "checkpoint"  # the CheckpointManager's index file (a text CheckpointState)


class CheckpointError(UserError):
    """A checkpoint directory that cannot be used; one line naming the path."""


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """Prefix of the newest complete checkpoint in ``checkpoint_dir`` (e.g. ``dir/ckpt-12``), or None.

    Raises CheckpointError when ckpt-N files are there but the ``checkpoint`` index file is missing, cannot be
    parsed or names a checkpoint that is not there. NOTE: TensorFlow then logs a warning and returns None, and a
    trainer would silently start again from step 0 and save over the checkpoints.
    """
    index = os.path.join(checkpoint_dir, INDEX_NAME)
    with _quiet_tensorflow_logs():
        try:
            state = tf.train.get_checkpoint_state(checkpoint_dir)
        except ValueError:  # parsed, but without model_checkpoint_path
            state = None
    prefix = state.model_checkpoint_path if state else None
    if prefix and tf.io.gfile.exists(prefix + ".index"):
        return prefix
    pattern = re.compile(rf"{CHECKPOINT_NAME}-(\d+)\.index")
    numbers = sorted(int(m.group(1)) for m in (pattern.fullmatch(os.path.basename(path)) for path in
                                                tf.io.gfile.glob(os.path.join(checkpoint_dir, "*.index"))) if m)
    if not numbers:
        return None
    newest = f"{CHECKPOINT_NAME}-{numbers[-1]}"
    if prefix:
        why = f"names {os.path.basename(prefix)}, which is not there"
    elif tf.io.gfile.exists(index):
        why = "cannot be parsed"
    else:
        why = "is missing"
    raise CheckpointError(f"{index}: the index file {why} but {newest} is there: write the line "
                          f"'model_checkpoint_path: \"{newest}\"' into it to use {newest}, or train into another "
                          f"directory to start afresh")


@contextlib.contextmanager
def _quiet_tensorflow_logs():
    """TensorFlow's Python warnings off inside (they would add lines to a one-line error)."""
    tf_logger = tf.get_logger()
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR + 10)
    try:
        yield
    finally:
        tf_logger.setLevel(level)


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


# The generator's config keys (the original's flat names). NOTE: other resblock_dilation_sizes change no weight's
# shape (TensorFlow would restore them), but the weights belong to another model: refused as well.
GENERATOR_KEYS = ("num_mels", "resblock", "upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel",
                  "resblock_kernel_sizes", "resblock_dilation_sizes")


def _model_values(cfg: HiFiGANConfig, discriminators: bool) -> dict:
    """The model's config values by flat key (the discriminators' too if ``discriminators``)."""
    values = {key: getattr(cfg.generator, key) for key in GENERATOR_KEYS}
    if discriminators:
        values.update(mpd_periods=cfg.discriminator.mpd_periods,
                      discriminator_channel_divisor=cfg.discriminator.channel_divisor)
    return values


def model_mismatch(checkpoint_dir: str, cfg: HiFiGANConfig, discriminators: bool = True) -> str | None:
    """How ``cfg``'s model differs from that of the config.json beside a checkpoint, e.g. "upsample_initial_channel
    is 64 in the checkpoint's config.json, 256 here"; None when it does not or there is no readable config.json."""
    try:
        theirs = config_beside(checkpoint_dir)
    except CheckpointError:
        return None
    ours, theirs = _model_values(cfg, discriminators), _model_values(theirs, discriminators)
    keys = [key for key in ours if ours[key] != theirs[key]]
    if not keys:
        return None
    key = keys[0]  # values through json.dumps: tuples as JSON lists, the config file's spelling
    why = f"{key} is {json.dumps(theirs[key])} in the checkpoint's config.json, {json.dumps(ours[key])} here"
    return why + (f"; {', '.join(keys[1:])} {'differ' if keys[2:] else 'differs'} too" if keys[1:] else "")


def restore(checkpoint: tf.train.Checkpoint, prefix: str, cfg: HiFiGANConfig, discriminators: bool = True,
            partial: bool = False) -> None:
    """Restores ``checkpoint`` (objects built from ``cfg``) from ``prefix``, a checkpoint of the same model.

    ``discriminators``: whether it restores MPD and MSD (their config keys must then match too); ``partial``:
    the checkpoint may hold more than ``checkpoint`` restores. Raises a one-line CheckpointError naming the
    directory for a checkpoint of another model (the differing key when config.json is beside it) and for
    missing or corrupt files, before anything is restored in the first case.
    """
    checkpoint_dir, name = os.path.dirname(prefix) or ".", os.path.basename(prefix)
    mismatch = model_mismatch(checkpoint_dir, cfg, discriminators)
    if mismatch:
        raise CheckpointError(f"{checkpoint_dir}: the checkpoint is of another model: {mismatch}; use the config it "
                              f"was trained with")
    try:
        status = checkpoint.restore(prefix)
        if partial:
            status.expect_partial()
        status.assert_existing_objects_matched()
        return
    except (ValueError, AssertionError, IndexError, tf.errors.OpError) as e:
        silence_failed_restore(e)
        other_model = isinstance(e, ValueError) and "incompatible" in str(e)
        reason = first_line(e, innermost=False, max_chars=200)
    if other_model:
        raise CheckpointError(f"{checkpoint_dir}: checkpoint {name} is of another model ({reason}); use the config "
                              f"it was trained with")
    raise CheckpointError(f"{checkpoint_dir}: checkpoint {name} is incomplete or corrupt ({reason})")


def restore_generator(checkpoint_dir: str, cfg: HiFiGANConfig | None = None, fold_weight_norm: bool = True):
    """Builds a Generator and restores its weights from the latest checkpoint in ``checkpoint_dir``.

    ``cfg`` defaults to the config.json beside the checkpoint. Returns (generator, cfg); the generator's weight
    norms are folded for inference unless ``fold_weight_norm`` is False. Raises CheckpointError.
    """
    from model.generator import Generator

    latest = latest_checkpoint(checkpoint_dir)
    if latest is None:
        raise CheckpointError(f"{checkpoint_dir}: no checkpoint found")
    cfg = cfg or config_beside(checkpoint_dir)
    generator = Generator(cfg.generator)
    generator.build((None, None, cfg.audio.num_mels))
    restore(tf.train.Checkpoint(generator=generator), latest, cfg, discriminators=False, partial=True)
    if fold_weight_norm:
        generator.remove_weight_norm()
    return generator, cfg


def _top_level_objects(checkpoint_prefix: str) -> set[str]:
    """Names of the objects a checkpoint was saved with (generator, mpd, optim_g, step, ...).

    NOTE: not from tf.train.list_variables: it names each variable by its first path in the object graph, and a
    trainer's discriminator weights are listed under optim_d/ (the optimiser tracks them too), not mpd/.
    """
    try:
        reader = tf.train.load_checkpoint(checkpoint_prefix)
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    except (tf.errors.OpError, ValueError, IndexError, DecodeError) as e:
        raise CheckpointError(f"{os.path.dirname(checkpoint_prefix) or '.'}: checkpoint "
                              f"{os.path.basename(checkpoint_prefix)} is incomplete or corrupt "
                              f"({first_line(e, innermost=False, max_chars=200)})") from None
    return {child.local_name for child in graph.nodes[0].children} if graph.nodes else set()


def has_discriminators(checkpoint_prefix: str) -> bool:
    """Whether a checkpoint holds discriminator weights (converted generator-only checkpoints do not)."""
    return {"mpd", "msd"} <= _top_level_objects(checkpoint_prefix)


def has_optimizers(checkpoint_prefix: str) -> bool:
    return "optim_g" in _top_level_objects(checkpoint_prefix)
