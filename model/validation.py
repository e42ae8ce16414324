"""Validation during training: mel L1 and multi-resolution STFT distance of the generator on whole val clips,
with audio and mel images of a few of them in TensorBoard."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from model import data as data_lib
from model.logging_utils import multi_resolution_stft_distance, write_clip, write_scalars
from model.losses import MelSpectrogram
from model.trainer import Trainer


class Validator:
    """Mel L1 and multi-resolution STFT distance on whole val clips; audio and mel images of a few of them."""

    def __init__(self, trainer: Trainer, data_dir: str, manifest, limit: int | None, logged_clips: int):
        cfg = trainer.cfg
        self.trainer, self.logged_clips, self.gt_written = trainer, logged_clips, False
        self.data_dir, self.manifest = data_dir, manifest
        self.dataset = data_lib.validation_dataset(data_dir, manifest, cfg, limit)
        self.mel_input = MelSpectrogram(cfg.audio, for_loss=False)
        num_mels = cfg.audio.num_mels

        @tf.function(input_signature=[tf.TensorSpec([1, None, num_mels], tf.float32),
                                      tf.TensorSpec([1, None, num_mels], tf.float32),
                                      tf.TensorSpec([1, None], tf.float32)], reduce_retracing=True)
        def infer(mel, mel_loss, audio):
            y_hat = tf.cast(trainer.generator(mel, training=False)[..., 0], tf.float32)
            error = tf.reduce_mean(tf.abs(mel_loss - trainer.mel(y_hat)))
            return y_hat, self.mel_input(y_hat), error, multi_resolution_stft_distance(audio, y_hat)

        self.infer = infer

    def run(self, writer, step: int) -> dict:
        sr = self.trainer.cfg.audio.sampling_rate
        errors, distances = [], []
        for j, clip in enumerate(data_lib.checked_read(self.dataset, self.data_dir, self.manifest)):
            y_hat, mel_hat, error, distance = self.infer(clip["mel"], clip["mel_loss"], clip["audio"])
            errors.append(float(error))
            distances.append(float(distance))
            if j < self.logged_clips and writer is not None:
                mel = clip["mel"][0].numpy()
                if not self.gt_written:
                    with writer.as_default(step=step):
                        tf.summary.audio(f"gt/y_{j}", clip["audio"][..., None], sr)
                write_clip(writer, f"generated/y_hat_{j}", y_hat[0].numpy(), sr, mel, mel_hat[0].numpy(), step)
        self.gt_written = True
        result = {"mel_spec_error": float(np.mean(errors)), "stft_distance": float(np.mean(distances))}
        if writer is not None:
            write_scalars(writer, result, step, "validation")
        return result


def result_line(step: int, result: dict) -> str:
    """A validation's result in one line."""
    return f"validation at step {step}: mel error {result['mel_spec_error']:.3f}, STFT distance " \
           f"{result['stft_distance']:.3f}"
