"""Converting the original's PyTorch checkpoints (``g_XXXXXXXX``, ``do_XXXXXXXX``) into our checkpoint format.

The result is a directory that inference, export and ``run_train.py --init_from`` read: a
``tf.train.Checkpoint(generator=G[, mpd=MPD, msd=MSD], step, epoch)`` written by a CheckpointManager, with
config.json and audio_fingerprint.json beside it (model/checkpoint.py). Optimiser states are not converted
(torch's Adam moments are keyed by parameter order; fine-tuning restarts them).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import tensorflow as tf

from model.checkpoint import CHECKPOINT_NAME, write_json_beside
from model.torch_checkpoint import TorchCheckpointError, load_torch_file, state_dict
from core.config import HiFiGANConfig
from core.errors import UserError
from core.storage import TF_IO, check_writable, existing_output

log = logging.getLogger(__name__)


class ConversionError(UserError):
    """A checkpoint that does not fit the config, or an unusable output directory; one line."""


def _load_into(load_fn, model, state, path: str, entry: str) -> None:
    try:
        load_fn(model, state)
    except ValueError as e:
        raise ConversionError(f"{path}: '{entry}': {e}") from None


def _counter(obj: dict, key: str, path: str) -> int:
    value = obj.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConversionError(f"{path}: '{key}' must be a non-negative integer, got {value!r}")
    return value


def build_models(cfg: HiFiGANConfig, generator_path: str, discriminator_path: str | None = None) -> dict:
    """The checkpoint's objects, loaded from torch files: {'generator', ['mpd', 'msd'], 'step', 'epoch'}.

    The generator keeps its weight norm (g and v), as training needs it. Raises TorchCheckpointError or
    ConversionError with a one-line message naming the file and the offending key.
    """
    from model.discriminators import MultiPeriodDiscriminator, MultiScaleDiscriminator
    from model.generator import Generator
    from model.torch_weights import load_generator_state, load_mpd_state, load_msd_state

    generator = Generator(cfg.generator)
    generator.build((None, None, cfg.audio.num_mels))
    _load_into(load_generator_state, generator, state_dict(load_torch_file(generator_path), "generator",
                                                           generator_path), generator_path, "generator")
    objects = {"generator": generator, "step": 0, "epoch": 0}
    if discriminator_path:
        do = load_torch_file(discriminator_path)
        mpd = MultiPeriodDiscriminator(cfg.discriminator.mpd_periods, cfg.discriminator.channel_divisor)
        msd = MultiScaleDiscriminator(cfg.discriminator.channel_divisor)
        mpd.build()
        msd.build()
        _load_into(load_mpd_state, mpd, state_dict(do, "mpd", discriminator_path), discriminator_path, "mpd")
        _load_into(load_msd_state, msd, state_dict(do, "msd", discriminator_path), discriminator_path, "msd")
        objects.update(mpd=mpd, msd=msd, step=_counter(do, "steps", discriminator_path),
                       epoch=_counter(do, "epoch", discriminator_path))
    return objects


def convert(cfg: HiFiGANConfig, generator_path: str, output_dir: str, discriminator_path: str | None = None) -> str:
    """Writes the converted checkpoint to ``output_dir``; returns the checkpoint prefix (``output_dir/ckpt-N``).

    All is written to a temporary directory beside ``output_dir`` and renamed at the end, so a failure leaves
    nothing behind. ``output_dir`` must not exist or be empty.
    """
    output_dir = os.path.abspath(output_dir)
    if existing_output(output_dir):
        raise ConversionError(f"{output_dir}: exists and is not an empty directory")
    parent = check_writable(os.path.dirname(output_dir), "output directory's parent", io=TF_IO)
    objects = build_models(cfg, generator_path, discriminator_path)
    step, epoch = objects.pop("step"), objects.pop("epoch")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
        ckpt = tf.train.Checkpoint(**objects, step=tf.Variable(step, dtype=tf.int64),
                                   epoch=tf.Variable(epoch, dtype=tf.int64))
        manager = tf.train.CheckpointManager(ckpt, tmp, max_to_keep=1, checkpoint_name=CHECKPOINT_NAME)
        prefix = manager.save(checkpoint_number=step)
        write_json_beside(tmp, cfg)
        if os.path.isdir(output_dir):
            os.rmdir(output_dir)
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prefix = os.path.join(output_dir, os.path.basename(prefix))
    log.info("converted %s%s -> %s (step %d, epoch %d)", generator_path,
             f" + {discriminator_path}" if discriminator_path else "", prefix, step, epoch)
    return prefix


__all__ = ["ConversionError", "TorchCheckpointError", "build_models", "convert"]
