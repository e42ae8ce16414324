"""What the trainer reports: the original's stdout line, TensorBoard scalars, audio and mel images, and the
multi-resolution STFT distance used at validation."""

from __future__ import annotations

import io
import logging

import numpy as np
import tensorflow as tf

logger = logging.getLogger("hifigan.train")

# (n_fft, hop, win) of the validation STFT distance (ParallelWaveGAN's multi-resolution STFT loss settings).
STFT_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))


def stdout_line(step: int, gen_loss_total: float, mel_error: float, seconds_per_batch: float) -> str:
    """The original's progress line."""
    return (f"Steps : {step:d}, Gen Loss Total : {gen_loss_total:4.3f}, Mel-Spec. Error : {mel_error:4.3f}, "
            f"s/b : {seconds_per_batch:4.3f}")


def multi_resolution_stft_distance(y: tf.Tensor, y_hat: tf.Tensor) -> tf.Tensor:
    """Mean over resolutions of spectral convergence + log-magnitude L1 between two signals [batch, samples]."""
    total = 0.0
    for n_fft, hop, win in STFT_RESOLUTIONS:
        mags = [tf.abs(tf.signal.stft(tf.cast(s, tf.float32), win, hop, n_fft, pad_end=True)) for s in (y, y_hat)]
        mag, mag_hat = (tf.maximum(m, 1e-7) for m in mags)
        convergence = tf.norm(mag - mag_hat) / tf.maximum(tf.norm(mag), 1e-7)
        log_l1 = tf.reduce_mean(tf.abs(tf.math.log(mag) - tf.math.log(mag_hat)))
        total += convergence + log_l1
    return total / len(STFT_RESOLUTIONS)


def mel_comparison_png(mel: np.ndarray, mel_hat: np.ndarray, title: str = "") -> bytes:
    """PNG of two log-mels [frames, num_mels] side by side: ground truth (left) and generated (right)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3), dpi=100)
    low, high = float(min(mel.min(), mel_hat.min())), float(max(mel.max(), mel_hat.max()))
    for i, (m, name) in enumerate(((mel, "ground truth"), (mel_hat, "generated"))):
        ax = fig.add_subplot(1, 2, i + 1)
        image = ax.imshow(m.T, aspect="auto", origin="lower", interpolation="none", vmin=low, vmax=high)
        ax.set_title(f"{title} {name}".strip())
        ax.set_xlabel("frame")
        ax.set_ylabel("mel bin")
    fig.colorbar(image, ax=fig.axes)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def write_scalars(writer, values: dict, step: int, prefix: str) -> None:
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.scalar(f"{prefix}/{name}", value)


def write_clip(writer, tag: str, audio: np.ndarray, sampling_rate: int, mel: np.ndarray, mel_hat: np.ndarray,
               step: int) -> None:
    """Audio [samples] and a ground-truth | generated mel image of one validation clip."""
    png = mel_comparison_png(mel, mel_hat, tag)
    with writer.as_default(step=step):
        tf.summary.audio(f"{tag}/audio", audio.reshape(1, -1, 1).astype(np.float32), sampling_rate)
        tf.summary.image(f"{tag}/mel", tf.expand_dims(tf.io.decode_png(png, channels=3), 0))
