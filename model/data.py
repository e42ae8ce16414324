"""Streaming tf.data input from the Beam job's TFRecord shards (see core/records.py and core/manifest.py).

Nothing is cached in memory: each epoch lists the shards from the manifest, shuffles them, reads several at once
and crops every clip on the frame grid on the fly. The whole order is a function of (seed, epoch): the shard
order and the shuffle buffer are seeded with both, and each clip's crop start is drawn with a stateless random
op keyed by (seed, epoch, position of the clip in the epoch's read order). A run resumed mid-epoch rebuilds the
same epoch and skips the batches it already consumed, which makes N steps + M steps equal N + M steps.

A mixture of corpora (several shard directories, ``Corpus``) is sampled clip by clip: clip k of an epoch comes from
corpus i with probability weight_i, drawn by a stateless categorical op keyed by (seed, epoch, k); each corpus
yields an endless stream of its own shuffled and cropped train clips (pass r keyed by (seed, epoch, corpus, r)),
so a corpus sampled more than its share repeats and one sampled less is seen in part (another part each epoch).
An epoch is (all the corpora's train clips) // global batch steps, as for one corpus; the whole order is still a
function of (seed, epoch). With one corpus the input is exactly the single-directory one.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import re
from typing import Iterable, Iterator, Sequence

import google_crc32c
import tensorflow as tf

from core.config import HiFiGANConfig
from core.errors import UserError
from core.manifest import MANIFEST_NAME, Manifest, ShardFile
from core.records import parse, parse_and_crop
from core.storage import TF_IO, first_line, read_bytes

# Shards read at once, and the bounded shuffle buffer (in clips) behind them.
CYCLE_LENGTH = 4
SHUFFLE_BUFFER = 256
VERIFY_THREADS = 8  # shards checksummed at once (google_crc32c and tf.io.gfile reads release the GIL)
VERIFY_CHUNK = 16 * 2**20
CHOICE_CHUNK = 1024  # a mixture's corpus choices drawn at once


log = logging.getLogger(__name__)


class DataError(UserError):
    """Shards that cannot be read; the message is one line naming the path."""


@dataclasses.dataclass(frozen=True)
class Corpus:
    """One shard directory of a training: its manifest, its sampling weight in a mixture (the weights sum to 1)
    and its name in TensorBoard tags and console lines."""

    data_dir: str
    manifest: Manifest
    weight: float = 1.0
    name: str = ""


def load_manifest(data_dir: str) -> Manifest:
    """Reads ``<data_dir>/manifest.json``: a local path or any tf.io.gfile filesystem (gs://, ...)."""
    path = os.path.join(data_dir, MANIFEST_NAME)
    try:
        return Manifest.from_json(read_bytes(path, io=TF_IO).decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found (is --data_dir the output of run_preprocess.py?)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a valid manifest ({e})") from None


def shard_paths(data_dir: str, manifest: Manifest, split: str) -> list[str]:
    """Full paths of a split's shards, in the manifest's order."""
    if split not in manifest.splits or not manifest.splits[split].shards:
        hint = " (train with --validation_interval 0 to skip validation)" if split == "val" else ""
        raise DataError(f"{os.path.join(data_dir, MANIFEST_NAME)}: split '{split}' has no shards{hint}")
    return [os.path.join(data_dir, name) for name in manifest.splits[split].shards]


def check_shards_exist(data_dir: str, manifest: Manifest) -> None:
    """Raises DataError when a shard the manifest lists is not in ``data_dir`` (one directory listing)."""
    try:
        present = set(tf.io.gfile.listdir(data_dir))
    except tf.errors.NotFoundError:
        present = set()
    missing = [name for split in manifest.splits.values() for name in split.shards
               if name not in present and not tf.io.gfile.exists(os.path.join(data_dir, name))]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{data_dir}: shard {missing[0]}{more} listed in {MANIFEST_NAME} does not exist")


def verify_shards(data_dir: str, manifest: Manifest) -> None:
    """DataError (one line naming the first bad shard) unless every shard the manifest lists exists with the
    size and CRC-32C the job recorded: the trainer never reads a shard the manifest did not commit.

    A manifest written before sizes and checksums were recorded lists bare names: its shards are only checked to
    exist, with one warning.
    """
    check_shards_exist(data_dir, manifest)
    listed = {name: split.shard_files.get(name) for split in manifest.splits.values() for name in split.shards}
    unverified = sorted(name for name, file in listed.items() if file is None)
    if unverified:
        log.warning("%s: %s records no size or checksum for %d shards (written by an older run_preprocess.py); "
                        "they are read unverified", data_dir, MANIFEST_NAME, len(unverified))
    expected = sorted((name, file) for name, file in listed.items() if file is not None)
    with concurrent.futures.ThreadPoolExecutor(VERIFY_THREADS) as pool:
        problems = [p for p in pool.map(lambda item: _shard_problem(data_dir, *item), expected) if p]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"{data_dir}: shard {problems[0]}{more}; run run_preprocess.py again")


def _shard_problem(data_dir: str, name: str, expected: ShardFile) -> str | None:
    """None if shard ``name`` has the size and CRC-32C the manifest recorded; else what differs."""
    path = os.path.join(data_dir, name)
    num_bytes = tf.io.gfile.stat(path).length
    if num_bytes != expected.num_bytes:
        return f"{name} is {num_bytes} bytes, but {MANIFEST_NAME} recorded {expected.num_bytes}"
    crc = google_crc32c.Checksum()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(VERIFY_CHUNK):
            crc.update(chunk)
    crc32c = crc.hexdigest().decode("ascii")
    if crc32c != expected.crc32c:
        return f"{name} has CRC-32C {crc32c}, but {MANIFEST_NAME} recorded {expected.crc32c}"
    return None


def checked_read(dataset: Iterable, data_dir: str, manifest: Manifest) -> Iterator:
    """Iterates ``dataset`` of ``data_dir``'s shards; a read failure (truncated, corrupt or vanished shard) is a
    one-line DataError naming data_dir and, when TensorFlow's message names it, the shard."""
    return checked_mixture_read(dataset, [Corpus(data_dir, manifest)])


def checked_mixture_read(dataset: Iterable, corpora: Sequence[Corpus]) -> Iterator:
    """``checked_read`` of a dataset that reads the shards of ``corpora``: the error names the directory of the
    shard TensorFlow names (all the directories when it names none)."""
    iterator = iter(dataset)
    while True:
        try:
            element = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            reason = _op_error_reason(e)
            named = [(c.data_dir, name) for c in corpora for split in c.manifest.splits.values()
                     for name in split.shards if name in reason]
            data_dir, where = (named[0][0], f"shard {named[0][1]}") if named else \
                (", ".join(c.data_dir for c in corpora), "a shard")
            raise DataError(f"{data_dir}: cannot read {where} ({reason}); run "
                            f"run_preprocess.py again or fix the shard") from None
        yield element


def _op_error_reason(error: tf.errors.OpError) -> str:
    """The first line of an iterator's OpError without TF's wrapping. NOTE: it reads "{{function_node ...}}
    truncated record at 12 ... [Op:IteratorGetNext] name: " and names the file only when it cannot open it."""
    kind, _, line = first_line(error, innermost=False).partition(": ")
    reason = re.sub(r"^\{\{[^}]*\}\}\s*|\s*\[Op:[^\]]*\].*$", "", line)
    return f"{kind}: {reason or 'no message'}"


def steps_per_epoch(manifest: Manifest, batch_size: int, data_dir: str | None = None) -> int:
    """Optimiser steps in one epoch: whole global batches of the train split (drop_remainder). ``data_dir``
    names the shards in the error."""
    steps = manifest.splits["train"].num_examples // batch_size
    if steps < 1:
        where = f"{data_dir}: " if data_dir else ""
        raise DataError(f"{where}the train split has {manifest.splits['train'].num_examples} clips, fewer than one "
                        f"batch of {batch_size}")
    return steps


def mixture_steps_per_epoch(corpora: Sequence[Corpus], batch_size: int) -> int:
    """Optimiser steps in one epoch of a mixture: whole global batches of all the corpora's train clips."""
    if len(corpora) == 1:
        return steps_per_epoch(corpora[0].manifest, batch_size, corpora[0].data_dir)
    clips = sum(c.manifest.splits["train"].num_examples for c in corpora)
    if clips < batch_size:
        raise DataError(f"{', '.join(c.data_dir for c in corpora)}: the train splits have {clips} clips together, "
                        f"fewer than one batch of {batch_size}")
    return clips // batch_size


def train_dataset(data_dir: str, manifest: Manifest, cfg: HiFiGANConfig, seed: int, epoch: int,
                  batch_size: int | None = None, num_shards: int = 1, shard_index: int = 0,
                  num_batches: int | None = None, skip_batches: int = 0) -> tf.data.Dataset:
    """One epoch of training batches of ``data_dir``'s shards, a function of (seed, epoch) only (see
    :func:`mixture_train_dataset`)."""
    return mixture_train_dataset([Corpus(data_dir, manifest)], cfg, seed, epoch, batch_size, num_shards,
                                 shard_index, num_batches, skip_batches)


def mixture_train_dataset(corpora: Sequence[Corpus], cfg: HiFiGANConfig, seed: int, epoch: int,
                          batch_size: int | None = None, num_shards: int = 1, shard_index: int = 0,
                          num_batches: int | None = None, skip_batches: int = 0) -> tf.data.Dataset:
    """One epoch of training batches of ``corpora`` (one, or a mixture sampled with their weights), a function of
    (seed, epoch) only. A mixture's epoch is endless: cut it with ``num_batches``.

    Yields dicts of mel, mel_loss [batch_size, F, num_mels] and audio [batch_size, F * hop_size] float32.
    ``batch_size`` defaults to the config's. For several input pipelines (tf.distribute), every pipeline walks
    the same clip order and keeps every ``num_shards``-th clip from ``shard_index``: the global batch is then the
    same clips whatever the topology. ``num_batches`` cuts the epoch (every replica must take the same number
    of steps), ``skip_batches`` drops the batches already consumed by an interrupted run.
    """
    batch_size = batch_size or cfg.training.batch_size
    epoch_key = tf.constant([seed, epoch], tf.int64)
    if len(corpora) == 1:
        ds = _cropped_clips(corpora[0], cfg, epoch_key, _mix(seed, epoch, 1), _mix(seed, epoch, 2))
    else:
        ds = _sampled_clips(corpora, cfg, epoch_key)
    if num_shards > 1:
        # After the shuffle (and the sampling), so that the global batch is the same clips whatever the topology.
        ds = ds.shard(num_shards, shard_index)
    ds = ds.batch(batch_size, drop_remainder=True)
    if num_batches is not None:
        ds = ds.take(num_batches)
    if skip_batches:
        ds = ds.skip(skip_batches)
    options = tf.data.Options()
    options.deterministic = True
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _cropped_clips(corpus: Corpus, cfg: HiFiGANConfig, key: tf.Tensor, file_seed, buffer_seed) -> tf.data.Dataset:
    """One pass over ``corpus``'s train clips, shuffled (shard order by ``file_seed``, a bounded buffer by
    ``buffer_seed``) and cropped on the frame grid with stateless crop starts keyed by (``key``, read position)."""
    paths = shard_paths(corpus.data_dir, corpus.manifest, "train")
    files = tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths), seed=file_seed)
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=min(CYCLE_LENGTH, len(paths)), block_length=1,
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    num_mels, audio_encoding = cfg.audio.num_mels, corpus.manifest.audio_encoding
    frames, hop_size = cfg.frames_per_segment, cfg.audio.hop_size

    # NOTE: no autograph (nothing here needs it): converting the function cost ~0.2 s before the first batch.
    @tf.autograph.experimental.do_not_convert
    def crop(index, record):
        clip_key = tf.random.experimental.stateless_fold_in(key, index)
        return parse_and_crop(record, clip_key, num_mels, audio_encoding, frames, hop_size)

    # Crops are cut before the shuffle: the buffer then holds small segments, and parsing runs while it fills
    # (a buffer of whole records would wait for SHUFFLE_BUFFER reads before the first parse).
    ds = ds.enumerate().map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.shuffle(SHUFFLE_BUFFER, seed=buffer_seed, reshuffle_each_iteration=False)


