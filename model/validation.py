"""Validation during training: mel L1 and multi-resolution STFT distance of the generator on whole val clips, the
evaluation metrics (core/metrics.py: PESQ, periodicity, V/UV F1, F0 RMSE, ...) on the first few, and audio and mel
images of a few in TensorBoard. With a mixture of corpora the val split is the union of theirs: every scalar is
written for the union (``validation/<name>``) and for each corpus (``validation/<corpus>/<name>``)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from core.metrics import clip_metrics, summarize
from model import data as data_lib
from model.data import Corpus
from model.logging_utils import multi_resolution_stft_distance, write_clip, write_scalars
from model.losses import MelSpectrogram
from model.trainer import Trainer

BASE = ("mel_spec_error", "stft_distance")  # on every val clip, in TensorFlow; always written, NaN included
# The console line's metrics (all go to TensorBoard): (key, label, format).
LINE_METRICS = (("pesq", "PESQ", ".2f"), ("periodicity", "periodicity", ".3f"), ("vuv_f1", "V/UV F1", ".3f"),
                ("f0_rmse_cents", "F0 RMSE", ".0f"))


class Validator:
    """Mel L1 and multi-resolution STFT distance on whole val clips of each corpus (``limit`` clips of each, all
    by default); the evaluation metrics on the first ``metric_clips`` of each; audio and mel images of the first
    ``logged_clips`` of each."""

    def __init__(self, trainer: Trainer, corpora: Sequence[Corpus], limit: int | None, logged_clips: int,
                 metric_clips: int = 0):
        cfg = trainer.cfg
        self.trainer, self.logged_clips, self.metric_clips, self.gt_written = trainer, logged_clips, metric_clips, False
        self.corpora = list(corpora)
        self.datasets = [data_lib.validation_dataset(c.data_dir, c.manifest, cfg, limit) for c in self.corpora]
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
        """The union's scalars ({"mel_spec_error", "stft_distance", metric means...}), with a mixture also
        ``"corpora"``: {corpus name: its scalars}; written to TensorBoard under ``validation/``."""
        per_corpus = {corpus.name: self._run_corpus(corpus, dataset, writer, step)
                      for corpus, dataset in zip(self.corpora, self.datasets)}
        self.gt_written = True
        result = _means(per_corpus.values())
        corpora = {name: _means([values]) for name, values in per_corpus.items()} if len(self.corpora) > 1 else {}
        if writer is not None:
            write_scalars(writer, _finite(result), step, "validation")
            for name, means in corpora.items():
                write_scalars(writer, _finite(means), step, f"validation/{name}")
        if corpora:
            result["corpora"] = corpora
        return result

    def _run_corpus(self, corpus: Corpus, dataset, writer, step: int) -> dict[str, list[float]]:
        """Each clip's values of one corpus ({name: [value per clip]}); logs its first clips."""
        sr = self.trainer.cfg.audio.sampling_rate
        prefix = f"{corpus.name}/" if len(self.corpora) > 1 else ""
        values: dict[str, list[float]] = {"mel_spec_error": [], "stft_distance": []}
        for j, clip in enumerate(data_lib.checked_read(dataset, corpus.data_dir, corpus.manifest)):
            y_hat, mel_hat, error, distance = self.infer(clip["mel"], clip["mel_loss"], clip["audio"])
            values["mel_spec_error"].append(float(error))
            values["stft_distance"].append(float(distance))
            if j < self.metric_clips:
                metrics = clip_metrics(clip["audio"][0].numpy(), y_hat[0].numpy(), self.trainer.cfg.audio)
                for name, value in metrics.items():  # NaN where a metric is undefined (e.g. F0 of unvoiced audio)
                    values.setdefault(name, []).append(value)
            if j < self.logged_clips and writer is not None:
                mel = clip["mel"][0].numpy()
                if not self.gt_written:
                    with writer.as_default(step=step):
                        tf.summary.audio(f"gt/{prefix}y_{j}", clip["audio"][..., None], sr)
                write_clip(writer, f"generated/{prefix}y_hat_{j}", y_hat[0].numpy(), sr, mel, mel_hat[0].numpy(),
                           step)
        return values


def _means(clip_values) -> dict[str, float]:
    """{name: mean over the clips of every corpus of ``clip_values`` (dicts {name: [value per clip]})}; the NaNs of
    an evaluation metric (undefined on a clip) left out, NaN where no clip has a value."""
    pooled: dict[str, list[float]] = {}
    for values in clip_values:
        for name, items in values.items():
            pooled.setdefault(name, []).extend(items)
    means = {}
    for name, items in pooled.items():
        if name in BASE:  # NaN included: a non-finite validation error must show
            means[name] = float(np.mean(items)) if items else math.nan
        else:
            means[name] = summarize(items)["mean"]
    return means


def _finite(values: dict) -> dict:
    """The scalars to write: an evaluation metric undefined on every clip is left out of TensorBoard."""
    return {name: value for name, value in values.items() if name in BASE or math.isfinite(value)}


def result_line(step: int, result: dict) -> str:
    """A validation's result in one line: the union's mel error and STFT distance, the metrics computed, and
    each corpus's mel error with a mixture."""
    line = f"validation at step {step}: mel error {result['mel_spec_error']:.3f}, STFT distance " \
           f"{result['stft_distance']:.3f}"
    for key, label, form in LINE_METRICS:
        if math.isfinite(result.get(key, math.nan)):
            line += f", {label} {result[key]:{form}}" + (" cents" if key == "f0_rmse_cents" else "")
    for name, values in result.get("corpora", {}).items():
        line += f"; {name}: mel error {values['mel_spec_error']:.3f}"
    return line
