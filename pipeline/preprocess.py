"""The Beam preprocessing job: filelists of audio in, TFRecord shards, manifest.json and rejected.jsonl out.

Two passes keep memory flat in corpus size (only small index entries are ever grouped, never records):

1. ``ProcessClip`` decodes each clip, computes its mels and appends the record, framed as TFRecord, to a
   per-bundle spill file ``<output_dir>/_tmp/<uuid>.tfrecord``; it emits an :class:`IndexEntry` (where the record
   lies) or, for bad input, a rejection on a tagged output.
2. The index entries of a split are grouped to choose its shard count, then per shard; ``WriteShard`` copies the
   framed records (CRCs included) from the spill files, sorted by id, into ``<split>-SSSSS-of-NNNNN.tfrecord``
   atomically.
   ``WriteManifest``, the job's last step, checks ``lines = written + rejected`` per split, writes
   ``manifest.json``, ``rejected.jsonl`` and ``config.json`` and deletes the spill files.

A clip's shard is ``crc32(id) mod num_shards`` and records are sorted by id inside a shard, so every runner
writes byte-identical shards. All output goes through Beam's FileSystems (local paths, gs://, ...).

The job never imports TensorFlow: records are encoded by ``core.records.to_example`` and framed here (TFRecord:
length, masked CRC-32C of the length, payload, masked CRC-32C of the payload), so a Beam worker process starts
~6 s sooner and holds ~220 MB instead of ~800 MB. On DirectRunner the job runs multi_threading by default
(:func:`local_defaults`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import math
import os
import shutil
import struct
import tempfile
import uuid
import zlib
from typing import Iterable, Mapping, NamedTuple

import apache_beam as beam
import google_crc32c
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from core.audio import AudioError, load_audio
from core.config import AudioConfig, HiFiGANConfig
from core.filelist import ClipEntry, read_filelists, rejection
from core.manifest import MANIFEST_NAME, REJECTED_NAME, SPLITS, Manifest
from core.mel import MelExtractor
from core.storage import check_directory, check_filesystem, check_writable
from core.records import AUDIO_ENCODINGS, to_example
from core.melfile import TeacherMelError, load_teacher_mel
from pipeline.options import PreprocessOptions
from core.errors import UserError

CONFIG_NAME = "config.json"
SPILL_DIR = "_tmp"
SHARD_TARGET_BYTES = 150 * 2**20
SPILL_ROLL_BYTES = 256 * 2**20  # a bundle's local spill file is shipped to _tmp/ and a new one begun past this
COPY_CHUNK = 16 * 2**20
# glibc's mallopt() settings made by keep_freed_memory(): M_MMAP_THRESHOLD (-3), blocks below it come from the heap
# (64 MB: a 60 s clip's STFT temporaries); M_TRIM_THRESHOLD (-1), free heap kept for reuse up to it.
MALLOPT_SETTINGS = ((-3, 64 * 2**20), (-1, 128 * 2**20))
METRICS_NAMESPACE = "preprocess"
REJECTED_TAG = "rejected"

_RAW = CompressionTypes.UNCOMPRESSED


class PreprocessError(UserError):
    """A job that cannot start (e.g. an unknown Beam runner); the message is one line."""


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


class ClipError(UserError):
    """A clip rejected for its content; ``reason`` is the rejected.jsonl tag."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass
class Clip:
    """A prepared clip: audio [frames * hop_size], mel and mel_loss [frames, num_mels]."""

    audio: np.ndarray
    mel: np.ndarray
    mel_loss: np.ndarray
    trimmed: bool = False


