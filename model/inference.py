"""Vocoding with a trained generator: log-mels [frames, num_mels] -> 16-bit WAV files.

One compiled ``tf.function`` with input signature [None, None, num_mels] serves every length and batch size.
Many inputs are batched by length (sorted, up to a frame budget, padded with LOG_FLOOR_VALUE); long inputs are cut
into chunks with ``context_frames`` of context on each side, at least the generator's receptive field, so that
the cross-trimmed chunks add up to what one pass over the whole input gives. The padding of a short item in a
batch reaches back into its last receptive-field frames; those are recomputed from an unpadded tail window, so
batched output equals one-by-one output too (both within float rounding, far below 1 LSB of 16 bits).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import uuid
from typing import Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from core.audio import AUDIO_EXTENSIONS, AudioError, load_audio, write_wav, written_by
from core.config import LOG_FLOOR_VALUE, GeneratorConfig, HiFiGANConfig
from core.errors import UserError
from core.filelist import FilelistError, input_name, listed_paths
from core.mel import MelExtractor
from core.melfile import MelFileError, load_mel_file, mel_warning
from core.storage import TF_IO, check_writable, first_line, read_bytes
from model.options import INFERENCE_PRECISIONS
from model.precision import inference_generator
from model.streaming import StreamingVocoder, stream_vocode

log = logging.getLogger(__name__)

OUTPUT_SUFFIX = "_generated.wav"
# Written into every output's WAV INFO chunk (ISFT): how a rerun tells its own earlier outputs from a user's files.
OUTPUT_SOFTWARE = "hifigan-tf run_inference.py"


class InputError(UserError):
    """An input file that cannot be vocoded; the message says why (one line)."""


class OutputWriteError(UserError):
    """An output that could not be written (full disk, I/O error): one line naming it; the run stops (exit status
    1), the outputs written before it stay and it leaves nothing behind."""

    exit_status = 1


def receptive_field_frames(cfg: GeneratorConfig) -> int:
    """Mel frames on either side of a frame that can influence its output samples (an upper bound).

    Reaches add up layer by layer, each converted to input frames by the upsampling done before it:
    conv_pre (kernel 7: 3 frames), every transposed conv (max(k - 1 - p, p) / u + 1 of its input samples),
    every residual stack (the widest of the parallel blocks; a dilated conv reaches max(p, d (k - 1) - p)),
    conv_post (3 samples). V1: 15 frames, V2: 15, V3: 12.
    """
    def conv_reach(kernel, dilation):
        pad = (kernel * dilation - dilation) // 2
        return max(pad, dilation * (kernel - 1) - pad)

    reach, scale = 3.0, 1
    for rate, kernel in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes):
        pad = (kernel - rate) // 2
        reach += (max(kernel - 1 - pad, pad) / rate + 1) / scale
        scale *= rate
        stacks = []
        for size, dilations in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
            units = [conv_reach(size, d) + (conv_reach(size, 1) if cfg.resblock == "1" else 0) for d in dilations]
            stacks.append(sum(units))
        reach += max(stacks) / scale
    reach += 3 / scale
    return math.ceil(reach)


@dataclasses.dataclass(frozen=True)
class _Window:
    """Frames [start, stop) of item ``item`` go through the generator; frames [keep_start, keep_stop) are kept."""

    item: int
    start: int
    stop: int
    keep_start: int
    keep_stop: int

    @property
    def frames(self) -> int:
        return self.stop - self.start


class Vocoder:
    """mel [frames, num_mels] -> audio [frames * hop_size] with a generator whose weight norm is folded.

    ``max_batch_frames`` bounds batch size x padded length of a batch; inputs longer than ``chunk_frames`` are
    vocoded in chunks of that many frames plus ``context_frames`` (default: the receptive field) on each side.
    ``jit_compile`` compiles with XLA (one compilation per distinct input shape). ``backend="tflite"`` runs the
    generator converted to a float32 TFLite model instead (XNNPACK; see benchmarks/bench_inference.py for the
    speed of each way; the conversion takes ~30 s for V1). ``precision="bfloat16"`` runs a bfloat16 copy of the
    generator (TensorFlow backend only); the audio is float32 either way.
    """

    def __init__(self, generator, cfg: HiFiGANConfig, max_batch_frames: int = 8192, chunk_frames: int = 2048,
                 context_frames: int | None = None, jit_compile: bool = False, backend: str = "tf",
                 num_threads: int | None = None, precision: str = "float32"):
        if precision not in INFERENCE_PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {precision!r}")
        if precision != "float32" and backend != "tf":
            raise InputError(f"precision {precision} runs with the TensorFlow backend only (TFLite has no "
                             f"{precision} kernels on CPU)")
        self.precision = precision
        self.generator = inference_generator(generator, precision)
        self.num_mels, self.hop_size = cfg.audio.num_mels, cfg.audio.hop_size
        for name, value, low in (("chunk_frames", chunk_frames, 1), ("max_batch_frames", max_batch_frames, 1),
                                 ("context_frames", 0 if context_frames is None else context_frames, 0)):
            if value < low:
                raise InputError(f"{name} must be >= {low}, got {value}")
        self.context = receptive_field_frames(cfg.generator) if context_frames is None else context_frames
        self.chunk_frames = chunk_frames
        self.max_batch_frames = max_batch_frames
        spec = tf.TensorSpec([None, None, self.num_mels], tf.float32, name="mel")
        self.generate = tf.function(self._generate, input_signature=[spec], jit_compile=jit_compile)
        if backend == "tf":
            self._forward = lambda mel: self.generate(tf.constant(mel)).numpy()
        elif backend == "tflite":
            from model.export import TFLiteVocoder, tflite_bytes

            self._forward = TFLiteVocoder(tflite_bytes(self.generator, cfg, "float32"), num_threads=num_threads)
        else:
            raise ValueError(f"backend {backend!r} is not 'tf' or 'tflite'")

    def _generate(self, mel):
        """mel [batch, frames, num_mels] -> audio [batch, frames * hop_size]."""
        return self.generator(mel, training=False)[..., 0]

    def _windows(self, item: int, frames: int) -> list[_Window]:
        if frames <= self.chunk_frames:
            return [_Window(item, 0, frames, 0, frames)]
        return [_Window(item, max(0, s - self.context), min(frames, s + self.chunk_frames + self.context),
                        s, min(frames, s + self.chunk_frames)) for s in range(0, frames, self.chunk_frames)]

    def _batches(self, windows: list[_Window], same_length: bool) -> list[list[_Window]]:
        batches: list[list[_Window]] = []
        for window in sorted(windows, key=lambda w: (w.frames, w.item, w.start)):
            batch = batches[-1] if batches else None
            if (batch and (len(batch) + 1) * window.frames <= self.max_batch_frames
                    and (not same_length or batch[0].frames == window.frames)):
                batch.append(window)
            else:
                batches.append([window])
        return batches

    def _run(self, mels, outputs, windows, same_length: bool, progress: bool) -> list[_Window]:
        """Vocodes ``windows`` into ``outputs``; returns the windows whose true end was padded."""
        hop, padded_ends = self.hop_size, []
        for batch in tqdm(self._batches(windows, same_length), desc="vocoding", unit="batch",
                          disable=not progress, leave=False):
            length = max(w.frames for w in batch)
            x = np.full((len(batch), length, self.num_mels), LOG_FLOOR_VALUE, np.float32)
            for b, w in enumerate(batch):
                x[b, :w.frames] = mels[w.item][w.start:w.stop]
            y = self._forward(x)
            for b, w in enumerate(batch):
                outputs[w.item][w.keep_start * hop:w.keep_stop * hop] = \
                    y[b, (w.keep_start - w.start) * hop:(w.keep_stop - w.start) * hop]
                if w.frames < length and w.stop == mels[w.item].shape[0]:
                    padded_ends.append(w)
        return padded_ends

    def __call__(self, mels: Sequence[np.ndarray], progress: bool = False) -> list[np.ndarray]:
        """Each mel float [frames, num_mels] -> float32 audio [frames * hop_size] in (-1, 1)."""
        for mel in mels:
            if mel.ndim != 2 or mel.shape[1] != self.num_mels or mel.shape[0] == 0:
                raise ValueError(f"mel of shape {mel.shape}: expected [frames > 0, {self.num_mels}]")
        mels = [np.asarray(mel, np.float32) for mel in mels]
        outputs = [np.empty(mel.shape[0] * self.hop_size, np.float32) for mel in mels]
        windows = [w for i, mel in enumerate(mels) for w in self._windows(i, mel.shape[0])]
        padded_ends = self._run(mels, outputs, windows, same_length=False, progress=progress)
        # NOTE: padding with LOG_FLOOR_VALUE is not the zero padding each convolution sees at a true end, and it
        # reaches `context` frames back; redo those frames from an unpadded window (batched by equal length).
        tails = []
        for w in padded_ends:
            frames = mels[w.item].shape[0]
            tails.append(_Window(w.item, max(0, frames - 2 * self.context), frames,
                                 max(w.keep_start, frames - self.context), frames))
        self._run(mels, outputs, tails, same_length=True, progress=False)
        return outputs


class StreamedVocoder:
    """What ``run_inference.py --stream_frames K`` vocodes with: a Vocoder-like callable (list of mels -> list of
    audio) that runs each utterance through one StreamingVocoder, K frames at a time."""

    def __init__(self, generator, cfg, chunk_frames: int):
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.streamer, self.chunk_frames = StreamingVocoder(generator, cfg), chunk_frames

    def __call__(self, mels, progress: bool = False) -> list[np.ndarray]:
        return [stream_vocode(self.streamer, np.asarray(mel, np.float32), self.chunk_frames) for mel in mels]


def mel_from_audio_file(path: str, extractor: MelExtractor) -> np.ndarray:
    """Copy synthesis input: decode, resample, peak-normalise like training, then the training mel."""
    try:
        data = read_bytes(path, io=TF_IO)
    except OSError as e:
        raise InputError(f"unreadable ({e.strerror or e})") from None
    try:
        # NOTE: the original's inference.py does not peak-normalise; we use the training pipeline's audio.
        audio = load_audio(data, extractor.audio.sampling_rate, normalise=True)
        mel, _ = extractor(audio)
    except AudioError as e:
        raise InputError(f"{e.reason}: {e}") from None
    except ValueError as e:  # too short for the STFT's reflect padding
        raise InputError(f"too short: {e}") from None
    return mel


def mel_from_npy_file(path: str, num_mels: int) -> np.ndarray:
    """A .npy mel input as float32 [frames, num_mels] (core/melfile.py's layouts), with a logged warning when it
    does not look like a natural-log HiFi-GAN mel. Raises InputError."""
    try:
        mel = load_mel_file(read_bytes(path, io=TF_IO), num_mels)
    except OSError as e:
        raise InputError(f"unreadable .npy ({first_line(e, innermost=False, with_type=False)})") from None
    except MelFileError as e:
        raise InputError(str(e)) from None
    warning = mel_warning(mel)
    if warning:
        log.warning("%s: does not look like a natural-log HiFi-GAN mel: %s", path, warning)
    return mel


def output_path(output_dir: str, input_path: str) -> str:
    """``output_dir/<stem>_generated.wav`` for an input file."""
    return os.path.join(output_dir, os.path.splitext(os.path.basename(input_path))[0] + OUTPUT_SUFFIX)


@dataclasses.dataclass
class InferenceResult:
    written: list[str]
    failed: list[tuple[str, str]]


def _list_inputs(directory: str, extensions: tuple[str, ...], filelist: str | None = None
                 ) -> tuple[list[str], list[tuple[str, str]]]:
    """The input files: every file of ``directory`` with one of ``extensions``, or those a filelist names
    (the original's ``id|text`` lines; a bare id gets the first extension). Returns (paths, filelist lines that
    name no file: (``filelist:line``, why))."""
    if not os.path.isdir(directory):
        raise InputError(f"{directory}: not a directory")
    if filelist is None:
        names = sorted(n for n in os.listdir(directory) if n.lower().endswith(extensions))
        if not names:
            raise InputError(f"{directory}: no {'/'.join(extensions)} files")
        return [os.path.join(directory, n) for n in names], []
    try:  # a local file, as the input directory is, or a URI through tf.io.gfile; never Beam
        lines = list(listed_paths(filelist, io=TF_IO))
    except FilelistError as e:
        raise InputError(str(e)) from None
    if not lines:
        raise InputError(f"{filelist}: empty filelist")
    paths = [os.path.join(directory, input_name(listed, extensions)) for _, listed, problem in lines if not problem]
    failed = [(source, problem) for source, _, problem in lines if problem]
    return paths, failed


def earlier_output(path: str, output_dir: str) -> bool:
    """Whether ``path`` is a file an earlier run wrote into ``output_dir``: it lies there, its name ends in
    OUTPUT_SUFFIX, and its WAV INFO chunk names OUTPUT_SOFTWARE (a user's own ``x_generated.wav``, e.g. the
    original's output, has not got it)."""
    return (os.path.basename(path).endswith(OUTPUT_SUFFIX)
            and os.path.realpath(os.path.dirname(path)) == os.path.realpath(output_dir)
            and written_by(path).startswith(OUTPUT_SOFTWARE))


def _check_output(out: str, inputs: set[str], output_dir: str) -> None:
    """InputError unless ``out`` may be written: never over an input, nor over a file this tool did not write."""
    if os.path.realpath(out) in inputs:
        raise InputError(f"its output {out} is an input; not overwritten, not vocoded")
    if os.path.lexists(out) and not earlier_output(out, output_dir):
        raise InputError(f"its output {out} exists and was not written by run_inference.py; not overwritten, "
                         f"not vocoded")


def _read_inputs(paths: list[str], output_dir: str, cfg: HiFiGANConfig, from_audio: bool,
                 failed: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """{input path: mel} of the inputs that read and whose output may be written; the others are logged and
    added to ``failed``."""
    extractor = MelExtractor(cfg.audio) if from_audio else None
    inputs = {os.path.realpath(p) for p in paths}
    mels, outputs = {}, {}
    for path in tqdm(paths, desc="reading", unit="file", disable=len(paths) < 20):
        try:
            out = output_path(output_dir, path)
            if out in outputs:  # "a.flac" and "a.ogg": one output name
                raise InputError(f"same output {os.path.basename(out)} as {outputs[out]}; not vocoded")
            outputs[out] = path
            _check_output(out, inputs, output_dir)
            if os.path.isdir(path):
                raise InputError("is a directory")
            if not os.path.isfile(path):
                raise InputError("not found")
            mels[path] = mel_from_audio_file(path, extractor) if extractor is not None else \
                mel_from_npy_file(path, cfg.audio.num_mels)
        except InputError as e:
            log.error("%s: %s", path, e)
            failed.append((path, str(e)))
    return mels


def _length_groups(mels: dict[str, np.ndarray], group_frames: int) -> list[list[str]]:
    """The paths sorted by length, in groups of about ``group_frames`` frames."""
    groups, current, size = [], [], 0
    for path in sorted(mels, key=lambda p: mels[p].shape[0]):
        if current and size + mels[path].shape[0] > group_frames:
            groups.append(current)
            current, size = [], 0
        current.append(path)
        size += mels[path].shape[0]
    return groups + [current] if current else groups


def _write_output(out: str, audio: np.ndarray, sampling_rate: int) -> None:
    """Writes under a hidden name beside ``out``, then renames: a killed run never leaves a truncated output."""
    staged = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.tmp-{uuid.uuid4().hex}")
    try:
        write_wav(staged, audio, sampling_rate, software=OUTPUT_SOFTWARE)
        os.replace(staged, out)
    except BaseException as e:
        if os.path.lexists(staged):
            os.remove(staged)
        if isinstance(e, (OSError, RuntimeError)):  # soundfile's errors are RuntimeErrors
            raise OutputWriteError(str(TF_IO.write_error(out, "output file", e))) from None
        raise


def vocode_files(vocoder: Vocoder, cfg: HiFiGANConfig, output_dir: str, input_wavs_dir: str | None = None,
                 input_mels_dir: str | None = None, filelist: str | None = None,
                 group_frames: int = 200_000) -> InferenceResult:
    """Vocodes every audio file of ``input_wavs_dir`` (copy synthesis) or every .npy of ``input_mels_dir`` (or
    only those ``filelist`` names) into ``output_dir/<stem>_generated.wav``. Bad or missing files are logged
    with their reason and skipped.

    User files are never overwritten: an output that would replace an input, or a file this tool did not write
    (:func:`earlier_output`), is refused for that input alone. Files an earlier run wrote into ``output_dir``
    are not inputs of a directory listing (a rerun into the input directory does not vocode its own outputs).

    Inputs are read first (mels are ~1/3 of the audio's size), sorted by length and vocoded in groups of about
    ``group_frames`` frames, each group written before the next starts.
    """
    if (input_wavs_dir is None) == (input_mels_dir is None):
        raise InputError("give exactly one of input_wavs_dir and input_mels_dir")
    paths, failed = _list_inputs(input_wavs_dir, AUDIO_EXTENSIONS, filelist) if input_wavs_dir else \
        _list_inputs(input_mels_dir, (".npy",), filelist)
    for source, why in failed:
        log.error("%s: %s", source, why)
    check_writable(output_dir, "output directory", io=TF_IO)
    if filelist is None:  # a filelist names its inputs; a listing skips what an earlier run wrote
        ours = {p for p in paths if earlier_output(p, output_dir)}
        if ours:
            log.info("%s: %d *%s file(s) an earlier run wrote, not vocoded again", output_dir, len(ours),
                     OUTPUT_SUFFIX)
            paths = [p for p in paths if p not in ours]
    mels = _read_inputs(paths, output_dir, cfg, input_wavs_dir is not None, failed)
    groups = _length_groups(mels, group_frames)
    written = []
    for group in tqdm(groups, desc="vocoding", unit="group", disable=len(groups) < 2):
        for path, audio in zip(group, vocoder([mels[p] for p in group], progress=len(groups) < 2)):
            out = output_path(output_dir, path)
            _write_output(out, audio, cfg.audio.sampling_rate)
            written.append(out)
    return InferenceResult(written=written, failed=failed)
