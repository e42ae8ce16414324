"""Scoring vocoder output against the reference audio a filelist names (core/metrics.py's metrics per clip, and
their mean with a 95 % interval): a checkpoint's copy synthesis, or a directory of wavs another vocoder made.

Each clip is scored on its own; a clip that cannot be scored (its reference or generated file missing or
unreadable, lengths far apart) is one line naming it and a row of ``failed``, and the other clips go on. A
generated file at another sampling rate is resampled, lengths a few samples or frames apart are trimmed to the
shorter (said when beyond a hop), and a metric that cannot be computed (PESQ of silence, ...) is NaN with a line.

Level: the reference is loaded as training loads it (peak-normalised to 0.95, ``--reference_level training``),
which is what copy synthesis reproduces (its mel comes from that audio). The original's inference.py vocodes the
file as it is, so its outputs follow the file's level: score them with ``--reference_level file``. PESQ and the
pitch metrics do not depend on level; mel L1 and MR-STFT do (a gain g adds about |ln g| to them).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import tempfile
from typing import Iterator

import numpy as np
import soundfile as sf
from tqdm import tqdm

from core.audio import AudioError, decode, load_audio, resample
from core.cli import option
from core.config import HiFiGANConfig, load_config
from core.errors import UserError
from core.filelist import FilelistError, audio_path, clip_id_of, listed_paths
from core.mel import MelExtractor
from core.metrics import METRICS, clip_metrics, json_ready, summarize
from core.storage import TF_IO, check_writable, first_line, is_uri, join, read_bytes, write_whole
from model.options import INFERENCE_PRECISIONS

log = logging.getLogger(__name__)

REFERENCE_LEVELS = ("training", "file")
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "v1.json")
# Generated file names tried in a --generated_dir, in order (run_inference.py writes the first).
GENERATED_NAMES = ("{}_generated.wav", "{}.wav")
# Lengths further apart than this many hops are not the same clip (or not aligned): refused.
MAX_LENGTH_MISMATCH_FRAMES = 4
# Clips read and vocoded together in copy synthesis (bounds memory on long filelists).
GROUP_CLIPS = 32
SUMMARY_NAME, CLIPS_NAME = "summary.json", "clips.csv"


class EvaluationError(UserError):
    """Options or a filelist that cannot be evaluated (exit status 2)."""


class NothingScored(EvaluationError):
    """No clip of the filelist could be scored (exit status 1)."""

    exit_status = 1


class ClipError(UserError):
    """One clip that cannot be scored; the message says why (one line)."""


@dataclasses.dataclass(frozen=True)
class EvaluateOptions:
    """What run_evaluate.py scores: each field is its flag (``--<field>``)."""

    filelist: str = option(help="filelist of the clips to score (the original's path|text lines)")
    audio_root: str = option(help="directory the filelist's paths are relative to (the reference audio), as for "
                                  "run_preprocess.py")
    output_dir: str = option(help="where summary.json and clips.csv are written")
    checkpoint: str | None = option(None, help="score this checkpoint directory's copy synthesis (its latest "
                                               "checkpoint; the mel of each reference as training computes it)")
    generated_dir: str | None = option(None, help="score the wavs of this directory: <id>_generated.wav (as "
                                                  "run_inference.py writes) or <id>.wav")
    config: str | None = option(None, help="config JSON: sampling rate and mel settings (default: the one beside "
                                           "--checkpoint, else configs/v1.json)")
    reference_level: str = option(REFERENCE_LEVELS[0], choices=REFERENCE_LEVELS,
                                  help="the reference's level: 'training' peak-normalises it to 0.95 as training "
                                       "(and our copy synthesis) does; 'file' keeps the file's level, as the "
                                       "original's inference.py does. Only mel L1 and MR-STFT depend on it")
    precision: str = option(INFERENCE_PRECISIONS[0], choices=INFERENCE_PRECISIONS,
                            help="--checkpoint's copy synthesis computed in float32 (the reference) or bfloat16 (as "
                                 "run_inference.py --precision bfloat16: what bf16 inference costs in quality)")

    def __post_init__(self):
        if (self.checkpoint is None) == (self.generated_dir is None):
            raise EvaluationError("give exactly one of --checkpoint and --generated_dir")
        if self.generated_dir is not None and not os.path.isdir(self.generated_dir):
            raise EvaluationError(f"--generated_dir {self.generated_dir}: not a directory")
        if self.generated_dir is not None and self.precision != INFERENCE_PRECISIONS[0]:
            raise EvaluationError("--precision applies to --checkpoint's copy synthesis only")


@dataclasses.dataclass
class Evaluation:
    """Per-clip metrics of the scored clips (filelist order) and the clips that could not be scored."""

    clips: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    failed: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def fail(self, clip: str, reason: str) -> None:
        log.error("%s: %s", clip, reason)
        self.failed.append({"clip": clip, "reason": reason})

    def summary(self) -> dict:
        """summary.json's content: {metric: {"mean", "ci95"}}, num_clips, failed."""
        result = {name: summarize([values[name] for values in self.clips.values()]) for name in METRICS}
        return {**result, "num_clips": len(self.clips), "failed": self.failed}


