"""Vocoder quality metrics of one generated clip against its reference, in numpy (no TensorFlow): the one home
used by run_evaluate.py, by the trainer's validation and by the benchmarks.

- ``mel_l1``: the original's validation mel error, mean |log-mel(reference) - log-mel(generated)| with the loss
  mel (``fmax_for_loss``), core/mel.py's numpy mel.
- ``mrstft``: multi-resolution STFT distance, the definition of model/logging_utils.py's
  ``multi_resolution_stft_distance`` (ParallelWaveGAN's three resolutions; spectral convergence + log-magnitude
  L1, averaged over resolutions), in numpy.
- ``pesq``: wide-band PESQ (ITU-T P.862.2, the ``pesq`` package) on both signals resampled to 16 kHz with soxr.
- ``periodicity``, ``vuv_f1``, ``f0_rmse_cents``: from Praat's autocorrelation pitch tracker (parselmouth), 10 ms
  frames, 50-550 Hz (CARGAN's range). Periodicity per frame is the strength (normalised autocorrelation) of the
  best voiced candidate, 0 where Praat finds none or the frame is silent by Praat's own criterion (local peak
  below 0.03 of the signal's peak); ``periodicity`` is the RMSE of the two tracks over all frames. Voicing is
  Praat's path-finder decision; ``vuv_f1`` takes the reference's voiced frames as the positive class;
  ``f0_rmse_cents`` is the RMSE of 1200 log2(f0_gen / f0_ref) over the frames voiced in both.

A metric that cannot be computed for a clip (PESQ of silence, F0 with no frame voiced in both, a clip too short
for an STFT) is NaN, never an exception; ``clip_metrics`` can say why. Level: PESQ and the pitch metrics do not
depend on the signals' gain; mel L1 and MR-STFT do (a gain g adds |ln g| to a log-magnitude L1).
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import parselmouth
import pesq as pesq_lib
import scipy.fft
import scipy.ndimage
import scipy.signal
import scipy.stats

from core.audio import SILENCE_PEAK, resample
from core.config import AudioConfig
from core.mel import MelExtractor

METRICS = ("mel_l1", "mrstft", "pesq", "periodicity", "vuv_f1", "f0_rmse_cents")
# Whether a larger value is better, per metric (for tables and comparisons).
HIGHER_IS_BETTER = {"mel_l1": False, "mrstft": False, "pesq": True, "periodicity": False, "vuv_f1": True,
                    "f0_rmse_cents": False}

# (n_fft, hop, win) of the MR-STFT distance: ParallelWaveGAN's multi-resolution STFT loss settings (also
# auraloss's defaults, which BigVGAN's validation uses). model/logging_utils.py's TF version must use the same.
STFT_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
STFT_FLOOR = 1e-7  # magnitudes are clamped here before the log and in the norms' denominators (as the TF version)

PESQ_RATE = 16000  # wide-band PESQ is defined at 16 kHz

# Praat's autocorrelation pitch (Sound: To Pitch (ac)...): frame step, range (CARGAN's and Vocos' 50-550 Hz) and
# Praat's default silence threshold (fraction of the signal's peak), which we also use to zero periodicity.
PITCH_TIME_STEP = 0.01
PITCH_FLOOR, PITCH_CEILING = 50.0, 550.0
PITCH_SILENCE_THRESHOLD = 0.03
PERIODS_PER_WINDOW = 3.0  # Praat's AC window: 3 periods of the floor (60 ms)


def clip_metrics(reference: np.ndarray, generated: np.ndarray, audio: AudioConfig,
                 reasons: dict[str, str] | None = None) -> dict[str, float]:
    """{metric: value} for each of METRICS, generated against reference (float audio [samples] at
    ``audio.sampling_rate``; the longer is trimmed to the shorter). A metric that cannot be computed is NaN; when
    ``reasons`` is given, it receives {metric: why} for each of them."""
    reference, generated = _same_length(reference, generated)
    for name, signal in (("reference", reference), ("generated audio", generated)):
        if not np.all(np.isfinite(signal)):  # a diverged generator: nothing to measure
            if reasons is not None:
                reasons.update({metric: f"{name} holds NaN or infinite samples" for metric in METRICS})
            return {metric: math.nan for metric in METRICS}
    why: dict[str, str] = {}
    values = {"mel_l1": _guarded(mel_l1, why, "mel_l1", reference, generated, audio),
              "mrstft": _guarded(mrstft_distance, why, "mrstft", reference, generated)}
    if _silent(reference) or _silent(generated):  # PESQ's level alignment divides by the signal's power
        values["pesq"] = math.nan
        why["pesq"] = f"{'reference' if _silent(reference) else 'generated audio'} is silent"
    else:
        values["pesq"] = _guarded(wideband_pesq, why, "pesq", reference, generated, audio.sampling_rate)
    try:
        values.update(pitch_metrics(reference, generated, audio.sampling_rate))
    except _Undefined as e:
        values.update({name: math.nan for name in ("periodicity", "vuv_f1", "f0_rmse_cents")})
        why.update({name: str(e) for name in ("periodicity", "vuv_f1", "f0_rmse_cents")})
    for name in METRICS:
        if math.isnan(values[name]) and name not in why:
            why[name] = {"vuv_f1": "no frame voiced in either signal",
                         "f0_rmse_cents": "no frame voiced in both signals"}.get(name, "undefined")
    if reasons is not None:
        reasons.update(why)
    return {name: float(values[name]) for name in METRICS}


def json_ready(value):
    """``value`` (dicts, lists and tuples of floats, nested) with every NaN or infinity as None: JSON's null, as
    summary.json and the benchmarks' JSON write an undefined metric."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def summarize(values: Sequence[float]) -> dict[str, float]:
    """{"mean", "ci95"}: the mean of the finite values and the half-width of its 95 % confidence interval
    (Student t, n - 1 degrees of freedom). NaNs are left out; mean is NaN without values, ci95 with fewer than
    two."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    n = finite.size
    mean = float(finite.mean()) if n else math.nan
    if n < 2:
        return {"mean": mean, "ci95": math.nan}
    sem = float(finite.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "ci95": float(scipy.stats.t.ppf(0.975, n - 1)) * sem}


class _Undefined(ValueError):
    """A metric that has no value for this clip; the message says why."""


def _guarded(function, why: dict[str, str], name: str, *args) -> float:
    try:
        return function(*args)
    except _Undefined as e:
        why[name] = str(e)
        return math.nan


def _same_length(reference: np.ndarray, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference = np.asarray(reference, np.float32).reshape(-1)
    generated = np.asarray(generated, np.float32).reshape(-1)
    n = min(reference.size, generated.size)
    return reference[:n], generated[:n]


def _silent(audio: np.ndarray) -> bool:
    return audio.size == 0 or float(np.max(np.abs(audio))) < SILENCE_PEAK


# --- spectral distances ------------------------------------------------------------------------------------------

def mel_l1(reference: np.ndarray, generated: np.ndarray, audio: AudioConfig) -> float:
    """Mean absolute difference of the loss log-mels (``fmax_for_loss``): the original's validation mel error."""
    extractor = MelExtractor(audio)
    try:
        mels = [extractor.log_mel(extractor.magnitude(x), for_loss=True) for x in (reference, generated)]
    except ValueError as e:  # too short for the STFT's reflect padding
        raise _Undefined(f"too short for the mel STFT ({e})") from None
    return float(np.mean(np.abs(mels[0] - mels[1])))