def prepare_clip(data: bytes, extractor: MelExtractor, normalise: bool, max_seconds: float,
                 teacher_mel: np.ndarray | None = None, frame_tolerance: int = 2) -> Clip:
    """Decodes a clip and computes its features; ClipError for a clip that cannot be used.

    The audio is trimmed to ``frames * hop_size`` and the mels are those of the trimmed audio, so a record's
    mel is exactly ``mel_spectrogram(record audio)``. With a teacher mel [T, num_mels], a frame-count difference
    up to ``frame_tolerance`` is aligned by trimming both to the shorter (``trimmed``); the record's mel is the
    teacher's and mel_loss is computed from the (re-trimmed) audio.
    """
    cfg = extractor.audio
    try:
        audio = load_audio(data, cfg.sampling_rate, normalise)
    except AudioError as e:
        raise ClipError(e.reason, str(e)) from None
    seconds = audio.size / cfg.sampling_rate
    if seconds > max_seconds:
        raise ClipError("too_long", f"{seconds:.1f} s is longer than max_seconds {max_seconds:g}")
    frames = cfg.num_frames(audio.size)
    trimmed = False
    if teacher_mel is not None:
        if abs(teacher_mel.shape[0] - frames) > frame_tolerance:
            raise ClipError("teacher_mel_mismatch", f"teacher mel has {teacher_mel.shape[0]} frames, the audio "
                            f"{frames} (frame_tolerance {frame_tolerance})")
        trimmed = teacher_mel.shape[0] != frames
        frames = min(frames, teacher_mel.shape[0])
    if frames * cfg.hop_size <= cfg.padding:
        raise ClipError("empty", f"{audio.size} samples are shorter than one usable frame")
    audio = audio[:frames * cfg.hop_size]
    mel, mel_loss = extractor(audio)
    if not (np.all(np.isfinite(mel)) and np.all(np.isfinite(mel_loss))):
        raise ClipError("non_finite", "the mel spectrogram holds NaN or infinite values")
    if teacher_mel is not None:
        mel = teacher_mel[:frames]
    return Clip(audio, mel, mel_loss, trimmed)


def _read_bytes(path: str, missing_reason: str, unreadable_reason: str) -> bytes:
    """The bytes of a file on any Beam filesystem; ClipError(missing_reason) if absent."""
    try:
        with FileSystems.open(path, compression_type=_RAW) as f:
            return f.read()
    except Exception as e:  # filesystems raise BeamIOError, OSError or their own client errors
        if not FileSystems.exists(path):
            raise ClipError(missing_reason, "file not found") from None
        raise ClipError(unreadable_reason, f"cannot read file ({type(e).__name__}: {e})") from None


class _StagedFile:
    """A local file to write, standing in for ``destination`` on any Beam filesystem.

    On the local filesystem it is ``destination`` itself; elsewhere (gs://, ...) a local scratch file that
    ``ship()`` copies to ``destination`` through FileSystems.
    """

    def __init__(self, destination: str):
        self.destination = destination
        self.is_local = isinstance(FileSystems.get_filesystem(destination), LocalFileSystem)
        if self.is_local:
            os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
            self.path = destination
        else:
            fd, self.path = tempfile.mkstemp(suffix=".tfrecord")
            os.close(fd)

    def ship(self) -> None:
        """Puts the finished file at ``destination``."""
        if not self.is_local:
            with open(self.path, "rb") as src, FileSystems.create(self.destination, compression_type=_RAW) as dst:
                shutil.copyfileobj(src, dst, COPY_CHUNK)
            os.remove(self.path)

    def discard(self) -> None:
        """Removes what is left of an unfinished file (a no-op once shipped and renamed)."""
        if os.path.exists(self.path):
            os.remove(self.path)


def keep_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory in this process for reuse; False where that is not available.

    NOTE: by default glibc hands blocks of a few MB straight back to the kernel (mmap threshold, heap trimming), so
    every clip's STFT temporaries (several MB each) come back as fresh zeroed pages: ~1,900 page faults per 10 s
    clip, 40% of the DSP's time. With freed memory kept, the next clip reuses it. A process-wide setting, made in
    the processing step's setup (Beam workers are processes or threads of this job); it changes no result.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, Windows)
        return False
    return all([mallopt(param, value) == 1 for param, value in MALLOPT_SETTINGS])


def _masked_crc32c(data: bytes) -> bytes:
    """TFRecord's masked CRC-32C of ``data``, 4 bytes little-endian."""
    crc = google_crc32c.value(data)
    return struct.pack("<I", ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF)


class _SpillFile:
    """A TFRecord file of pass-1 records, ``<spill_dir>/<uuid>.tfrecord`` once closed."""

    def __init__(self, spill_dir: str):
        self.path = FileSystems.join(spill_dir, f"{uuid.uuid4().hex}.tfrecord")
        self.staged = _StagedFile(self.path)
        self.file = open(self.staged.path, "wb")
        self.size = 0

    def write(self, record: bytes) -> int:
        """Appends one record framed as TFRecord (8 + 4 + len + 4 bytes); returns the frame's offset."""
        offset = self.size
        length = struct.pack("<Q", len(record))
        self.file.write(length + _masked_crc32c(length))
        self.file.write(record)
        self.file.write(_masked_crc32c(record))
        self.size += len(record) + 16
        return offset

    def close(self, ship: bool = True) -> None:
        self.file.close()
        if ship:
            self.staged.ship()
        else:
            self.staged.discard()


