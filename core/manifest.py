"""The shard directory's ``manifest.json``: what the writer produced and what the reader must agree with.

manifest.json is the dataset's single commit point (see pipeline/commit.py): it lists every shard of the dataset
with its size and CRC-32C, and the trainer verifies both before it reads. The job writes the manifest it would
commit as ``manifest.pending.json``; the launcher commits it once the job's guards pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from core.config import AudioConfig
from core.records import SCHEMA_VERSION

MANIFEST_NAME = "manifest.json"
PENDING_NAME = "manifest.pending.json"
REJECTED_NAME = "rejected.jsonl"
SPLITS = ("train", "val")


@dataclasses.dataclass(frozen=True)
class ShardFile:
    """What a shard holds as the job wrote it: its size and CRC-32C (8 hex digits, as google_crc32c's hexdigest
    and as object stores such as GCS report it)."""

    num_bytes: int
    crc32c: str


@dataclasses.dataclass
class SplitSummary:
    """One split's outcome. ``num_lines == num_examples + num_rejected`` always holds for a finished job."""

    num_lines: int = 0
    num_examples: int = 0
    num_rejected: int = 0
    total_seconds: float = 0.0
    total_frames: int = 0
    frame_trims: int = 0
    shards: list[str] = dataclasses.field(default_factory=list)
    # name -> size and checksum of each shard; empty in manifests written before they were recorded (not verified)
    shard_files: dict[str, ShardFile] = dataclasses.field(default_factory=dict)
    rejected_reasons: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> lines rejected for it


@dataclasses.dataclass
class Manifest:
    """Contents of manifest.json (see README, "Record schema and manifest")."""

    audio: dict[str, Any]
    fingerprint: dict[str, Any]
    fingerprint_hash: str
    audio_encoding: str
    teacher_forced: bool
    splits: dict[str, SplitSummary]
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def new(cls, audio: AudioConfig, audio_encoding: str, teacher_forced: bool) -> "Manifest":
        return cls(
            audio=dataclasses.asdict(audio),
            fingerprint=audio.fingerprint(),
            fingerprint_hash=audio.fingerprint_hash(),
            audio_encoding=audio_encoding,
            teacher_forced=teacher_forced,
            splits={name: SplitSummary() for name in SPLITS},
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        raw = json.loads(text)
        if raw.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"manifest schema_version {raw.get('schema_version')!r} is not {SCHEMA_VERSION}")
        raw["splits"] = {name: SplitSummary(**split) for name, split in raw["splits"].items()}
        for split in raw["splits"].values():
            split.shard_files = {name: ShardFile(**file) for name, file in split.shard_files.items()}
        return cls(**raw)

    def difference(self, other: "Manifest") -> str | None:
        """None if ``other`` is a dataset of the same kind (audio fingerprint, audio encoding, teacher forcing);
        else one line naming what differs, as it is here and in ``other``."""
        return self._difference(other, "there", "here", encoding=True)

    def mixture_difference(self, other: "Manifest", name: str, other_name: str) -> str | None:
        """None if ``other``'s shards can be mixed with these in one training (the same audio fingerprint and the
        same kind of mels; the audio encoding may differ: each dataset is parsed with its own); else one line
        naming what differs, with the value of each dataset after its name."""
        return self._difference(other, name, other_name, encoding=False)

    def _difference(self, other: "Manifest", ours: str, theirs: str, encoding: bool) -> str | None:
        """The first difference of ``other`` from this manifest, the values labelled ``ours`` and ``theirs``."""
        for key in sorted(set(self.fingerprint) | set(other.fingerprint)):
            if self.fingerprint.get(key) != other.fingerprint.get(key):
                return (f"audio fingerprint ({key} {self.fingerprint.get(key)!r} {ours}, "
                        f"{other.fingerprint.get(key)!r} {theirs})")
        if encoding and self.audio_encoding != other.audio_encoding:
            return f"audio encoding ({self.audio_encoding} {ours}, {other.audio_encoding} {theirs})"
        if self.teacher_forced != other.teacher_forced:
            kind = {True: "teacher-forced mels", False: "ground-truth mels"}
            return f"kind ({kind[self.teacher_forced]} {ours}, {kind[other.teacher_forced]} {theirs})"
        return None

    def split_digest(self, split: str) -> str | None:
        """An identity of ``split``'s data: a hash of its shards' names, sizes and CRC-32Cs (16 hex digits). The
        same data gives the same digest wherever it lies (shards are byte-identical across reruns and runners);
        None for a manifest that records no sizes or checksums (an older job) or no such split."""
        summary = self.splits.get(split)
        if summary is None or any(name not in summary.shard_files for name in summary.shards):
            return None
        files = [(name, summary.shard_files[name].num_bytes, summary.shard_files[name].crc32c)
                 for name in sorted(summary.shards)]
        return hashlib.sha256(json.dumps(files).encode("utf-8")).hexdigest()[:16]

    def mismatch(self, audio: AudioConfig) -> str | None:
        """None if shards made with this manifest fit ``audio``; else a one-line description of the first difference."""
        expected = audio.fingerprint()
        for key in sorted(set(expected) | set(self.fingerprint)):
            if expected.get(key) != self.fingerprint.get(key):
                return f"{key} is {self.fingerprint.get(key)!r} in the shards but {expected.get(key)!r} in the config"
        return None
