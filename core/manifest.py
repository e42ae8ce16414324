"""The shard directory's ``manifest.json``: what the writer produced and what the reader must agree with."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from core.config import AudioConfig
from core.records import SCHEMA_VERSION

MANIFEST_NAME = "manifest.json"
REJECTED_NAME = "rejected.jsonl"
SPLITS = ("train", "val")


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
        return cls(**raw)

    def mismatch(self, audio: AudioConfig) -> str | None:
        """None if shards made with this manifest fit ``audio``; else a one-line description of the first difference."""
        expected = audio.fingerprint()
        for key in sorted(set(expected) | set(self.fingerprint)):
            if expected.get(key) != self.fingerprint.get(key):
                return f"{key} is {self.fingerprint.get(key)!r} in the shards but {expected.get(key)!r} in the config"
        return None
