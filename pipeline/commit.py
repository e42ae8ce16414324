"""A dataset is committed as a whole: a reader of the output directory sees the old complete dataset or the new
complete one, never a mix.

1. Each shard is written under a temporary name and renamed to a content-addressed one,
   ``<split>-SSSSS-of-NNNNN-<first 12 hex digits of its SHA-256>.tfrecord`` (:func:`shard_name`): a new shard
   never replaces an old one unless their bytes are identical.
2. The job's last step writes ``rejected.jsonl`` and the manifest it would commit, ``manifest.pending.json``.
3. The launcher (:func:`commit`, after the job has finished) checks the job's guards (:func:`check_rejections`),
   writes ``config.json``, then ``manifest.json``, whole or not at all: the single commit point. It lists each
   shard with its size and CRC-32C, which the trainer verifies before it reads.
4. Only then is everything the committed manifest does not list deleted (:func:`delete_leftovers`): older shards,
   ``*.tmp-*`` files, the spill directory ``_tmp/``, the pending manifest. A job cleans up what a killed one left
   before it starts, too.

A job killed at any point leaves the last committed dataset readable, and the same command then writes
byte-identical files. ``config.json`` and ``rejected.jsonl`` describe the latest job that got that far; only the
manifest and the shards it lists are the dataset.
"""

from __future__ import annotations

import collections
import logging
import os
import posixpath
import signal
import threading

from apache_beam.io.filesystems import FileSystems

from core.config import CONFIG_NAME, HiFiGANConfig
from core.errors import UserError
from core.manifest import MANIFEST_NAME, PENDING_NAME, REJECTED_NAME, Manifest, SplitSummary
from core.storage import BEAM_IO, first_line, read_bytes
from pipeline.tfrecord_io import SPILL_DIR, TMP_MARK, StagedFile, write_text

SHARD_GLOB = "*-of-*.tfrecord"  # every shard name, of this job or an earlier one
NAME_DIGITS = 12  # hex digits of a shard's SHA-256 in its name: 48 bits, no accidental collision in practice
KILL_AT_ENV = "HIFIGAN_TEST_KILL_AT"
TOP_REASONS = 3

_kill_counts: collections.Counter = collections.Counter()  # kill_point's count of each point reached
_kill_lock = threading.Lock()


class DatasetError(UserError):
    """A dataset the job will not commit or replace; the message is one line."""


class CommitError(DatasetError):
    """The commit itself failed (a write error); the previous dataset is unchanged."""

    exit_status = 1


def kill_point(point: str) -> None:
    """A named point for the crash tests. With ``HIFIGAN_TEST_KILL_AT=<point>:<n>:<signal>`` (e.g.
    ``shard_renamed:2:SIGKILL``) the n-th time this process reaches ``point`` it sends itself ``signal`` and the
    thread that reached it goes no further (SIGINT then ends the process by its Ctrl-C path). Unset: nothing."""
    spec = os.environ.get(KILL_AT_ENV)
    if not spec or spec.split(":")[0] != point:
        return
    _, count, signal_name = spec.split(":")
    with _kill_lock:
        _kill_counts[point] += 1
        if _kill_counts[point] != int(count):
            return
    os.kill(os.getpid(), getattr(signal, signal_name))
    threading.Event().wait()  # interrupted by the KeyboardInterrupt of a SIGINT in the main thread


def shard_stem(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}"


def shard_name(split: str, shard: int, num_shards: int, sha256: str) -> str:
    """A shard's content-addressed name, from the SHA-256 (hex) of its bytes."""
    return f"{shard_stem(split, shard, num_shards)}-{sha256[:NAME_DIGITS]}.tfrecord"


def read_manifest(output_dir: str, name: str = MANIFEST_NAME) -> Manifest:
    """The manifest ``name`` (manifest.json: the committed dataset) of ``output_dir``."""
    return Manifest.from_json(read_bytes(FileSystems.join(output_dir, name), BEAM_IO).decode("utf-8"))


def all_shards(manifest: Manifest) -> set[str]:
    return {name for split in manifest.splits.values() for name in split.shards}


def committed_shards(output_dir: str) -> set[str] | None:
    """The shards of the dataset committed in ``output_dir`` (none without a manifest.json); None when its
    manifest.json cannot be read, so nothing is known to be garbage."""
    if not FileSystems.exists(FileSystems.join(output_dir, MANIFEST_NAME)):
        return set()
    try:
        return all_shards(read_manifest(output_dir))
    except Exception:  # noqa: BLE001 an unreadable manifest: check_replaceable has named it (or --overwrite)
        return None