def _sampled_clips(corpora: Sequence[Corpus], cfg: HiFiGANConfig, epoch_key: tf.Tensor) -> tf.data.Dataset:
    """An endless stream of cropped clips, clip k from corpus i with probability corpora[i].weight: a stateless
    categorical draw keyed by (epoch_key, k // CHOICE_CHUNK); corpus i's clips are its passes r = 0, 1, ...,
    each shuffled and cropped with keys from (epoch_key, i + 1, r)."""
    def stream(i: int, corpus: Corpus) -> tf.data.Dataset:
        @tf.autograph.experimental.do_not_convert
        def one_pass(r):
            key = tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(epoch_key, i + 1),
                                                           r)
            seeds = tf.random.stateless_uniform([2], key, minval=0, maxval=2 ** 62, dtype=tf.int64)
            return _cropped_clips(corpus, cfg, key, seeds[0], seeds[1])

        return tf.data.Dataset.counter().flat_map(one_pass)

    logits = tf.math.log(tf.constant([[c.weight for c in corpora]], tf.float32))

    @tf.autograph.experimental.do_not_convert
    def choices(chunk):
        key = tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(epoch_key, 0), chunk)
        return tf.random.stateless_categorical(logits, CHOICE_CHUNK, key, dtype=tf.int64)[0]

    choice = tf.data.Dataset.counter().map(choices).unbatch()
    return tf.data.Dataset.choose_from_datasets([stream(i, c) for i, c in enumerate(corpora)], choice)


