"""core/metrics.py on signals whose answer is known: a clip against itself, a gain, a pitch-shifted copy, white
noise at the same loudness, silence; the numpy MR-STFT against the trainer's TensorFlow one."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from conftest import DEMO_WAVS
from core.audio import load_audio
from core.metrics import METRICS, STFT_RESOLUTIONS, clip_metrics, mrstft_distance, summarize


@pytest.fixture(scope="module")
def speech(v1_config):
    """A demo clip (espeak-ng speech, 1.75 s) at 22.05 kHz, peak-normalised as training loads it."""
    with open(os.path.join(DEMO_WAVS, "LJ050-0269.wav"), "rb") as f:
        return load_audio(f.read(), v1_config.audio.sampling_rate, normalise=True)


def vowel(f0: float, seconds: float, sampling_rate: int) -> np.ndarray:
    """A voiced synthetic vowel: 12 harmonics of ``f0`` (1/k amplitudes, two formant-like bumps) under a smooth
    attack and release, peak 0.5."""
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    harmonics = [k for k in range(1, 13) if k * f0 < sampling_rate / 2]
    gains = [1 / k + 0.8 * np.exp(-((k * f0 - 700) / 200) ** 2) + 0.4 * np.exp(-((k * f0 - 1200) / 250) ** 2)
             for k in harmonics]
    audio = sum(g * np.sin(2 * np.pi * k * f0 * t) for k, g in zip(harmonics, gains))
    envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05)
    audio = audio * envelope
    return (0.5 * audio / np.abs(audio).max()).astype(np.float32)


def test_a_clip_against_itself_is_perfect(speech, v1_config):
    reasons = {}
    values = clip_metrics(speech, speech.copy(), v1_config.audio, reasons)
    assert tuple(values) == METRICS and reasons == {}
    assert values["pesq"] > 4.4  # P.862.2's ceiling is 4.64
    assert values["vuv_f1"] == 1.0
    assert values["mel_l1"] == 0.0 and values["mrstft"] == 0.0
    assert values["periodicity"] == 0.0 and values["f0_rmse_cents"] == 0.0


def test_a_gain_moves_the_log_spectral_metrics_by_its_log_and_leaves_the_others(speech, v1_config):
    # A -60 dB noise floor fills the clip's digital silence: every loss-mel value is then far above the 1e-5
    # floor, and log(0.5 mel) = log(mel) - ln 2.
    reference = speech + 1e-3 * np.random.default_rng(0).standard_normal(speech.size).astype(np.float32)
    values = clip_metrics(reference, 0.5 * reference, v1_config.audio)
    assert values["mel_l1"] == pytest.approx(math.log(2), abs=2e-3)
    assert values["pesq"] > 4.4  # PESQ aligns levels
    assert values["vuv_f1"] == 1.0 and values["f0_rmse_cents"] < 1.0 and values["periodicity"] < 0.01


@pytest.mark.parametrize("semitones", [2, -3])
def test_a_pitch_shifted_copy_is_off_by_100_cents_per_semitone(v1_config, semitones):
    sr = v1_config.audio.sampling_rate
    reference = vowel(140.0, 1.0, sr)
    shifted = vowel(140.0 * 2 ** (semitones / 12), 1.0, sr)
    values = clip_metrics(reference, shifted, v1_config.audio)
    assert values["f0_rmse_cents"] == pytest.approx(100 * abs(semitones), abs=3)
    assert values["vuv_f1"] == 1.0 and values["periodicity"] < 0.02  # both are equally periodic


def test_white_noise_at_the_same_loudness_scores_low(speech, v1_config):
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(speech.size).astype(np.float32)
    noise *= np.sqrt(np.mean(speech ** 2)) / noise.std()
    slightly_noisy = speech + 0.01 * noise  # -40 dB of the same noise: a small degradation
    noisy, mild = (clip_metrics(speech, x, v1_config.audio) for x in (noise, slightly_noisy))
    assert noisy["pesq"] < 1.5 < mild["pesq"]
    assert noisy["periodicity"] > 0.3 > 10 * mild["periodicity"]
    assert noisy["vuv_f1"] < 0.2 < 0.9 < mild["vuv_f1"]
    assert noisy["mel_l1"] > 3 * mild["mel_l1"] and noisy["mrstft"] > 2 * mild["mrstft"]


def test_what_cannot_be_computed_is_nan_with_a_reason(speech, v1_config):
    reasons = {}
    values = clip_metrics(speech, np.zeros_like(speech), v1_config.audio, reasons)
    assert math.isnan(values["pesq"]) and reasons["pesq"] == "generated audio is silent"
    assert math.isnan(values["f0_rmse_cents"]) and reasons["f0_rmse_cents"] == "no frame voiced in both signals"
    assert values["vuv_f1"] == 0.0 and values["periodicity"] > 0.3  # silence misses every voiced frame
    short = {}
    values = clip_metrics(speech[:500], speech[:500], v1_config.audio, short)
    assert values["mel_l1"] == 0.0 and all(math.isnan(values[m]) for m in ("pesq", "periodicity", "vuv_f1"))
    assert "1/4 of a second" in short["pesq"] and "pitch window" in short["vuv_f1"]
    diverged = {}
    values = clip_metrics(speech, np.full_like(speech, np.nan), v1_config.audio, diverged)
    assert all(math.isnan(v) for v in values.values())
    assert diverged["mel_l1"] == "generated audio holds NaN or infinite samples"


def test_the_longer_signal_is_trimmed(speech, v1_config):
    padded = np.concatenate([speech, np.full(100, 0.5, np.float32)])
    assert clip_metrics(speech, padded, v1_config.audio) == clip_metrics(speech, speech, v1_config.audio)


def test_numpy_mrstft_equals_the_trainers_tensorflow_one():
    import tensorflow as tf

    from model.logging_utils import multi_resolution_stft_distance

    rng = np.random.default_rng(1)
    for length in (4000, 11025, 7777):  # not multiples of any hop: pad_end's last frame
        y = (0.3 * np.sin(np.arange(length) * 0.05) + 0.05 * rng.standard_normal(length)).astype(np.float32)
        y_hat = (y + 0.02 * rng.standard_normal(length)).astype(np.float32)
        expected = float(multi_resolution_stft_distance(tf.constant(y[None]), tf.constant(y_hat[None])))
        assert mrstft_distance(y, y_hat) == pytest.approx(expected, rel=1e-4)


def test_summarize_gives_the_mean_and_a_student_t_interval():
    result = summarize([1.0, 2.0, float("nan"), 3.0])
    assert result["mean"] == pytest.approx(2.0)
    assert result["ci95"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) * s / sqrt(n), s = 1
    assert summarize([5.0])["mean"] == 5.0 and math.isnan(summarize([5.0])["ci95"])
    assert math.isnan(summarize([])["mean"])