def _read_frame(f, offset: int, length: int) -> bytes:
    """The TFRecord frame (length, its CRC, ``length`` bytes of payload, their CRC) at ``offset`` of a spill file."""
    f.seek(offset)
    frame = f.read(length + 16)
    if len(frame) != length + 16 or struct.unpack_from("<Q", frame)[0] != length:
        raise IOError(f"spill record at offset {offset} is not the {length}-byte record that was written there")
    return frame


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

    def _teacher_mel(self, clip_id: str) -> np.ndarray | None:
        if not self.options.base_mels_path:
            return None
        path = FileSystems.join(self.options.base_mels_path, f"{clip_id}.npy")
        try:
            data = _read_bytes(path, "teacher_mel_missing", "teacher_mel_unreadable")
            return load_teacher_mel(data, self.audio.num_mels)
        except (ClipError, TeacherMelError) as e:
            raise ClipError(e.reason, f"{path}: {e}") from None

    def process(self, entry: ClipEntry):
        self.lines.inc()
        opts = self.options
        try:
            data = _read_bytes(entry.path, "missing_file", "unreadable")
            clip = prepare_clip(data, self.extractor, normalise=not opts.base_mels_path,
                                max_seconds=opts.max_seconds, teacher_mel=self._teacher_mel(entry.clip_id),
                                frame_tolerance=opts.frame_tolerance)
        except ClipError as e:
            Metrics.counter(METRICS_NAMESPACE, f"rejected_{e.reason}").inc()
            yield beam.pvalue.TaggedOutput(REJECTED_TAG, rejection(entry.split, entry.path, e.reason,
                                                                   f"{entry.source}: {e}"))
            return
        record = to_example(entry.clip_id, clip.audio, clip.mel, clip.mel_loss, opts.audio_encoding)
        if self.spill is not None and self.spill.size > SPILL_ROLL_BYTES:
            self.spill.close()
            self.spill = None
        if self.spill is None:
            self.spill = _SpillFile(self.spill_dir)
        offset = self.spill.write(record)
        frames = clip.mel.shape[0]
        seconds = clip.audio.size / self.audio.sampling_rate
        self.written.inc()
        self.audio_ms.inc(round(seconds * 1000))
        self.trims.inc(int(clip.trimmed))
        yield IndexEntry(entry.split, entry.clip_id, self.spill.path, offset, len(record), seconds, frames,
                         clip.trimmed)

    def finish_bundle(self):
        if self.spill is not None:
            self.spill.close()
            self.spill = None

    def teardown(self):
        if getattr(self, "spill", None) is not None:  # a failed bundle: its outputs are discarded anyway
            self.spill.close(ship=False)


