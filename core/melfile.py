"""``.npy`` mel files: teacher-forced Tacotron mels for fine-tuning, and the mels inference vocodes.

The original fine-tunes on ``<input_mels_dir>/<stem>.npy`` files written by Tacotron 2 in teacher-forcing mode,
and its inference reads the same files. Tools save them as floating-point (num_mels, T), (1, num_mels, T),
(T, num_mels) or (1, T, num_mels); all become [T, num_mels] float32 here (:func:`frames_first`). The job rejects
a bad teacher mel with a ``teacher_mel_*`` reason (:func:`load_teacher_mel`), inference skips a bad input with
its own one-line message (:func:`load_mel_file`).
"""

from __future__ import annotations

import io

import numpy as np

from core.config import LOG_FLOOR_VALUE
from core.errors import UserError
from core.storage import first_line

# Natural-log HiFi-GAN mels of speech: max below ~2.5, min at or above log(1e-5), mean around -5 .. -7.
MEL_MAX_PLAUSIBLE = 2.5
MEL_MEAN_PLAUSIBLE = (-10.0, -3.0)


class TeacherMelError(UserError):
    """A teacher mel that cannot be used; ``reason`` is a short tag (teacher_mel_*), the message says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class MelFileError(UserError):
    """An inference input ``.npy`` that is no usable mel; the message says why (one line)."""


def frames_first(mel: np.ndarray, num_mels: int) -> np.ndarray | None:
    """A mel of any of the layouts as [T, num_mels] (a view, dtype kept), or None if none fits.

    NOTE: a square (num_mels, num_mels) array is ambiguous; it is read as (num_mels, T), the original's layout.
    """
    mel = _unbatched(mel)
    if mel.ndim == 2 and mel.shape[0] == num_mels:
        return mel.T
    return mel if mel.ndim == 2 and mel.shape[1] == num_mels else None


def _unbatched(mel: np.ndarray) -> np.ndarray:
    """``mel`` without a leading batch axis of one."""
    return mel[0] if mel.ndim == 3 and mel.shape[0] == 1 else mel


def teacher_mel_layout(mel: np.ndarray, num_mels: int) -> np.ndarray:
    """A Tacotron mel in any of the layouts as [T, num_mels] float32; TeacherMelError if none fits."""
    frames = frames_first(mel, num_mels)
    if frames is None:
        raise TeacherMelError("teacher_mel_shape", f"teacher mel of shape {_unbatched(mel).shape} is neither "
                              f"(num_mels, T), (1, num_mels, T) nor (T, num_mels) for num_mels {num_mels}")
    return np.ascontiguousarray(frames, dtype=np.float32)


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


def load_mel_file(data: bytes, num_mels: int) -> np.ndarray:
    """An inference input: the bytes of a ``.npy`` mel as float32 [frames, num_mels]. MelFileError (one line) for
    what is no mel: not a .npy array, not floating point, no axis of num_mels, no frames, NaN or infinity."""
    try:
        mel = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        why = first_line(e, innermost=False, with_type=False)
        if "pickled" in why:  # numpy's guess for any file without the .npy header
            why = "no .npy header; pickled data is not loaded"
        elif "Object arrays" in why:
            why = "an object array; Python objects are not loaded"
        raise MelFileError(f"unreadable .npy ({why})") from None
    if not isinstance(mel, np.ndarray):  # an .npz archive under a .npy name
        mel.close()
        raise MelFileError("an .npz archive, not a .npy array")
    mel = _unbatched(mel)
    if mel.ndim != 2:
        raise MelFileError(f"shape {list(mel.shape)} is not a mel (expected (num_mels, T) or (T, num_mels))")
    if not np.issubdtype(mel.dtype, np.floating):
        raise MelFileError(f"dtype {mel.dtype} is not floating point")
    frames = frames_first(mel, num_mels)
    if frames is None:
        raise MelFileError(f"shape {list(mel.shape)} has no axis of num_mels = {num_mels}")
    if frames.shape[0] == 0:
        raise MelFileError("empty mel (0 frames)")
    if not np.all(np.isfinite(frames)):
        raise MelFileError("mel holds NaN or infinite values")
    return np.ascontiguousarray(frames, np.float32)


def mel_warning(mel: np.ndarray) -> str | None:
    """Why ``mel`` [frames, num_mels] does not look like a natural-log HiFi-GAN mel, or None if it does."""
    low, high, mean = float(mel.min()), float(mel.max()), float(mel.mean())
    if high > MEL_MAX_PLAUSIBLE:
        return f"max {high:.2f} > {MEL_MAX_PLAUSIBLE} (a normalised or dB mel?)"
    if low < LOG_FLOOR_VALUE - 1e-3:
        return f"min {low:.2f} below log(1e-5) = {LOG_FLOOR_VALUE:.2f} (another floor or log base?)"
    if not MEL_MEAN_PLAUSIBLE[0] <= mean <= MEL_MEAN_PLAUSIBLE[1]:
        return f"mean {mean:.2f} far from the typical -5 .. -7 (a normalised or log10 mel?)"
    if low > LOG_FLOOR_VALUE + 4 and high - low < 7:
        return f"values in [{low:.2f}, {high:.2f}]: min well above log(1e-5) with a small range (log10?)"
    return None
