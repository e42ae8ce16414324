"""One clip's work in pass 1, apart from Beam: read its bytes, decode, check and compute its mels.

A clip that cannot be used raises :class:`ClipError`, whose ``reason`` is its tag in rejected.jsonl.
"""

from __future__ import annotations

import ctypes
import dataclasses

import numpy as np
from apache_beam.io.filesystems import FileSystems

from core.audio import AudioError, load_audio
from core.errors import UserError
from core.mel import MelExtractor
from core.melfile import TeacherMelError, load_teacher_mel
from core.storage import BEAM_IO, read_bytes

# glibc's mallopt() settings made by keep_freed_memory(): M_MMAP_THRESHOLD (-3), blocks below it come from the heap
# (64 MB: a 60 s clip's STFT temporaries); M_TRIM_THRESHOLD (-1), free heap kept for reuse up to it.
MALLOPT_SETTINGS = ((-3, 64 * 2**20), (-1, 128 * 2**20))


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


def read_input(path: str, missing_reason: str, unreadable_reason: str) -> bytes:
    """The bytes of an input file on any Beam filesystem; ClipError(missing_reason) if absent."""
    try:
        return read_bytes(path, BEAM_IO)
    except Exception as e:  # filesystems raise BeamIOError, OSError or their own client errors
        if not FileSystems.exists(path):
            raise ClipError(missing_reason, "file not found") from None
        raise ClipError(unreadable_reason, f"cannot read file ({type(e).__name__}: {e})") from None


def read_teacher_mel(base_mels_path: str, clip_id: str, num_mels: int) -> np.ndarray:
    """The teacher mel [T, num_mels] of a clip, ``<base_mels_path>/<clip_id>.npy``; ClipError naming the file."""
    path = FileSystems.join(base_mels_path, f"{clip_id}.npy")
    try:
        data = read_input(path, "teacher_mel_missing", "teacher_mel_unreadable")
        return load_teacher_mel(data, num_mels)
    except (ClipError, TeacherMelError) as e:
        raise ClipError(e.reason, f"{path}: {e}") from None


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
