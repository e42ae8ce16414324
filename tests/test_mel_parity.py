"""The numpy mel (core/mel.py) and the TF loss mel (model/losses.MelSpectrogram) against the original's
``mel_spectrogram`` on real speech (espeak-ng) and on the same speech padded with digital silence
(tests/fixtures/mel_parity.npz, made by tools/make_fixtures.py)."""

import json
import os

import librosa
import numpy as np
import pytest

from model.losses import MelSpectrogram
from core.config import LOG_FLOOR_VALUE, AudioConfig
from core.mel import MelExtractor

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "mel_parity.npz")
REFERENCE_TOL = 1e-3  # max abs, log-mel, vs the original (torch float32 STFT)
TF_VS_NUMPY_TOL = 1e-4  # max abs, log-mel, our two implementations (both double-precision STFTs)


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as data:
        return dict(data)


def _prepared(ref, clip):
    """The original's preparation: int16 / 32768, then peak-normalised to 0.95."""
    speech = ref["speech_int16"]
    if clip == "padded":
        speech = np.pad(speech, (int(ref["pad_left"]), int(ref["pad_right"])))
    return (librosa.util.normalize(speech / 32768.0) * 0.95).astype(np.float32)


CASES = [(cfg, clip) for cfg in ("v1", "small") for clip in ("speech", "padded")]


@pytest.mark.parametrize("cfg_name,clip", CASES)
def test_mels_match_original(ref, cfg_name, clip):
    cfg = AudioConfig.from_raw(json.loads(str(ref["configs"]))[cfg_name])
    audio = _prepared(ref, clip)
    expected_mel, expected_loss = ref[f"{cfg_name}/{clip}/mel"], ref[f"{cfg_name}/{clip}/mel_loss"]
    assert expected_mel.shape == (cfg.num_frames(audio.size), cfg.num_mels)

    mel, mel_loss = MelExtractor(cfg)(audio)
    np.testing.assert_allclose(mel, expected_mel, rtol=0, atol=REFERENCE_TOL)
    np.testing.assert_allclose(mel_loss, expected_loss, rtol=0, atol=REFERENCE_TOL)

    for for_loss, numpy_mel in ((False, mel), (True, mel_loss)):
        tf_mel = MelSpectrogram(cfg, for_loss=for_loss)(audio[None, :, None]).numpy()[0]
        assert tf_mel.dtype == np.float32
        np.testing.assert_allclose(tf_mel, ref[f"{cfg_name}/{clip}/{'mel_loss' if for_loss else 'mel'}"],
                                   rtol=0, atol=REFERENCE_TOL)
        np.testing.assert_allclose(tf_mel, numpy_mel, rtol=0, atol=TF_VS_NUMPY_TOL)
    if clip == "padded":
        # Digital silence reaches the log floor in both (sqrt(1e-9) magnitudes stay below 1e-5 after the basis).
        assert np.isclose(expected_mel.min(), LOG_FLOOR_VALUE)
