"""What the preprocessing job reads and writes: its options other than Beam's own."""

from __future__ import annotations

import dataclasses
from typing import Mapping

from core.cli import option
from core.errors import UserError
from core.manifest import SPLITS
from core.records import AUDIO_ENCODINGS


class OptionsError(UserError, ValueError):
    """Options the job refuses; one-line message. A ValueError too, as it was before UserError."""


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
    """What the job reads and writes (the job's flags other than Beam's own): each field with help text is a flag
    of run_preprocess.py (``--<field>``), with the field's default.

    ``filelists`` maps a split name ("train", "val") to its filelist. ``base_mels_path`` switches to fine-tune
    mode: teacher-forced Tacotron mels ``<base_mels_path>/<id>.npy`` replace the model-input mel.
    """

    filelists: Mapping[str, str]  # no flag: run_preprocess.py's --train_filelist and --val_filelist
    audio_root: str = option(help="directory the filelist paths are relative to")
    output_dir: str = option(help="where shards, manifest.json and rejected.jsonl go (local path or any Beam "
                                  "filesystem URI, e.g. gs://bucket/dir)")
    base_mels_path: str | None = option(None, help="fine-tune mode: directory of teacher-forced Tacotron mels "
                                                   "<id>.npy (the original's --input_mels_dir); audio is not "
                                                   "peak-normalised")
    num_shards: int | None = option(None, help="shards per split (default: ~150 MB each)")
    frame_tolerance: int = option(2, help="fine-tune mode: largest frame-count difference between a teacher mel and "
                                          "its audio that is trimmed away, not rejected")
    max_seconds: float = option(60.0, help="reject clips longer than this")
    audio_encoding: str = option("int16", help="how records store audio: int16 (PCM) or float32")
    max_rejected_fraction: float = option(
        0.1, help="refuse to commit the dataset when more than this fraction of a split's lines is rejected "
                  "(rejected.jsonl is still written; exit status 2). Default 0.1: a clean corpus such as LJSpeech "
                  "rejects nothing and a few bad or overlong files stay far below it, while a wrong --audio_root "
                  "or teacher mel directory, or an unmounted bucket, rejects all. A split that writes no clip is "
                  "always refused")
    overwrite: bool = option(False, help="replace a dataset in --output_dir of another audio fingerprint, audio "
                                         "encoding or kind (refused without it)")
    read_retries: int = option(4, help="times a clip or teacher mel the storage failed to read (permission, network, "
                                       "timeout, server error) is read again, after 0.1, 0.2, 0.4 ... s, before "
                                       "the job fails")

    def __post_init__(self):
        if self.audio_encoding not in AUDIO_ENCODINGS:
            raise OptionsError(f"audio_encoding must be one of {AUDIO_ENCODINGS}, got {self.audio_encoding!r}")
        if self.num_shards is not None and self.num_shards < 1:
            raise OptionsError(f"num_shards must be >= 1, got {self.num_shards}")
        if self.read_retries < 0:
            raise OptionsError(f"read_retries must be >= 0, got {self.read_retries}")
        if self.frame_tolerance < 0 or not self.max_seconds > 0:
            raise OptionsError(f"--frame_tolerance must be >= 0 and --max_seconds > 0, got {self.frame_tolerance} "
                               f"and {self.max_seconds}")
        if not 0 <= self.max_rejected_fraction <= 1:
            raise OptionsError(f"--max_rejected_fraction must be between 0 and 1, got {self.max_rejected_fraction}")
        unknown = sorted(set(self.filelists) - set(SPLITS))
        if unknown:
            raise OptionsError(f"unknown split {unknown[0]!r}; splits are {SPLITS}")
