"""What the preprocessing job reads and writes: its options other than Beam's own."""

from __future__ import annotations

import dataclasses
from typing import Mapping

from core.manifest import SPLITS
from core.records import AUDIO_ENCODINGS


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
    """What the job reads and writes (the job's flags other than Beam's own).

    ``filelists`` maps a split name ("train", "val") to its filelist. ``base_mels_path`` switches to fine-tune
    mode: teacher-forced Tacotron mels ``<base_mels_path>/<id>.npy`` replace the model-input mel.
    """

    filelists: Mapping[str, str]
    audio_root: str
    output_dir: str
    base_mels_path: str | None = None
    num_shards: int | None = None
    frame_tolerance: int = 2
    max_seconds: float = 60.0
    audio_encoding: str = "int16"

    def __post_init__(self):
        if self.audio_encoding not in AUDIO_ENCODINGS:
            raise ValueError(f"audio_encoding must be one of {AUDIO_ENCODINGS}, got {self.audio_encoding!r}")
        if self.num_shards is not None and self.num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {self.num_shards}")
        if self.frame_tolerance < 0 or not self.max_seconds > 0:
            raise ValueError(f"--frame_tolerance must be >= 0 and --max_seconds > 0, got {self.frame_tolerance} and "
                             f"{self.max_seconds}")
        unknown = sorted(set(self.filelists) - set(SPLITS))
        if unknown:
            raise ValueError(f"unknown split {unknown[0]!r}; splits are {SPLITS}")
