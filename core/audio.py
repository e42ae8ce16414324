"""Audio files: any soundfile format decoded to mono float32 at the config's sampling rate, and vocoded audio
written as the original writes it (16-bit PCM WAV)."""

from __future__ import annotations

import io
import re

import numpy as np
import soundfile as sf
import soxr
from core.errors import UserError

# NOTE: the original scales audio by 0.95 after peak normalisation (librosa.util.normalize(x) * 0.95).
PEAK_NORMALISED = 0.95
# A clip whose peak is below this (about -80 dBFS, three 16-bit LSB) is treated as silent: normalising it
# would divide by (almost) zero.
SILENCE_PEAK = 1e-4
# Suffixes of the audio files the tools take (what libsndfile decodes). A filelist entry ending in one of them is a
# file name; any other entry, dotted or not ("LJ001-0001", "spk.v2_0001"), is a stem that gets ".wav".
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".caf")


class AudioError(UserError):
    """A clip that cannot be used; ``reason`` is a short machine-readable tag, the message says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decodes WAV (PCM 8/16/24/32-bit or float), FLAC, OGG, ... to ([num_samples] float32, sampling_rate).

    Integer PCM is scaled by its own full scale (soundfile does this); float files are taken as they are.
    NOTE: the original divides every WAV by 32768, which silences float WAVs; we do not.
    Several channels are mixed down to mono by their mean.
    """
    try:
        samples, sampling_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError("unreadable", f"cannot decode audio ({_decode_error(e)})") from None
    if samples.shape[0] == 0:
        raise AudioError("empty", "audio has no samples")
    return samples.mean(axis=1, dtype=np.float32), int(sampling_rate)


def _decode_error(error: Exception) -> str:
    """soundfile's reason for a failed decode, on one line, without the repr of the BytesIO it read."""
    # NOTE: LibsndfileError's str() is "Error opening <_io.BytesIO object at 0x...>: <reason>"; its error_string
    # is the reason alone. Other errors may name the BytesIO too.
    text = getattr(error, "error_string", None) or str(error)
    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>:?", "", text).strip()
    lines = text.splitlines()
    return lines[0].strip().rstrip(".") if lines else type(error).__name__


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling with soxr (librosa's default, 'soxr_hq'); a no-op at the same rate."""
    if orig_sr == target_sr:
        return audio
    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def load_audio(data: bytes, sampling_rate: int, normalise: bool) -> np.ndarray:
    """Decoded, mono, resampled to ``sampling_rate`` and (in training mode) peak-normalised to 0.95.

    Raises AudioError for unreadable, empty, non-finite or silent audio.
    """
    audio, orig_sr = decode(data)
    if not np.all(np.isfinite(audio)):
        raise AudioError("non_finite", "audio holds NaN or infinite samples")
    audio = resample(audio, orig_sr, sampling_rate)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak < SILENCE_PEAK:
        raise AudioError("silent", f"audio is silent (peak {peak:.2e} below {SILENCE_PEAK:g})")
    if normalise:
        # Same as librosa.util.normalize(x) * 0.95 (max-abs norm) without its per-call overhead.
        audio = audio * np.float32(PEAK_NORMALISED / peak)
    return audio


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] -> int16 as the original writes it (x 32768, truncated toward zero).

    NOTE: the original casts audio * 32768 to int16 directly, so a sample of exactly +1.0 (tanh saturates in
    float32) wraps around to -32768; we clip to [-32768, 32767] first.
    """
    return np.clip(np.asarray(audio, np.float32) * 32768.0, -32768.0, 32767.0).astype(np.int16)


def write_wav(path: str, audio: np.ndarray, sampling_rate: int, software: str | None = None) -> None:
    """Writes float audio [samples] as 16-bit PCM WAV; ``software`` goes in its INFO chunk (ISFT), where
    :func:`written_by` finds it."""
    with sf.SoundFile(path, "w", sampling_rate, 1, "PCM_16", format="WAV") as f:
        if software:
            f.software = software
        f.write(to_int16(audio))


def written_by(path: str) -> str:
    """The ``software`` a WAV file was written with (:func:`write_wav`; libsndfile appends its version), or ""
    for a file without one or that is not a readable sound file."""
    try:
        with sf.SoundFile(path) as f:
            return f.software or ""
    except (RuntimeError, OSError):  # soundfile's errors are RuntimeErrors
        return ""
