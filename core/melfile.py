"""Teacher-forced (ground-truth aligned) Tacotron mels for fine-tuning.

The original fine-tunes on ``<input_mels_dir>/<stem>.npy`` files written by Tacotron 2 in teacher-forcing mode.
Tools save them as floating-point (num_mels, T), (1, num_mels, T) or (T, num_mels); all become [T, num_mels]
float32 here.
"""

from __future__ import annotations

import io

import numpy as np
from core.errors import UserError


class TeacherMelError(UserError):
    """A teacher mel that cannot be used; ``reason`` is a short tag (teacher_mel_*), the message says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def teacher_mel_layout(mel: np.ndarray, num_mels: int) -> np.ndarray:
    """A Tacotron mel in any of the three layouts as [T, num_mels] float32.

    NOTE: a square (num_mels, num_mels) array is ambiguous; it is read as (num_mels, T), the original's layout.
    """
    if mel.ndim == 3 and mel.shape[0] == 1:
        mel = mel[0]
    if mel.ndim == 2 and mel.shape[0] == num_mels:
        mel = mel.T
    elif not (mel.ndim == 2 and mel.shape[1] == num_mels):
        raise TeacherMelError("teacher_mel_shape", f"teacher mel of shape {mel.shape} is neither (num_mels, T), "
                              f"(1, num_mels, T) nor (T, num_mels) for num_mels {num_mels}")
    return np.ascontiguousarray(mel, dtype=np.float32)


def load_teacher_mel(data: bytes, num_mels: int) -> np.ndarray:
    """Decodes a ``.npy`` teacher mel to [T, num_mels] float32; TeacherMelError if unusable."""
    try:
        mel = np.load(io.BytesIO(data), allow_pickle=False)
        # NOTE: as inference does: complex values would lose their imaginary part, integers are no log-mel.
        if not isinstance(mel, np.ndarray) or not np.issubdtype(mel.dtype, np.floating):
            raise ValueError(f"dtype {getattr(mel, 'dtype', type(mel).__name__)} is not floating point")
    except (ValueError, OSError, EOFError) as e:
        raise TeacherMelError("teacher_mel_unreadable", f"cannot read teacher mel ({e})") from None
    mel = teacher_mel_layout(mel, num_mels)
    if mel.shape[0] == 0:
        raise TeacherMelError("teacher_mel_shape", "teacher mel has no frames")
    if not np.all(np.isfinite(mel)):
        raise TeacherMelError("teacher_mel_non_finite", "teacher mel holds NaN or infinite values")
    return mel
