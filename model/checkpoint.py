"""The training checkpoint format, shared by the trainer, the converter and inference.

A checkpoint directory holds one ``tf.train.Checkpoint(generator=G, mpd=MPD, msd=MSD, optim_g=..., optim_d=...,
step=int64, epoch=int64)`` kept by a ``tf.train.CheckpointManager`` (``ckpt-N.index`` / ``.data-*`` and the
``checkpoint`` index file), with ``config.json`` (the resolved config, original flat keys) and
``audio_fingerprint.json`` beside it. Converted checkpoints have no optimisers; inference reads the generator
only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import trackable_object_graph_pb2

from core.config import CONFIG_NAME, ConfigError, HiFiGANConfig, config_from_dict
from core.errors import UserError
from core.storage import TF_IO, first_line, is_uri, write_whole
from model.compat import silence_failed_restore

CHECKPOINT_NAME = "ckpt"
FINGERPRINT_NAME = "audio_fingerprint.json"
INDEX_NAME = "checkpoint"  # the CheckpointManager's index file (a text CheckpointState)
HISTORY_NAME = "config_history.jsonl"  # training settings changed on resume, one JSON object a line


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
    if not _numbers(checkpoint_dir):
        return None
    if prefix:
        why = f"names {os.path.basename(prefix)}, which is not there"
    elif tf.io.gfile.exists(index):
        why = "cannot be parsed"
    else:
        why = "is missing"
    newest = newest_complete(checkpoint_dir)
    if newest is None:
        raise CheckpointError(f"{index}: the index file {why} and no checkpoint here is complete: train into "
                              f"another directory to start afresh")
    raise CheckpointError(f"{index}: the index file {why} but {newest} is there: write the line "
                          f"{index_line(newest)} into it to use {newest}, or train into another directory to start "
                          f"afresh")


def _numbers(checkpoint_dir: str) -> list[int]:
    """The numbers N of the ``ckpt-N.index`` files in ``checkpoint_dir``, ascending."""
    pattern = re.compile(rf"{CHECKPOINT_NAME}-(\d+)\.index")
    return sorted(int(m.group(1)) for m in (pattern.fullmatch(os.path.basename(path)) for path in
                                             tf.io.gfile.glob(os.path.join(checkpoint_dir, "*.index"))) if m)


def index_line(name: str) -> str:
    """The line of the ``checkpoint`` index file that makes ``name`` (``ckpt-4``) the latest checkpoint, quoted."""
    return f"'model_checkpoint_path: \"{name}\"'"


def is_complete(prefix: str) -> bool:
    """Whether every tensor of the checkpoint ``prefix`` reads back (index and data files there, checksums right).

    NOTE: reads the whole checkpoint (seconds for a V1 trainer's); only error paths call it.
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError, DecodeError):
        return False
    return True


def newest_complete(checkpoint_dir: str, excluding: str | None = None) -> str | None:
    """The name (``ckpt-4``) of the newest checkpoint in ``checkpoint_dir`` that reads back whole, other than
    ``excluding``; None if there is none."""
    for number in reversed(_numbers(checkpoint_dir)):
        name = f"{CHECKPOINT_NAME}-{number}"
        if name != excluding and is_complete(os.path.join(checkpoint_dir, name)):
            return name
    return None


def corrupt_error(prefix: str, reason: str) -> CheckpointError:
    """The one-line error for an incomplete or corrupt checkpoint ``prefix``: it names the newest complete one in
    its directory and the index line that uses it."""
    checkpoint_dir, name = os.path.dirname(prefix) or ".", os.path.basename(prefix)
    older = newest_complete(checkpoint_dir, excluding=name)
    if older is None:
        hint = "no other checkpoint here is complete: train into another directory to start afresh"
    else:
        hint = (f"the newest complete one is {older}: write the line {index_line(older)} into "
                f"{os.path.join(checkpoint_dir, INDEX_NAME)} to use it")
    return CheckpointError(f"{checkpoint_dir}: checkpoint {name} is incomplete or corrupt ({reason}); {hint}")


def remove_unfinished(prefix: str) -> None:
    """Deletes what a failed save of ``prefix`` left (its ``_temp`` directory, index and data files), which the
    index file must not name; best effort (on a full disk this frees the space the partial write took)."""
    for path in tf.io.gfile.glob(prefix + "_temp*") + tf.io.gfile.glob(prefix + ".*"):
        try:
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)
        except tf.errors.OpError:
            pass


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


def write_json_beside(checkpoint_dir: str, cfg: HiFiGANConfig, with_config: bool = True) -> None:
    """Writes config.json (a new run's: any config history is removed) and audio_fingerprint.json into
    ``checkpoint_dir`` (created if needed); only the fingerprint unless ``with_config``."""
    tf.io.gfile.makedirs(checkpoint_dir)
    if with_config:
        write_whole(os.path.join(checkpoint_dir, CONFIG_NAME), cfg.to_json(), io=TF_IO)
        if tf.io.gfile.exists(os.path.join(checkpoint_dir, HISTORY_NAME)):
            tf.io.gfile.remove(os.path.join(checkpoint_dir, HISTORY_NAME))
    write_whole(os.path.join(checkpoint_dir, FINGERPRINT_NAME),
                json.dumps(cfg.audio.fingerprint(), indent=2, sort_keys=True), io=TF_IO)


def _read_text(path: str) -> str | None:
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return f.read()
    except tf.errors.NotFoundError:
        return None


