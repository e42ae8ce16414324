"""The original HiFi-GAN log-mel spectrogram, in numpy.

Numerically the original's ``mel_spectrogram``: reflect padding of (n_fft - hop_size) / 2 on each side, no
centring, a periodic Hann window of ``win_size`` centred in ``n_fft``, magnitude sqrt(re^2 + im^2 + 1e-9),
librosa's Slaney mel basis, natural log of the magnitude clamped at 1e-5. The model-input mel and the loss mel
share one STFT and differ only in the basis (``fmax`` vs ``fmax_for_loss``).
"""

from __future__ import annotations

import functools

import librosa
import numpy as np
import scipy.fft
import scipy.signal
import scipy.sparse

from core.config import LOG_FLOOR, AudioConfig


@functools.lru_cache(maxsize=16)
def mel_basis(sampling_rate: int, n_fft: int, num_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """Slaney mel filterbank [n_fft // 2 + 1, num_mels] (transposed for a right-multiply), float32."""
    basis = librosa.filters.mel(sr=sampling_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin, fmax=fmax)
    basis.setflags(write=False)
    return np.ascontiguousarray(basis.T.astype(np.float32))


@functools.lru_cache(maxsize=16)
def stft_window(win_size: int, n_fft: int) -> np.ndarray:
    """Periodic Hann window of ``win_size`` zero-padded to ``n_fft`` on both sides (torch.stft's convention)."""
    window = scipy.signal.get_window("hann", win_size, fftbins=True).astype(np.float32)
    left = (n_fft - win_size) // 2
    window = np.pad(window, (left, n_fft - win_size - left))
    window.setflags(write=False)
    return window


class MelExtractor:
    """Computes the model-input mel and the loss mel of a clip; build once per config (bases are cached)."""

    def __init__(self, audio: AudioConfig):
        self.audio = audio
        self.window = stft_window(audio.win_size, audio.n_fft)
        self._window64 = self.window.astype(np.float64)
        self.basis = mel_basis(audio.sampling_rate, audio.n_fft, audio.num_mels, audio.fmin, audio.fmax)
        self.basis_loss = mel_basis(audio.sampling_rate, audio.n_fft, audio.num_mels, audio.fmin,
                                    audio.fmax_for_loss)
        # Each Slaney filter spans a few FFT bins: a sparse product is single-threaded and several times faster
        # than a BLAS matmul (which also oversubscribes the cores Beam workers already use).
        self._sparse_t = (scipy.sparse.csr_matrix(self.basis.T), scipy.sparse.csr_matrix(self.basis_loss.T))

    def magnitude(self, audio: np.ndarray) -> np.ndarray:
        """Linear STFT magnitude [num_frames, n_fft // 2 + 1] of a mono float signal [num_samples]."""
        cfg = self.audio
        pad = cfg.padding
        if audio.shape[0] <= pad:
            raise ValueError(f"{audio.shape[0]} samples are too few for reflect padding of {pad}")
        padded = np.pad(audio.astype(np.float32, copy=False), (pad, pad), mode="reflect")
        num_frames = cfg.num_frames(audio.shape[0])
        frames = np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)[::cfg.hop_size][:num_frames]
        # NOTE: double precision FFT (scipy's pocketfft, ~2x faster than np.fft here): the bins far below a loud
        # tone lose their last digits in a float32 FFT (up to 5e-4 in log-mel); this way the pipeline's mel and
        # the trainer's TF mel agree within 1e-5, and both within 1e-3 of the original's float32 torch.stft.
        spec = scipy.fft.rfft(frames * self._window64, axis=-1)
        power = np.square(spec.real)
        power += np.square(spec.imag)
        power += 1e-9
        return np.sqrt(power, out=power).astype(np.float32)

    def log_mel(self, magnitude: np.ndarray, for_loss: bool = False) -> np.ndarray:
        """Log-mel [num_frames, num_mels] of a magnitude [num_frames, n_fft // 2 + 1]: model input or loss mel."""
        mel = np.ascontiguousarray((self._sparse_t[for_loss] @ magnitude.T).T)
        return np.log(np.maximum(mel, LOG_FLOOR))

    def __call__(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (mel, mel_loss), each float32 [num_frames, num_mels], from audio [num_samples] in [-1, 1]."""
        magnitude = self.magnitude(audio)
        return self.log_mel(magnitude), self.log_mel(magnitude, for_loss=True)


def mel_spectrogram(audio: np.ndarray, cfg: AudioConfig, for_loss: bool = False) -> np.ndarray:
    """One log-mel [num_frames, num_mels] of ``audio``: the model input, or the loss mel (``fmax_for_loss``)."""
    extractor = MelExtractor(cfg)
    return extractor.log_mel(extractor.magnitude(audio), for_loss)