@dataclasses.dataclass(frozen=True)
class _Clip:
    clip_id: str
    path: str  # the reference


def evaluate(options: EvaluateOptions) -> Evaluation:
    """Scores every clip of the filelist and writes summary.json and clips.csv into ``options.output_dir``.
    NothingScored (exit status 1) when no clip could be scored (the files are written first)."""
    _check_output_dir(options.output_dir)
    result = Evaluation()
    clips = _listed_clips(options.filelist, options.audio_root, result)
    if options.checkpoint is not None:
        pairs = _copy_synthesis(clips, options, result)
    else:
        cfg = load_config(options.config or DEFAULT_CONFIG, io=TF_IO)
        log.info("config %s: %d Hz", options.config or DEFAULT_CONFIG, cfg.audio.sampling_rate)
        pairs = _generated_files(clips, options, cfg, result)
    for clip, reference, generated, cfg in tqdm(pairs, desc="scoring", unit="clip", total=len(clips),
                                                 disable=len(clips) < 10):
        try:
            reference, generated = _match_lengths(clip.clip_id, reference, generated, cfg.audio.hop_size)
        except ClipError as e:
            result.fail(clip.clip_id, str(e))
            continue
        reasons: dict[str, str] = {}
        result.clips[clip.clip_id] = clip_metrics(reference, generated, cfg.audio, reasons)
        if reasons:
            log.warning("%s: NaN for %s", clip.clip_id, "; ".join(f"{name} ({why})" for name, why in reasons.items()))
    write_outputs(result, options.output_dir)
    if not result.clips:
        raise NothingScored(f"no clip could be scored ({len(result.failed)} failed; see above)")
    return result


def _check_output_dir(output_dir: str) -> None:
    """A URI through tf.io.gfile's write probe; a local directory made and probed with the os, so that scoring a
    generated directory never imports TensorFlow (~10 s)."""
    if is_uri(output_dir):
        check_writable(output_dir, "output directory", io=TF_IO)
        return
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as e:
        raise EvaluationError(f"{output_dir}: cannot write to this output directory ({e.strerror or e})") from None


def _listed_clips(filelist: str, audio_root: str, result: Evaluation) -> list[_Clip]:
    """The filelist's clips (reference path as run_preprocess.py reads it); bad lines and repeated ids fail."""
    try:
        lines = list(listed_paths(filelist, io=TF_IO))
    except FilelistError as e:
        raise EvaluationError(str(e)) from None
    clips, seen = [], {}
    for source, listed, problem in lines:
        if problem:
            result.fail(source, problem)
            continue
        path = audio_path(audio_root, listed, io=TF_IO)
        clip_id = clip_id_of(path)
        if clip_id in seen:
            result.fail(clip_id, f"{source}: id already listed at {seen[clip_id]}; scored once")
            continue
        seen[clip_id] = source
        clips.append(_Clip(clip_id, path))
    if not clips:
        raise EvaluationError(f"{filelist}: no clip to score")
    return clips


def load_reference(path: str, cfg: HiFiGANConfig, level: str) -> np.ndarray:
    """The reference at the config's rate: peak-normalised to 0.95 (``level`` "training") or as the file has it
    ("file"). Raises ClipError."""
    data = _read(path, "reference")
    try:
        return load_audio(data, cfg.audio.sampling_rate, normalise=level == "training")
    except AudioError as e:
        raise ClipError(f"reference {path}: {e}") from None


def load_generated(path: str, clip_id: str, sampling_rate: int) -> np.ndarray:
    """A generated file as it is (no normalisation), resampled to ``sampling_rate`` with a line if it is at
    another rate. Raises ClipError; a silent file is returned (its metrics say what they can)."""
    try:
        audio, rate = decode(_read(path, "generated file"))
    except AudioError as e:
        raise ClipError(f"generated file {path}: {e}") from None
    if not np.all(np.isfinite(audio)):
        raise ClipError(f"generated file {path}: holds NaN or infinite samples")
    if rate != sampling_rate:
        log.warning("%s: generated file %s is at %d Hz; resampled to %d Hz", clip_id, path, rate, sampling_rate)
    return resample(audio, rate, sampling_rate)


def _read(path: str, what: str) -> bytes:
    try:
        return read_bytes(path, io=TF_IO)
    except FileNotFoundError:
        raise ClipError(f"{what} {path}: not found") from None
    except OSError as e:
        raise ClipError(f"{what} {path}: unreadable ({first_line(e, with_type=False)})") from None


def _reference_rate_note(clip_id: str, path: str, sampling_rate: int) -> None:
    """One line when a reference file is at another rate than the config's (load_audio resamples it)."""
    try:
        rate = sf.info(io.BytesIO(read_bytes(path, io=TF_IO))).samplerate
    except Exception:  # unreadable: load_reference says why
        return
    if rate != sampling_rate:
        log.warning("%s: reference %s is at %d Hz; resampled to %d Hz", clip_id, path, rate, sampling_rate)


