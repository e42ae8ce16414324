"""The Beam steps of the preprocessing job and the graph that joins them.

Two passes keep memory flat in corpus size (only small index entries are ever grouped, never records):

1. ``ProcessClip`` decodes each clip, computes its mels and appends the record, framed as TFRecord, to a
   per-bundle spill file ``<output_dir>/_tmp/<uuid>.tfrecord``; it emits an :class:`IndexEntry` (where the record
   lies) or, for bad input, a rejection on a tagged output.
2. The index entries of a split are grouped to choose its shard count, then per shard; ``WriteShard`` copies the
   framed records (CRCs included) from the spill files, sorted by id, into a shard named by its content,
   ``<split>-SSSSS-of-NNNNN-<hash>.tfrecord``, atomically.
   ``WriteManifest``, the job's last step, checks ``lines = written + rejected`` per split and writes
   ``rejected.jsonl`` and the pending manifest, which the launcher commits (see :mod:`pipeline.commit`).

A clip's shard is ``crc32(id) mod num_shards`` and records are sorted by id inside a shard, so every runner
writes byte-identical shards.
"""

from __future__ import annotations

import collections
import json
import math
import zlib
from typing import Iterable, Mapping, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from core.config import AudioConfig, HiFiGANConfig
from core.filelist import ClipEntry, read_filelists, rejection
from core.manifest import PENDING_NAME, REJECTED_NAME, Manifest, ShardFile
from core.mel import MelExtractor
from core.records import to_example
from core.storage import check_directory
from pipeline.clips import ClipError, keep_freed_memory, prepare_clip, read_input, read_teacher_mel, write_errors
from pipeline.commit import kill_point, shard_name, shard_stem
from pipeline.options import PreprocessOptions
from pipeline.tfrecord_io import RAW, SPILL_DIR, Digest, SpillFile, StagedFile, read_frame, write_text

SHARD_TARGET_BYTES = 150 * 2**20
SPILL_ROLL_BYTES = 256 * 2**20  # a bundle's local spill file is shipped to _tmp/ and a new one begun past this
METRICS_NAMESPACE = "preprocess"
REJECTED_TAG = "rejected"


class IndexEntry(NamedTuple):
    """Where pass 1 left one record: ``length`` bytes of TFRecord payload framed at ``offset`` of ``spill_path``."""

    split: str
    clip_id: str
    spill_path: str
    offset: int
    length: int
    seconds: float
    frames: int
    trimmed: bool


class ShardStats(NamedTuple):
    """What one written shard holds."""

    split: str
    name: str
    num_examples: int
    seconds: float
    frames: int
    frame_trims: int
    file: ShardFile


class ProcessClip(beam.DoFn):
    """Pass 1: a ClipEntry to an IndexEntry (record spilled to ``spill_dir``) or a tagged rejection."""

    def __init__(self, audio: AudioConfig, spill_dir: str, options: PreprocessOptions):
        self.audio = audio
        self.spill_dir = spill_dir
        self.options = options
        # NOTE: the mel bases are built here and pickled with the DoFn, not in setup(): building them imports
        # librosa and numba, over a second of every worker's start-up.
        self.extractor = MelExtractor(audio)
        self.lines = Metrics.counter(METRICS_NAMESPACE, "lines_read")
        self.written = Metrics.counter(METRICS_NAMESPACE, "clips_written")
        self.audio_ms = Metrics.counter(METRICS_NAMESPACE, "audio_milliseconds_written")
        self.trims = Metrics.counter(METRICS_NAMESPACE, "teacher_frame_trims")

    def setup(self):
        keep_freed_memory()

    def start_bundle(self):
        self.spill = None

    def _prepare(self, entry: ClipEntry):
        opts = self.options
        data = read_input(entry.path, "missing_file", "unreadable", opts.read_retries)
        teacher_mel = (read_teacher_mel(opts.base_mels_path, entry.clip_id, self.audio.num_mels, opts.read_retries)
                       if opts.base_mels_path else None)
        return prepare_clip(data, self.extractor, normalise=not opts.base_mels_path, max_seconds=opts.max_seconds,
                            teacher_mel=teacher_mel, frame_tolerance=opts.frame_tolerance)

    def _spill(self, record: bytes) -> int:
        """Appends ``record`` to this bundle's spill file (a new one past SPILL_ROLL_BYTES); returns its offset."""
        if self.spill is not None and self.spill.size > SPILL_ROLL_BYTES:
            self._close_spill()
        with write_errors(self.spill.path if self.spill else self.spill_dir):
            if self.spill is None:
                self.spill = SpillFile(self.spill_dir)
            return self.spill.write(record)

    def _close_spill(self) -> None:
        """Ships the spill file; StorageError (one line naming it) if the storage refuses it (teardown discards)."""
        with write_errors(self.spill.path):
            self.spill.close()
        self.spill = None

    def process(self, entry: ClipEntry):
        self.lines.inc()
        try:
            clip = self._prepare(entry)
        except ClipError as e:
            Metrics.counter(METRICS_NAMESPACE, f"rejected_{e.reason}").inc()
            yield beam.pvalue.TaggedOutput(REJECTED_TAG, rejection(entry.split, entry.path, e.reason,
                                                                   f"{entry.source}: {e}"))
            return
        record = to_example(entry.clip_id, clip.audio, clip.mel, clip.mel_loss, self.options.audio_encoding)
        offset = self._spill(record)
        frames = clip.mel.shape[0]
        seconds = clip.audio.size / self.audio.sampling_rate
        self.written.inc()
        self.audio_ms.inc(round(seconds * 1000))
        self.trims.inc(int(clip.trimmed))
        yield IndexEntry(entry.split, entry.clip_id, self.spill.path, offset, len(record), seconds, frames,
                         clip.trimmed)

    def finish_bundle(self):
        if self.spill is not None:
            self._close_spill()

    def teardown(self):
        if getattr(self, "spill", None) is not None:  # a failed bundle: its outputs are discarded anyway
            self.spill.close(ship=False)