def check_replaceable(output_dir: str, new: Manifest, overwrite: bool) -> set[str] | None:
    """DatasetError (one line, before the job starts) when ``output_dir`` holds a committed dataset of another
    kind than ``new`` (audio fingerprint, audio encoding, teacher forcing) or one that cannot be read, unless
    ``overwrite``. Returns the committed dataset's shards as :func:`committed_shards` does, from the one read of
    its manifest."""
    path = FileSystems.join(output_dir, MANIFEST_NAME)
    if not FileSystems.exists(path):
        return set()
    try:
        old = read_manifest(output_dir)
    except Exception as e:  # noqa: BLE001 OSError, ValueError, KeyError, TypeError: any unreadable manifest
        if overwrite:
            return None
        raise DatasetError(f"{path}: cannot read the dataset there ({first_line(e)}); pass --overwrite to "
                           f"replace it") from None
    difference = old.difference(new)
    if difference and not overwrite:
        raise DatasetError(f"{output_dir} holds a dataset of another {difference}; pass --overwrite to replace it "
                           f"or choose another --output_dir")
    return all_shards(old)


def check_rejections(manifest: Manifest, max_rejected_fraction: float, output_dir: str) -> None:
    """DatasetError (one line: the split, the fraction, the top reasons with counts) for the first split that
    rejected more than ``max_rejected_fraction`` of its lines, or wrote no clip from one line or more; and for a
    job that wrote no clip at all (empty filelists)."""
    for name, split in manifest.splits.items():
        fraction = split.num_rejected / split.num_lines if split.num_lines else 0.0
        if split.num_examples == split.num_lines or (split.num_examples and fraction <= max_rejected_fraction):
            continue
        why = "no clip written" if not split.num_examples else \
            f"more than --max_rejected_fraction {max_rejected_fraction:g}"
        raise DatasetError(f"split {name}: {split.num_rejected} of {split.num_lines} lines rejected ({fraction:.1%}, "
                           f"{why}): {top_reasons(split)}; see {FileSystems.join(output_dir, REJECTED_NAME)}; "
                           f"the dataset was not committed")
    if not any(split.num_examples for split in manifest.splits.values()):
        raise DatasetError(f"{output_dir}: the job wrote no clip: its filelists hold no line; the dataset was not "
                           f"committed")


def top_reasons(split: SplitSummary) -> str:
    """``reason count, ...``: the most frequent rejection reasons of ``split`` first."""
    ranked = sorted(split.rejected_reasons.items(), key=lambda item: (-item[1], item[0]))
    more = len(ranked) - TOP_REASONS
    return ", ".join(f"{reason} {count}" for reason, count in ranked[:TOP_REASONS]) + \
        (f" and {more} more reasons" if more > 0 else "")


def delete_leftovers(output_dir: str, keep: set[str] | None) -> None:
    """Deletes shards not named in ``keep`` (no shard when ``keep`` is None), ``*.tmp-*`` files, the spill
    directory and the pending manifest."""
    def matching(pattern: str) -> list[str]:
        return [m.path for m in FileSystems.match([FileSystems.join(output_dir, pattern)])[0].metadata_list]

    stale = [] if keep is None else [path for path in matching(SHARD_GLOB) if posixpath.basename(path) not in keep]
    stale += matching(f"*{TMP_MARK}*") + matching(f"{SPILL_DIR}/*") + matching(PENDING_NAME)
    if stale:
        FileSystems.delete(stale)
    spill_dir = FileSystems.join(output_dir, SPILL_DIR)
    if FileSystems.exists(spill_dir):  # the local directory itself (object stores have none)
        FileSystems.delete([spill_dir])


def commit(config: HiFiGANConfig, output_dir: str, max_rejected_fraction: float) -> Manifest:
    """Commits the dataset the job left pending in ``output_dir`` and deletes what it does not list; returns its
    manifest. DatasetError when a guard refuses it, CommitError when a write fails: the committed dataset is
    then kept as it was."""
    pending_path = FileSystems.join(output_dir, PENDING_NAME)
    try:
        text = read_bytes(pending_path, BEAM_IO).decode("utf-8")
        manifest = Manifest.from_json(text)
    except Exception as e:  # noqa: BLE001 a job that ended without its last step
        raise CommitError(f"{pending_path}: the job left no pending manifest to commit ({first_line(e)})") from None
    check_rejections(manifest, max_rejected_fraction, output_dir)
    path = FileSystems.join(output_dir, MANIFEST_NAME)
    try:
        write_text(output_dir, CONFIG_NAME, config.to_json() + "\n")
        staged = StagedFile(output_dir, MANIFEST_NAME, durable=True)
        try:
            staged.file.write(text.encode("utf-8"))
            kill_point("committing")
            staged.ship(MANIFEST_NAME)
        finally:
            staged.discard()
    except Exception as e:  # noqa: BLE001 OSError locally, BeamIOError or a client's own error elsewhere
        raise CommitError(f"{path}: cannot commit the dataset ({first_line(e)}); the previous one, if any, is "
                          f"unchanged") from None
    kill_point("committed")
    delete_leftovers(output_dir, all_shards(manifest))
    logging.info("committed %s", path)
    return manifest