def config_history(checkpoint_dir: str) -> list[dict]:
    """The changes recorded in config_history.jsonl beside a checkpoint, oldest first ([] without the file)."""
    path = os.path.join(checkpoint_dir, HISTORY_NAME)
    changes = []
    for number, line in enumerate((_read_text(path) or "").splitlines(), 1):
        try:
            change = json.loads(line)
            changes.append({"step": change["step"], "key": change["key"], "old": change["old"],
                            "new": change["new"]})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: line {number} is not a recorded change ({first_line(e)})") from None
    return changes


def config_beside(checkpoint_dir: str) -> HiFiGANConfig:
    """The config of a checkpoint: the config.json written beside it, with config_history.jsonl's changes."""
    path = os.path.join(checkpoint_dir, CONFIG_NAME)
    text = _read_text(path)
    if text is None:
        raise CheckpointError(f"{path}: not found (pass the config explicitly)")
    try:
        raw = json.loads(text)
        for change in config_history(checkpoint_dir) if isinstance(raw, dict) else ():
            raw[change["key"]] = change["new"]
        return config_from_dict(raw)
    except (json.JSONDecodeError, ConfigError) as e:
        raise CheckpointError(f"{path}: {e}") from None


# The generator's config keys (the original's flat names). NOTE: other resblock_dilation_sizes change no weight's
# shape (TensorFlow would restore them), but the weights belong to another model: refused as well.
GENERATOR_KEYS = ("num_mels", "resblock", "upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel",
                  "resblock_kernel_sizes", "resblock_dilation_sizes")


DISCRIMINATOR_KEYS = ("mpd_periods", "discriminator_channel_divisor")


def flat_values(cfg: HiFiGANConfig) -> dict:
    """Every config key's resolved value (defaults filled in), by the original's flat key, as JSON values (tuples
    as lists)."""
    values = {}
    for section in (cfg.audio, cfg.generator, cfg.loss, cfg.optimizer, cfg.training):
        values.update(dataclasses.asdict(section))
    values.update(mpd_periods=cfg.discriminator.mpd_periods,
                  discriminator_channel_divisor=cfg.discriminator.channel_divisor)
    return json.loads(json.dumps(values))


def _model_values(cfg: HiFiGANConfig, discriminators: bool) -> dict:
    """The model's config values by flat key (the discriminators' too if ``discriminators``)."""
    values = flat_values(cfg)
    return {key: values[key] for key in GENERATOR_KEYS + (DISCRIMINATOR_KEYS if discriminators else ())}


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
    why = describe_changes([(keys[0], theirs[keys[0]], ours[keys[0]])])
    return why + (f"; {', '.join(keys[1:])} {'differ' if keys[2:] else 'differs'} too" if keys[1:] else "")


def setting_changes(checkpoint_dir: str, cfg: HiFiGANConfig) -> list[tuple[str, object, object]]:
    """(key, the checkpoint's value, ``cfg``'s) for each training setting (any key but the model's, which
    :func:`restore` refuses) in which ``cfg`` differs from the checkpoint's config; [] without a config.json."""
    if _read_text(os.path.join(checkpoint_dir, CONFIG_NAME)) is None:
        return []
    ours, theirs = flat_values(cfg), flat_values(config_beside(checkpoint_dir))
    model = set(GENERATOR_KEYS + DISCRIMINATOR_KEYS)
    return [(key, theirs[key], ours[key]) for key in sorted(ours) if key not in model and ours[key] != theirs[key]]


def describe_changes(changes, source: str = CONFIG_NAME) -> str:
    """"batch_size is 16 in the checkpoint's config.json, 32 here; ..." (values as the config file spells them);
    ``source`` names where the checkpoint's values are read."""
    return "; ".join(f"{key} is {json.dumps(old)} in the checkpoint's {source}, {json.dumps(new)} here"
                     for key, old, new in changes)


def config_source(checkpoint_dir: str) -> str:
    """Where the config of a checkpoint is read: config.json, and config_history.jsonl if changes were recorded."""
    history = tf.io.gfile.exists(os.path.join(checkpoint_dir, HISTORY_NAME))
    return f"{CONFIG_NAME} + {HISTORY_NAME}" if history else CONFIG_NAME


def record_changes(checkpoint_dir: str, step: int, changes) -> None:
    """Appends ``changes`` (from :func:`setting_changes`) at ``step`` to config_history.jsonl; config.json stays."""
    lines = [json.dumps(change) for change in config_history(checkpoint_dir)]
    lines += [json.dumps({"step": step, "key": key, "old": old, "new": new}) for key, old, new in changes]
    write_whole(os.path.join(checkpoint_dir, HISTORY_NAME), "\n".join(lines) + "\n", io=TF_IO)


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
    raise corrupt_error(prefix, reason)


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
        raise corrupt_error(checkpoint_prefix, first_line(e, innermost=False, max_chars=200)) from None
    return {child.local_name for child in graph.nodes[0].children} if graph.nodes else set()


def has_discriminators(checkpoint_prefix: str) -> bool:
    """Whether a checkpoint holds discriminator weights (converted generator-only checkpoints do not)."""
    return {"mpd", "msd"} <= _top_level_objects(checkpoint_prefix)


def has_optimizers(checkpoint_prefix: str) -> bool:
    return "optim_g" in _top_level_objects(checkpoint_prefix)