def shard_of(clip_id: str, num_shards: int) -> int:
    """A clip's shard: stable across processes and runs (never Python's salted hash())."""
    return zlib.crc32(clip_id.encode("utf-8")) % num_shards


def num_shards_for(num_records: int, total_bytes: int, num_shards: int | None,
                   target_bytes: int = SHARD_TARGET_BYTES) -> int:
    """Shard count of a split: ``num_shards`` if given, else ~``target_bytes`` each; never more than records."""
    wanted = num_shards or math.ceil(total_bytes / target_bytes)
    return max(1, min(wanted, num_records)) if num_records else 0


def assign_shards(element: tuple[str, Iterable[IndexEntry]], num_shards: int | None, target_bytes: int):
    """A split's index entries keyed by (split, shard, num_shards); one ``None`` per shard so none is missing."""
    split, entries = element
    entries = list(entries)
    count = num_shards_for(len(entries), sum(e.length for e in entries), num_shards, target_bytes)
    for shard in range(count):
        yield (split, shard, count), None
    for entry in entries:
        yield (split, shard_of(entry.clip_id, count), count), entry


class WriteShard(beam.DoFn):
    """Pass 2: copies a shard's framed records from the spill files, sorted by id, into the shard, atomically,
    under a name that holds its SHA-256 (see :mod:`pipeline.commit`)."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def process(self, element):
        (split, shard, num_shards), entries = element
        # Ids are unique in a job (duplicate_id), so keying by id also absorbs a runner that re-delivers an entry.
        entries = sorted({e.clip_id: e for e in entries if e is not None}.values(), key=lambda e: e.clip_id)
        stem = shard_stem(split, shard, num_shards)
        # The storage failing a write (ENOSPC, permission, a bucket's error) is StorageError, one line, as for the
        # spill files (write_errors); reading the spill files is left out of it.
        with write_errors(FileSystems.join(self.output_dir, stem)):
            staged = StagedFile(self.output_dir, stem, durable=True)
        digest = Digest()
        handles = {}
        try:
            for entry in entries:
                if entry.spill_path not in handles:
                    handles[entry.spill_path] = FileSystems.open(entry.spill_path, compression_type=RAW)
                frame = read_frame(handles[entry.spill_path], entry.offset, entry.length)
                with write_errors(staged.path):
                    staged.file.write(frame)
                digest.update(frame)
            name = shard_name(split, shard, num_shards, digest.sha256)
            kill_point("shard_written")
            with write_errors(FileSystems.join(self.output_dir, name)):
                staged.ship(name)
            kill_point("shard_renamed")
        finally:
            for handle in handles.values():
                handle.close()
            staged.discard()
        yield ShardStats(split, name, len(entries), math.fsum(e.seconds for e in entries),
                         sum(e.frames for e in entries), sum(e.trimmed for e in entries),
                         ShardFile(digest.num_bytes, digest.crc32c))


def summarise(manifest: Manifest, shards: list[ShardStats], rejected: list[dict],
              num_lines: Mapping[str, int]) -> None:
    """Adds the shards' stats and the rejections to ``manifest``'s splits; RuntimeError unless, per split,
    lines = written + rejected."""
    for stats in shards:
        split = manifest.splits[stats.split]
        split.num_examples += stats.num_examples
        split.total_seconds += stats.seconds
        split.total_frames += stats.frames
        split.frame_trims += stats.frame_trims
        split.shards.append(stats.name)
        split.shard_files[stats.name] = stats.file
    for (name, reason), count in sorted(collections.Counter((r["split"], r["reason"]) for r in rejected).items()):
        manifest.splits[name].rejected_reasons[reason] = count
        manifest.splits[name].num_rejected += count
    for name, split in manifest.splits.items():
        split.num_lines = num_lines.get(name, 0)
        if split.num_lines != split.num_examples + split.num_rejected:
            raise RuntimeError(f"split {name}: {split.num_lines} lines in but {split.num_examples} written and "
                               f"{split.num_rejected} rejected")


class WriteManifest(beam.DoFn):
    """The last step: reconciles counts, writes rejected.jsonl and the pending manifest (committed by the
    launcher, :func:`pipeline.commit.commit`)."""

    def __init__(self, config: HiFiGANConfig, options: PreprocessOptions, num_lines: Mapping[str, int]):
        self.config = config
        self.options = options
        self.num_lines = dict(num_lines)

    def process(self, element):
        _, items = element
        items = list(items)  # a single pass over each kind; identical re-deliveries count once
        shards = sorted({v.name: v for k, v in items if k == "shard"}.values(), key=lambda s: s.name)
        rejected = sorted({json.dumps(v, sort_keys=True): v for k, v in items if k == "rejected"}.values(),
                          key=lambda r: (r["split"], r["path"], r["reason"], r["detail"]))
        opts = self.options
        manifest = Manifest.new(self.config.audio, opts.audio_encoding, teacher_forced=bool(opts.base_mels_path))
        summarise(manifest, shards, rejected, self.num_lines)
        with write_errors(FileSystems.join(opts.output_dir, REJECTED_NAME)):
            write_text(opts.output_dir, REJECTED_NAME,
                       "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejected))
        with write_errors(FileSystems.join(opts.output_dir, PENDING_NAME)):
            write_text(opts.output_dir, PENDING_NAME, manifest.to_json() + "\n")
        kill_point("pending_written")
        yield manifest.to_json()


# NOTE: Beam 2.77's DaskRunner hands a consumer of one tagged output every output of the ParDo (its visitor
# looks up the producing transform, not the tag), so each consumer keeps only its own element type.
def _key_index_by_split(element):
    if isinstance(element, IndexEntry):
        yield element.split, element


def _summary_rejection(element):
    if isinstance(element, dict):
        yield "all", ("rejected", element)


def build_pipeline(p: beam.Pipeline, config: HiFiGANConfig, options: PreprocessOptions) -> beam.PCollection:
    """Adds the whole job to ``p``; returns the PCollection of the manifest's JSON (one element).

    Reads the filelists now (FilelistError if one cannot be read; PathError if lines are relative to a missing
    local audio root). The manifest step is applied last and depends
    on every other step, so runners that only compute the final step (Beam's DaskRunner) still run all of it.
    Few transforms: each costs the runner ~10 ms to set up, whatever the corpus.
    """
    entries, duplicates, num_lines = read_filelists(options.filelists, options.audio_root)
    if any(entry.path.startswith(FileSystems.join(options.audio_root, "")) for entry in entries):
        # NOTE: only when a line is relative to it: filelists of absolute paths or URIs need no audio root.
        check_directory(options.audio_root, "audio root")
    spill_dir = FileSystems.join(options.output_dir, SPILL_DIR)
    clips = (p
             | "ListClips" >> beam.Create(entries)
             | "ProcessClips" >> beam.ParDo(ProcessClip(config.audio, spill_dir, options)).with_outputs(
                 REJECTED_TAG, main="index"))
    shard_stats = (clips["index"]
                   | "KeyBySplit" >> beam.FlatMap(_key_index_by_split)
                   | "GroupBySplit" >> beam.GroupByKey()
                   | "AssignShards" >> beam.FlatMap(assign_shards, options.num_shards, SHARD_TARGET_BYTES)
                   | "GroupByShard" >> beam.GroupByKey()
                   | "WriteShards" >> beam.ParDo(WriteShard(options.output_dir)))
    # Summary items, all under one key: a start marker (so the manifest is written for an empty job), the
    # filelists' duplicate ids, the shards' stats and the clips' rejections.
    known = [("all", ("start", None))] + [("all", ("rejected", r)) for r in duplicates]
    return ((p | "Start" >> beam.Create(known, reshuffle=False),
             shard_stats | "TagShards" >> beam.Map(lambda s: ("all", ("shard", s))),
             clips[REJECTED_TAG] | "TagRejections" >> beam.FlatMap(_summary_rejection))
            | "GatherSummary" >> beam.Flatten()
            | "GroupAll" >> beam.GroupByKey()
            | "WriteManifest" >> beam.ParDo(WriteManifest(config, options, num_lines)))