def stft_magnitude(audio: np.ndarray, n_fft: int, hop: int, win: int) -> np.ndarray:
    """|STFT| [frames, n_fft // 2 + 1] as ``tf.signal.stft(audio, win, hop, n_fft, pad_end=True)`` computes it:
    a periodic Hann window of ``win`` samples, frames zero-padded at their end to ``n_fft``, the signal
    zero-padded at its end to ceil(samples / hop) frames."""
    num_frames = -(-audio.size // hop)
    padded = np.pad(audio.astype(np.float64), (0, max(0, (num_frames - 1) * hop + win - audio.size)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop][:num_frames]
    window = scipy.signal.get_window("hann", win, fftbins=True)
    return np.abs(scipy.fft.rfft(frames * window, n=n_fft, axis=-1))


def mrstft_distance(reference: np.ndarray, generated: np.ndarray) -> float:
    """Mean over STFT_RESOLUTIONS of spectral convergence ||M - M'||_F / ||M||_F plus the mean absolute
    difference of the log magnitudes (magnitudes clamped at STFT_FLOOR), M the reference's."""
    if reference.size == 0:
        raise _Undefined("no samples")
    total = 0.0
    for n_fft, hop, win in STFT_RESOLUTIONS:
        mag, mag_hat = (np.maximum(stft_magnitude(x, n_fft, hop, win), STFT_FLOOR) for x in (reference, generated))
        convergence = np.linalg.norm(mag - mag_hat) / max(np.linalg.norm(mag), STFT_FLOOR)
        total += convergence + np.mean(np.abs(np.log(mag) - np.log(mag_hat)))
    return float(total / len(STFT_RESOLUTIONS))


# --- PESQ --------------------------------------------------------------------------------------------------------

def wideband_pesq(reference: np.ndarray, generated: np.ndarray, sampling_rate: int) -> float:
    """Wide-band PESQ (MOS-LQO, about 1.0 to 4.64) of both signals resampled to 16 kHz with soxr."""
    ref16, gen16 = (resample(np.asarray(x, np.float32), sampling_rate, PESQ_RATE) for x in (reference, generated))
    try:
        with warnings.catch_warnings():  # the package divides by the joint peak: a warning before its own error
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(pesq_lib.pesq(PESQ_RATE, ref16, gen16, "wb"))
    except pesq_lib.PesqError as e:  # NoUtterancesError, BufferTooShortError
        raise _Undefined(f"PESQ: {_pesq_message(e)}") from None
    except ValueError as e:  # its level alignment of a (near-)silent signal
        raise _Undefined(f"PESQ: {e}") from None


def _pesq_message(error: Exception) -> str:
    text = str(error.args[0] if error.args else error)
    return text[2:-1] if text.startswith(("b'", 'b"')) else text  # the package's messages are bytes


# --- pitch, voicing, periodicity ---------------------------------------------------------------------------------

def pitch_track(audio: np.ndarray, sampling_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(f0 [frames] in Hz, NaN where unvoiced; periodicity [frames] in [0, 1]) from Praat's autocorrelation
    tracker, one frame per PITCH_TIME_STEP. Raises _Undefined for a signal shorter than the analysis window."""
    sound = parselmouth.Sound(np.asarray(audio, np.float64), sampling_frequency=float(sampling_rate))
    try:
        pitch = sound.to_pitch_ac(time_step=PITCH_TIME_STEP, pitch_floor=PITCH_FLOOR, pitch_ceiling=PITCH_CEILING,
                                  silence_threshold=PITCH_SILENCE_THRESHOLD)
    except parselmouth.PraatError:
        raise _Undefined(f"shorter than the pitch window ({PERIODS_PER_WINDOW / PITCH_FLOOR * 1000:.0f} ms)") \
            from None
    if pitch.n_frames == 0:
        raise _Undefined("no pitch frame")
    selected = pitch.selected_array["frequency"]
    f0 = np.where(selected > 0, selected, np.nan)
    candidates = pitch.to_array()  # [candidates, frames] of (frequency, strength); frequency 0: unvoiced
    strength = np.where(candidates["frequency"] > 0, candidates["strength"], 0.0).max(axis=0)
    periodicity = np.clip(strength, 0.0, 1.0) * ~_silent_frames(audio, sampling_rate, pitch.xs())
    return f0, periodicity


def _silent_frames(audio: np.ndarray, sampling_rate: int, times: np.ndarray) -> np.ndarray:
    """Frames whose local peak (over Praat's window) is below PITCH_SILENCE_THRESHOLD of the signal's peak."""
    magnitude = np.abs(np.asarray(audio, np.float64))
    window = max(1, int(round(PERIODS_PER_WINDOW / PITCH_FLOOR * sampling_rate)))
    local_peak = scipy.ndimage.maximum_filter1d(magnitude, size=window, mode="constant")
    index = np.clip(np.round(times * sampling_rate).astype(int), 0, magnitude.size - 1)
    return local_peak[index] < PITCH_SILENCE_THRESHOLD * magnitude.max()


def pitch_metrics(reference: np.ndarray, generated: np.ndarray, sampling_rate: int) -> dict[str, float]:
    """periodicity RMSE, V/UV F1 (reference voiced = positive) and F0 RMSE in cents (frames voiced in both) of
    two signals of the same length."""
    f0_ref, periodicity_ref = pitch_track(reference, sampling_rate)
    f0_gen, periodicity_gen = pitch_track(generated, sampling_rate)
    frames = min(f0_ref.size, f0_gen.size)
    f0_ref, f0_gen = f0_ref[:frames], f0_gen[:frames]
    voiced_ref, voiced_gen = ~np.isnan(f0_ref), ~np.isnan(f0_gen)
    both = voiced_ref & voiced_gen
    true_pos = int(both.sum())
    errors = int((voiced_ref ^ voiced_gen).sum())  # false positives + false negatives
    cents = 1200.0 * np.log2(f0_gen[both] / f0_ref[both])
    return {
        "periodicity": float(np.sqrt(np.mean((periodicity_ref[:frames] - periodicity_gen[:frames]) ** 2))),
        "vuv_f1": 2 * true_pos / (2 * true_pos + errors) if true_pos + errors else math.nan,
        "f0_rmse_cents": float(np.sqrt(np.mean(cents ** 2))) if true_pos else math.nan,
    }