def shard_of(clip_id: str, num_shards: int) -> int:
    """A clip's shard: stable across processes and runs (never Python's salted hash())."""
    return zlib.crc32(clip_id.encode("utf-8")) % num_shards


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"


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
    """Pass 2: copies a shard's framed records from the spill files, sorted by id, into the shard, atomically."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def process(self, element):
        (split, shard, num_shards), entries = element
        # Ids are unique in a job (duplicate_id), so keying by id also absorbs a runner that re-delivers an entry.
        entries = sorted({e.clip_id: e for e in entries if e is not None}.values(), key=lambda e: e.clip_id)
        name = shard_name(split, shard, num_shards)
        final = FileSystems.join(self.output_dir, name)
        # Written under a unique temporary name, then renamed: a shard appears whole or not at all.
        staged = _StagedFile(f"{final}.tmp-{uuid.uuid4().hex}")
        handles = {}
        try:
            with open(staged.path, "wb") as shard_file:
                for entry in entries:
                    if entry.spill_path not in handles:
                        handles[entry.spill_path] = FileSystems.open(entry.spill_path, compression_type=_RAW)
                    shard_file.write(_read_frame(handles[entry.spill_path], entry.offset, entry.length))
            staged.ship()
            FileSystems.rename([staged.destination], [final])
        finally:
            for handle in handles.values():
                handle.close()
            staged.discard()
        yield ShardStats(split, name, len(entries), math.fsum(e.seconds for e in entries),
                         sum(e.frames for e in entries), sum(e.trimmed for e in entries))


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path, mime_type="text/plain", compression_type=_RAW) as f:
        f.write(text.encode("utf-8"))


class WriteManifest(beam.DoFn):
    """The last step: reconciles counts, writes manifest.json, rejected.jsonl and config.json, cleans up."""

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
        for stats in shards:
            split = manifest.splits[stats.split]
            split.num_examples += stats.num_examples
            split.total_seconds += stats.seconds
            split.total_frames += stats.frames
            split.frame_trims += stats.frame_trims
            split.shards.append(stats.name)
        for item in rejected:
            manifest.splits[item["split"]].num_rejected += 1
        for name, split in manifest.splits.items():
            split.num_lines = self.num_lines.get(name, 0)
            if split.num_lines != split.num_examples + split.num_rejected:
                raise RuntimeError(f"split {name}: {split.num_lines} lines in but {split.num_examples} written and "
                                   f"{split.num_rejected} rejected")
        out = opts.output_dir
        _write_text(FileSystems.join(out, REJECTED_NAME), "".join(json.dumps(r, sort_keys=True) + "\n"
                                                                  for r in rejected))
        _write_text(FileSystems.join(out, CONFIG_NAME), self.config.to_json() + "\n")
        _write_text(FileSystems.join(out, MANIFEST_NAME), manifest.to_json() + "\n")
        written = {s.name for s in shards}
        stale = [m.path for m in FileSystems.match([FileSystems.join(out, "*-of-*.tfrecord")])[0].metadata_list
                 if os.path.basename(m.path) not in written]
        spill_dir = FileSystems.join(out, SPILL_DIR)
        stale += [m.path for m in FileSystems.match([FileSystems.join(spill_dir, "*")])[0].metadata_list]
        if stale:
            FileSystems.delete(stale)
        if FileSystems.exists(spill_dir):  # the local directory itself (object stores have none)
            FileSystems.delete([spill_dir])
        logging.info("wrote %s", FileSystems.join(out, MANIFEST_NAME))
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


def read_manifest(output_dir: str) -> Manifest:
    """The manifest.json a finished job left in ``output_dir``."""
    with FileSystems.open(FileSystems.join(output_dir, MANIFEST_NAME), compression_type=_RAW) as f:
        return Manifest.from_json(f.read().decode("utf-8"))


def local_defaults(beam_args: list[str]) -> list[str]:
    """``beam_args`` with this job's defaults for Beam's DirectRunner: multi_threading, one thread per core.

    NOTE: Beam's own default is in_memory, one thread. The DSP (libsndfile, numpy, pocketfft, sparse products)
    runs almost entirely without the GIL, so threads scale on a few cores, with no worker start-up (~3 s of
    processes importing Beam, numpy and scipy) and one process's memory. On many cores, multi_processing with one
    worker per core scales further (pass ``--direct_running_mode multi_processing --direct_num_workers 0``).
    An explicit ``--direct_running_mode`` and any other runner are left alone.
    """
    runner = PipelineOptions(beam_args).view_as(StandardOptions).runner or "DirectRunner"
    flags = {arg.split("=", 1)[0] for arg in beam_args}
    if runner.lower() not in ("direct", "directrunner") or "--direct_running_mode" in flags:
        return list(beam_args)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = [] if "--direct_num_workers" in flags else ["--direct_num_workers", str(cores)]
    return list(beam_args) + ["--direct_running_mode", "multi_threading"] + workers


def run(config: HiFiGANConfig, options: PreprocessOptions, beam_args: list[str] | None = None) -> Manifest:
    """Builds and runs the job with Beam options ``beam_args`` (runner flags, see :func:`local_defaults`); returns
    the written manifest.

    PreprocessError, PathError or FilelistError (one line each) before the job starts for a runner Beam does not
    know, a path Beam cannot use, a missing local audio root or teacher mel directory, or an unreadable filelist.
    """
    pipeline_options = PipelineOptions(local_defaults(beam_args or []))
    FileSystems.set_options(pipeline_options)
    try:
        p = beam.Pipeline(options=pipeline_options)
    except (ValueError, ImportError, AttributeError, TypeError) as e:  # what Beam's create_runner raises
        runner = pipeline_options.view_as(StandardOptions).runner
        raise PreprocessError(f"cannot use Beam runner {runner}: {str(e).strip().splitlines()[0]}") from None
    # One line now, not a worker's traceback later (the filelists: when build_pipeline reads them).
    paths = {options.output_dir: "output directory", options.audio_root: "audio root",
             options.base_mels_path: "teacher mel directory"}
    for path, what in paths.items():
        if path is not None:
            check_filesystem(path, what)
    # NOTE: a missing local directory would otherwise reject every line as missing and still exit 0.
    if options.base_mels_path:
        check_directory(options.base_mels_path, "teacher mel directory")
    build_pipeline(p, config, options)
    check_writable(options.output_dir)
    result = p.run()
    result.wait_until_finish()
    # NOTE: Beam's DaskRunner opens a dask Client and never closes it; closing it lets the cluster shut down quietly.
    client = getattr(result, "client", None)
    if client is not None:
        client.close()
    return read_manifest(options.output_dir)
