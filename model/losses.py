"""HiFi-GAN's losses (LSGAN adversarial, feature matching, mel L1) and the log-mel in TensorFlow.

Everything is computed in float32 whatever the inputs' dtype (mixed precision). Loss weights are not applied
here: the trainer multiplies by ``cfg.loss.lambda_*``.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf
from keras import ops

from model.convs import PACKAGE
from core.config import LOG_FLOOR, AudioConfig
from core.mel import mel_basis, stft_window


def _f32(x):
    return ops.cast(x, "float32")


def discriminator_loss(real_logits, fake_logits):
    """LSGAN discriminator loss: sum over sub-discriminators of mean((1 - real)^2) + mean(fake^2).

    Returns (loss, real_losses, fake_losses), the lists holding one scalar per sub-discriminator.
    """
    real_losses = [ops.mean(ops.square(1.0 - _f32(r))) for r in real_logits]
    fake_losses = [ops.mean(ops.square(_f32(g))) for g in fake_logits]
    return ops.sum(ops.stack(real_losses)) + ops.sum(ops.stack(fake_losses)), real_losses, fake_losses


def generator_adversarial_loss(fake_logits):
    """LSGAN generator loss: sum over sub-discriminators of mean((1 - fake)^2). Returns (loss, per_disc)."""
    losses = [ops.mean(ops.square(1.0 - _f32(g))) for g in fake_logits]
    return ops.sum(ops.stack(losses)), losses


def feature_matching_loss(real_fmaps, fake_fmaps):
    """Sum over every sub-discriminator and layer of mean |real - fake|.

    NOTE: the original returns twice this (``loss * 2``); the factor is cfg.loss.lambda_feature_matching.
    """
    losses = [ops.mean(ops.abs(_f32(r) - _f32(g)))
              for real, fake in zip(real_fmaps, fake_fmaps) for r, g in zip(real, fake)]
    return ops.sum(ops.stack(losses))


def mel_loss(real_mel, fake_mel):
    """L1 between log-mels [batch, frames, num_mels] (the trainer weights it by cfg.loss.lambda_mel)."""
    return ops.mean(ops.abs(_f32(real_mel) - _f32(fake_mel)))


@keras.saving.register_keras_serializable(PACKAGE)
class MelSpectrogram(keras.layers.Layer):
    """The original's log-mel in TF, equal to core.mel on the same audio.

    audio [batch, samples] or [batch, samples, 1] -> log-mel float32 [batch, frames, num_mels] with
    frames = 1 + (samples + 2 * pad - n_fft) // hop_size, pad = (n_fft - hop_size) // 2 (reflect, no centring),
    a periodic Hann window of win_size centred in n_fft, magnitude sqrt(re^2 + im^2 + 1e-9), the Slaney basis
    (``fmax_for_loss`` if ``for_loss`` else ``fmax``) and the natural log clamped at 1e-5.
    """

    def __init__(self, audio_cfg: AudioConfig, for_loss: bool = True, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.audio_cfg, self.for_loss = audio_cfg, for_loss
        fmax = audio_cfg.fmax_for_loss if for_loss else audio_cfg.fmax
        self._basis = mel_basis(audio_cfg.sampling_rate, audio_cfg.n_fft, audio_cfg.num_mels, audio_cfg.fmin, fmax)
        self._window = stft_window(audio_cfg.win_size, audio_cfg.n_fft)

    def call(self, audio):
        """audio [batch, samples] or [batch, samples, 1], any float dtype -> float32 [batch, frames, num_mels]."""
        cfg = self.audio_cfg
        # NOTE: the STFT runs in float64. float32 FFTs (TF's, numpy's, torch's) differ from the exact log-mel by
        # up to ~3e-4 in low-energy bins, and from each other by as much; in float64 this layer is exact up to
        # the float32 output, within 1e-4 of core.mel. It costs ~5 ms per 16 x 8192-sample batch on CPU.
        audio = ops.cast(audio, "float64")
        if len(audio.shape) == 3:
            audio = audio[..., 0]
        audio = tf.pad(audio, [[0, 0], [cfg.padding, cfg.padding]], mode="REFLECT")
        window = tf.constant(self._window, tf.float64)
        spec = tf.signal.stft(audio, frame_length=cfg.n_fft, frame_step=cfg.hop_size, fft_length=cfg.n_fft,
                              window_fn=lambda *_, **__: window, pad_end=False)
        magnitude = tf.sqrt(tf.math.real(spec) ** 2 + tf.math.imag(spec) ** 2 + 1e-9)
        mel = tf.matmul(magnitude, tf.constant(self._basis, tf.float64))
        return tf.cast(tf.math.log(tf.maximum(mel, LOG_FLOOR)), tf.float32)

    def compute_output_shape(self, input_shape):
        cfg, samples = self.audio_cfg, input_shape[1]
        return (input_shape[0], None if samples is None else cfg.num_frames(samples), cfg.num_mels)

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        return {**config, "audio_cfg": dataclasses.asdict(self.audio_cfg), "for_loss": self.for_loss}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        audio_cfg = config.pop("audio_cfg")
        if not isinstance(audio_cfg, AudioConfig):
            audio_cfg = AudioConfig.from_raw(audio_cfg)
        return cls(audio_cfg, **config)