def _mix(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit shuffle seed from (seed, epoch, stream), stable across processes (no Python hash())."""
    return (seed * 1_000_003 + epoch * 7_919 + stream) % (2 ** 63 - 1)


def validation_dataset(data_dir: str, manifest: Manifest, cfg: HiFiGANConfig,
                       limit: int | None = None) -> tf.data.Dataset:
    """Whole clips of the val split in the manifest's order, batch 1: id [1], audio [1, N], mel, mel_loss
    [1, T, num_mels]."""
    paths = shard_paths(data_dir, manifest, "val")
    ds = tf.data.TFRecordDataset(paths)
    if limit is not None:
        ds = ds.take(limit)
    num_mels, audio_encoding = cfg.audio.num_mels, manifest.audio_encoding
    ds = ds.map(tf.autograph.experimental.do_not_convert(lambda r: parse(r, num_mels, audio_encoding)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(1).prefetch(tf.data.AUTOTUNE)


def distributed_train_dataset(strategy: tf.distribute.Strategy, data_dir: str, manifest: Manifest,
                              cfg: HiFiGANConfig, seed: int, epoch: int, skip_steps: int = 0):
    """One epoch of ``data_dir``'s shards for ``strategy`` (see :func:`distributed_mixture_dataset`)."""
    return distributed_mixture_dataset(strategy, [Corpus(data_dir, manifest)], cfg, seed, epoch, skip_steps)


def distributed_mixture_dataset(strategy: tf.distribute.Strategy, corpora: Sequence[Corpus], cfg: HiFiGANConfig,
                                seed: int, epoch: int, skip_steps: int = 0):
    """One epoch of ``corpora`` for ``strategy``: each input pipeline builds its own part
    (distribute_datasets_from_function), after the sampling of a mixture.

    The config's batch_size is the global batch; every pipeline yields per-replica batches and serves
    ``num_replicas_in_sync / num_input_pipelines`` replicas per step.
    """
    global_batch = cfg.training.batch_size
    steps = mixture_steps_per_epoch(corpora, global_batch)
    if global_batch % strategy.num_replicas_in_sync:
        raise DataError(f"batch_size {global_batch} is not divisible by {strategy.num_replicas_in_sync} replicas")

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = context.get_per_replica_batch_size(global_batch)
        replicas_here = strategy.num_replicas_in_sync // context.num_input_pipelines
        return mixture_train_dataset(corpora, cfg, seed, epoch, batch_size=per_replica,
                                     num_shards=context.num_input_pipelines, shard_index=context.input_pipeline_id,
                                     num_batches=steps * replicas_here, skip_batches=skip_steps * replicas_here)

    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return strategy.distribute_datasets_from_function(dataset_fn, options)
