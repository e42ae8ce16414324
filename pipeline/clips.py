"""One clip's work in pass 1, apart from Beam: read its bytes, decode, check and compute its mels.

A clip that cannot be used raises :class:`ClipError`, whose ``reason`` is its tag in rejected.jsonl. A file the
storage fails to read (permission, auth, network, timeout, server error) is no fault of the clip: it is read again
a few times, then raises :class:`StorageError`, which fails the job.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import time

import numpy as np
from apache_beam.io.filesystems import FileSystems

from core.audio import AudioError, load_audio
from core.errors import UserError
from core.mel import MelExtractor
from core.melfile import TeacherMelError, load_teacher_mel
from core.storage import BEAM_IO, MISSING, NOT_A_FILE, STORAGE_FAULT, first_line, read_bytes, read_failure

# glibc's mallopt() settings made by keep_freed_memory(): M_MMAP_THRESHOLD (-3), blocks below it come from the heap
# (64 MB: a 60 s clip's STFT temporaries); M_TRIM_THRESHOLD (-1), free heap kept for reuse up to it.
MALLOPT_SETTINGS = ((-3, 64 * 2**20), (-1, 128 * 2**20))
# A read the storage failed is tried again after 0.1 s, 0.2 s, 0.4 s ... (at most RETRY_MAX_DELAY_S each).
RETRY_FIRST_DELAY_S, RETRY_MAX_DELAY_S = 0.1, 2.0


class ClipError(UserError):
    """A clip rejected for its content; ``reason`` is the rejected.jsonl tag."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class StorageError(UserError):
    """A file the storage failed to read (after retries) or to write; one line naming the file and the cause. It
    fails the job (exit status 1): a clip that was never read is not rejected."""

    exit_status = 1


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


def read_input(path: str, missing_reason: str, unreadable_reason: str, retries: int) -> bytes:
    """The bytes of an input file on any Beam filesystem.

    ClipError(missing_reason) if it does not exist, ClipError(unreadable_reason) if it is no file (a directory);
    a failure of the storage is read again up to ``retries`` times with a short backoff, then raises StorageError.
    NOTE: the retries are here, not left to the runner: DirectRunner never retries a bundle, and a retried bundle
    would redo every clip of it. Object-store clients retry their own requests too; this covers what they give up on.
    """
    attempt = 0
    while True:
        try:
            return read_bytes(path, BEAM_IO)
        except Exception as e:  # filesystems raise BeamIOError, OSError or their own client errors
            kind = read_failure(e) or _exists_or_fault(path)
            if kind == MISSING:
                raise ClipError(missing_reason, "file not found") from None
            if kind == NOT_A_FILE:
                raise ClipError(unreadable_reason, f"cannot read file ({first_line(e)})") from None
            if attempt == retries:
                raise StorageError(f"{path}: cannot read: {first_line(e)} ({attempt + 1} attempts)") from None
            logging.warning("%s: read failed (%s); reading it again", path, first_line(e))
            time.sleep(min(RETRY_MAX_DELAY_S, RETRY_FIRST_DELAY_S * 2 ** attempt))
            attempt += 1


def _exists_or_fault(path: str) -> str:
    """MISSING if the storage says ``path`` does not exist, else STORAGE_FAULT (it exists, or the storage fails)."""
    try:
        return STORAGE_FAULT if FileSystems.exists(path) else MISSING
    except Exception:  # the storage failing again
        return STORAGE_FAULT


@contextlib.contextmanager
def write_errors(path: str):
    """Turns the storage failing to write ``path`` (ENOSPC, permission, a bucket's error) into StorageError, one
    line naming it; other errors (bugs) pass as they are."""
    try:
        yield
    except Exception as e:
        if isinstance(e, StorageError) or not (isinstance(e, OSError) or read_failure(e)):
            raise
        raise StorageError(f"{path}: cannot write: {first_line(e)}") from None


def read_teacher_mel(base_mels_path: str, clip_id: str, num_mels: int, retries: int) -> np.ndarray:
    """The teacher mel [T, num_mels] of a clip, ``<base_mels_path>/<clip_id>.npy``; ClipError naming the file."""
    path = FileSystems.join(base_mels_path, f"{clip_id}.npy")
    try:
        data = read_input(path, "teacher_mel_missing", "teacher_mel_unreadable", retries)
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
