"""core/audio.py on real files written with soundfile: formats, mixdown, resampling, normalisation, errors."""

import io

import numpy as np
import pytest
import soundfile as sf

from conftest import sine, write_audio
from core.audio import PEAK_NORMALISED, AudioError, decode, load_audio

SR = 22050


def _bytes(tmp_path, audio, sampling_rate, subtype="PCM_16", format=None, name="clip.wav"):
    with open(write_audio(tmp_path / name, audio, sampling_rate, subtype, format), "rb") as f:
        return f.read()


@pytest.mark.parametrize("subtype,tol", [("PCM_16", 1 / 32767), ("PCM_24", 1 / 2**23), ("PCM_32", 1 / 2**31),
                                         ("FLOAT", 1e-7)])
def test_wav_bit_depths_scale_to_full_scale(tmp_path, subtype, tol):
    audio = sine(440, 0.5, SR, amplitude=0.7)
    decoded, sampling_rate = decode(_bytes(tmp_path, audio, SR, subtype))
    assert sampling_rate == SR and decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, audio, atol=tol * 1.01)


def test_float_wav_is_not_divided_by_32768(tmp_path):
    # NOTE: the original divides every WAV by 32768, which would make this clip's peak 0.8 / 32768.
    audio = sine(300, 0.5, SR, amplitude=0.8)
    decoded = load_audio(_bytes(tmp_path, audio, SR, "FLOAT"), SR, normalise=False)
    assert decoded.max() == pytest.approx(0.8, abs=1e-4)


@pytest.mark.parametrize("format,subtype,name,tol", [("FLAC", "PCM_16", "clip.flac", 1 / 32767),
                                                     ("OGG", "VORBIS", "clip.ogg", 0.05)])
def test_flac_and_ogg(tmp_path, format, subtype, name, tol):
    audio = sine(440, 0.5, SR, amplitude=0.5)
    decoded, sampling_rate = decode(_bytes(tmp_path, audio, SR, subtype, format, name))
    assert sampling_rate == SR
    assert abs(decoded.size - audio.size) < 0.01 * SR
    n = min(decoded.size, audio.size)
    assert np.max(np.abs(decoded[:n] - audio[:n])) < tol


def test_stereo_is_mixed_down_by_mean(tmp_path):
    left, right = sine(440, 0.3, SR, 0.6), sine(440, 0.3, SR, 0.2)
    decoded, _ = decode(_bytes(tmp_path, np.stack([left, right], axis=1), SR, "FLOAT"))
    np.testing.assert_allclose(decoded, (left + right) / 2, atol=1e-6)


def _dominant_frequency(audio, sampling_rate):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return np.argmax(spectrum) * sampling_rate / audio.size


@pytest.mark.parametrize("orig_sr", [16000, 44100, 48000])
def test_resampling_keeps_frequency_and_amplitude(tmp_path, orig_sr):
    audio = sine(1000, 1.0, orig_sr, amplitude=0.5)
    resampled = load_audio(_bytes(tmp_path, audio, orig_sr, "FLOAT"), SR, normalise=False)
    assert resampled.dtype == np.float32
    assert abs(resampled.size - SR) <= 1
    assert _dominant_frequency(resampled, SR) == pytest.approx(1000, abs=2)
    middle = resampled[SR // 10:-SR // 10]
    assert np.max(np.abs(middle)) == pytest.approx(0.5, abs=0.01)
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_normalisation_only_in_training_mode(tmp_path):
    data = _bytes(tmp_path, sine(440, 0.5, SR, amplitude=0.3), SR, "FLOAT")
    normalised = load_audio(data, SR, normalise=True)
    raw = load_audio(data, SR, normalise=False)
    assert np.max(np.abs(normalised)) == pytest.approx(PEAK_NORMALISED, abs=1e-6)
    assert np.max(np.abs(raw)) == pytest.approx(0.3, abs=1e-4)
    np.testing.assert_allclose(normalised, raw * (PEAK_NORMALISED / np.max(np.abs(raw))), atol=1e-6)


def test_bad_audio_reasons(tmp_path):
    cases = {
        "silent": _bytes(tmp_path, np.zeros(SR, np.float32), SR, name="silent.wav"),
        "empty": _bytes(tmp_path, np.zeros(0, np.float32), SR, name="empty.wav"),
        "unreadable": b"RIFF not really a wav file",
        "non_finite": _bytes(tmp_path, np.array([0.1, np.nan, 0.2] * 100, np.float32), SR, "FLOAT", name="nan.wav"),
    }
    for reason, data in cases.items():
        with pytest.raises(AudioError) as err:
            load_audio(data, SR, normalise=True)
        assert err.value.reason == reason, (reason, str(err.value))
        assert str(err.value) and "\n" not in str(err.value)


def test_quiet_but_not_silent_is_kept(tmp_path):
    audio = sine(440, 0.2, SR, amplitude=0.01)
    out = load_audio(_bytes(tmp_path, audio, SR, "FLOAT"), SR, normalise=True)
    assert np.max(np.abs(out)) == pytest.approx(PEAK_NORMALISED, abs=1e-6)


def test_in_memory_bytes_round_trip():
    buf = io.BytesIO()
    sf.write(buf, sine(440, 0.1, SR), SR, format="WAV", subtype="PCM_16")
    decoded, sampling_rate = decode(buf.getvalue())
    assert sampling_rate == SR and decoded.size == int(0.1 * SR)