def _generated_files(clips: list[_Clip], options: EvaluateOptions, cfg: HiFiGANConfig, result: Evaluation
                     ) -> Iterator[tuple[_Clip, np.ndarray, np.ndarray, HiFiGANConfig]]:
    sampling_rate = cfg.audio.sampling_rate
    for clip in clips:
        candidates = [os.path.join(options.generated_dir, name.format(clip.clip_id)) for name in GENERATED_NAMES]
        found = [path for path in candidates if os.path.isfile(path)]
        try:
            if not found:
                raise ClipError(f"no generated file ({' or '.join(candidates)})")
            _reference_rate_note(clip.clip_id, clip.path, sampling_rate)
            reference = load_reference(clip.path, cfg, options.reference_level)
            yield clip, reference, load_generated(found[0], clip.clip_id, sampling_rate), cfg
        except ClipError as e:
            result.fail(clip.clip_id, str(e))


def _copy_synthesis(clips: list[_Clip], options: EvaluateOptions, result: Evaluation
                    ) -> Iterator[tuple[_Clip, np.ndarray, np.ndarray, HiFiGANConfig]]:
    """The checkpoint's copy synthesis of each clip, as run_inference.py --input_wavs_dir makes it."""
    from model.checkpoint import restore_generator  # TensorFlow: only for a checkpoint
    from model.inference import InputError, Vocoder, mel_from_audio_file

    cfg = load_config(options.config, io=TF_IO) if options.config else None
    generator, cfg = restore_generator(options.checkpoint, cfg)
    vocoder, extractor = Vocoder(generator, cfg, precision=options.precision), MelExtractor(cfg.audio)
    for start in range(0, len(clips), GROUP_CLIPS):
        group = []
        for clip in clips[start:start + GROUP_CLIPS]:
            try:
                _reference_rate_note(clip.clip_id, clip.path, cfg.audio.sampling_rate)
                reference = load_reference(clip.path, cfg, options.reference_level)
                group.append((clip, reference, mel_from_audio_file(clip.path, extractor)))
            except (ClipError, InputError) as e:
                result.fail(clip.clip_id, str(e) if isinstance(e, ClipError) else f"reference {clip.path}: {e}")
        outputs = vocoder([mel for _, _, mel in group]) if group else []
        for (clip, reference, _), generated in zip(group, outputs):
            if not np.all(np.isfinite(generated)):
                result.fail(clip.clip_id, "the generator's output holds NaN or infinite samples")
                continue
            yield clip, reference, generated, cfg


def _match_lengths(clip_id: str, reference: np.ndarray, generated: np.ndarray, hop_size: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Both trimmed to the shorter; a line when they differ by a hop or more; ClipError beyond
    MAX_LENGTH_MISMATCH_FRAMES hops."""
    difference = generated.size - reference.size
    frames = difference / hop_size
    if abs(difference) > MAX_LENGTH_MISMATCH_FRAMES * hop_size:
        raise ClipError(f"generated audio has {generated.size} samples, the reference {reference.size} "
                        f"({frames:+.1f} frames of {hop_size}; more than {MAX_LENGTH_MISMATCH_FRAMES} apart): not "
                        f"scored")
    if abs(difference) >= hop_size:
        log.warning("%s: generated audio has %d samples, the reference %d (%+.1f frames); both trimmed to %d",
                    clip_id, generated.size, reference.size, frames, min(generated.size, reference.size))
    n = min(generated.size, reference.size)
    return reference[:n], generated[:n]


def write_outputs(result: Evaluation, output_dir: str) -> None:
    """summary.json (NaN written as null) and clips.csv (one row per scored clip; NaN as an empty cell)."""
    summary = json.dumps(json_ready(result.summary()), indent=2) + "\n"
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(("clip",) + METRICS)
    for clip, values in result.clips.items():
        writer.writerow([clip] + ["" if math.isnan(values[name]) else f"{values[name]:.6g}" for name in METRICS])
    for name, text in ((SUMMARY_NAME, summary), (CLIPS_NAME, rows.getvalue())):
        write_whole(join(output_dir, name, io=TF_IO), text, io=TF_IO)


def format_table(result: Evaluation) -> str:
    """The summary as a table: one line per metric, mean ± ci95 and the number of clips it is defined for."""
    summary = result.summary()
    lines = [f"{'metric':<15}{'mean':>10}  {'± ci95':<12}{'clips':>5}"]
    for name in METRICS:
        mean, ci95 = summary[name]["mean"], summary[name]["ci95"]
        defined = sum(not math.isnan(values[name]) for values in result.clips.values())
        mean_text = "n/a" if math.isnan(mean) else f"{mean:.4f}"
        ci_text = "" if math.isnan(ci95) else f"± {ci95:.4f}"
        lines.append(f"{name:<15}{mean_text:>10}  {ci_text:<12}{defined:>5}")
    lines.append(f"{summary['num_clips']} clips scored, {len(summary['failed'])} failed")
    return "\n".join(lines)
