"""What the trainer reports: one progress bar for the run with the original's stdout lines above it, TensorBoard
scalars (losses, learning rate, step rate), the resolved config as text, audio and mel images, and the
multi-resolution STFT distance used at validation."""

from __future__ import annotations

import io
import logging
import sys
import time

import numpy as np
import tensorflow as tf
from tqdm import tqdm

# (n_fft, hop, win) of the validation STFT distance: one definition for validation and run_evaluate.py.
from core.metrics import STFT_RESOLUTIONS

logger = logging.getLogger("hifigan.train")


def stdout_line(step: int, gen_loss_total: float, mel_error: float, seconds_per_batch: float) -> str:
    """The original's progress line."""
    return (f"Steps : {step:d}, Gen Loss Total : {gen_loss_total:4.3f}, Mel-Spec. Error : {mel_error:4.3f}, "
            f"s/b : {seconds_per_batch:4.3f}")


class RunConsole:
    """What a training run shows: one tqdm bar over all its steps on stderr (ETA, steps/s, the epoch, the last
    generator loss and mel error), and the lines above it on stdout (the original's ``Steps : ...`` lines,
    validation results). Nothing unless ``show`` (the chief); no bar unless ``bar`` too. The bar starts with the
    first epoch (below the lines logged before it)."""

    def __init__(self, total: int, initial: int, show: bool, bar: bool = True):
        self.show = show
        self.bar = tqdm(total=total, initial=min(initial, total), unit="step", dynamic_ncols=True, delay=1e9,
                        disable=not (show and bar))  # drawn from the first epoch on (see epoch())

    def epoch(self, epoch: int) -> None:
        self.bar.delay = 0
        self.bar.set_description(f"epoch {epoch}")

    def step(self, values: dict) -> None:
        self.bar.set_postfix_str(f"gen {values['gen_loss_total']:.3f}, mel {values['mel_spec_error']:.3f}",
                                 refresh=False)
        self.bar.update(1)

    def line(self, text: str) -> None:
        """``text`` on stdout, above the bar."""
        if self.show:
            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()

    def close(self) -> None:
        self.bar.close()


class StepRate:
    """Steps per second from one call to the next (steps, validation and saves included); none at the first."""

    def __init__(self):
        self.last: tuple[int, float] | None = None

    def __call__(self, step: int) -> dict:
        now, last = time.monotonic(), self.last
        self.last = (step, now)
        if last is None or step <= last[0]:
            return {}
        return {"steps_per_second": (step - last[0]) / max(now - last[1], 1e-9)}


def write_config(writer, sections: dict[str, str]) -> None:
    """Texts at step 0 (the resolved config, the run's options), as Markdown code blocks."""
    with writer.as_default(step=0):
        for name, text in sections.items():
            tf.summary.text(name, "\n".join("    " + line for line in text.splitlines()))


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
