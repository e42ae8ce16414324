"""Exporting a generator for serving: a TensorFlow SavedModel and TFLite flatbuffers (float32, float16 weights,
dynamic-range int8 weights), each taking mel [batch, frames, num_mels] of any length and returning
audio [batch, frames * hop_size]. Every export is run against the Keras model on a test input.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from core.config import HiFiGANConfig
from core.errors import UserError
from core.storage import TF_IO, check_writable

log = logging.getLogger(__name__)

TFLITE_QUANTIZATIONS = ("float32", "float16", "dynamic_range")
SIGNATURE_KEY = "serving_default"
INPUT_NAME, OUTPUT_NAME = "mel", "audio"


class ExportError(UserError):
    """An export that failed or does not match the Keras model; one line."""


class _Serving(tf.Module):
    """Holds the (folded) generator and its serving function; what tf.saved_model.save writes."""

    def __init__(self, generator, num_mels: int):
        super().__init__()
        self.generator = generator
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec([None, None, num_mels], tf.float32, name=INPUT_NAME)])

    def _serve(self, mel):
        """mel [batch, frames, num_mels] -> {'audio': [batch, frames * hop_size]}."""
        return {OUTPUT_NAME: self.generator(mel, training=False)[..., 0]}


def example_mel(cfg: HiFiGANConfig, frames: int = 64, batch: int = 1, seed: int = 0) -> np.ndarray:
    """A smooth, speech-like log-mel [batch, frames, num_mels] in the natural-log range, for checking exports."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None] / frames
    bins = np.arange(cfg.audio.num_mels)[None, :] / cfg.audio.num_mels
    envelope = -2.0 - 6.0 * bins + 1.5 * np.sin(2 * np.pi * (3 * t + 2 * bins))
    mel = envelope[None] + 0.3 * rng.standard_normal((batch, frames, cfg.audio.num_mels))
    return np.maximum(mel, np.log(1e-5)).astype(np.float32)


def _prepare(generator) -> None:
    if getattr(generator, "weight_norm", False):
        generator.remove_weight_norm()


def export_saved_model(generator, cfg: HiFiGANConfig, path: str) -> None:
    """Writes a SavedModel whose 'serving_default' signature maps mel -> audio for any batch and length."""
    _prepare(generator)
    module = _Serving(generator, cfg.audio.num_mels)
    tf.saved_model.save(module, path, signatures={SIGNATURE_KEY: module.serve})


def tflite_bytes(generator, cfg: HiFiGANConfig, quantization: str) -> bytes:
    """A TFLite flatbuffer of the generator with dynamic batch and length (resize_tensor_input works).

    quantization: "float32"; "float16" (weights stored as float16, computed in float32 on CPU);
    "dynamic_range" (weights int8, activations quantised on the fly where kernels support it).
    """
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ExportError(f"--tflite_quantization: {quantization!r} is not one of "
                          f"{', '.join(TFLITE_QUANTIZATIONS)}")
    _prepare(generator)
    module = _Serving(generator, cfg.audio.num_mels)
    # NOTE: TF 2.21's converter keeps Keras 3 weights as resource variables (READ_VARIABLE ops that read
    # uninitialised memory: NaN audio); freezing them into constants first gives a self-contained model.
    frozen = convert_variables_to_constants_v2(module.serve.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], module)
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


class TFLiteVocoder:
    """Runs an exported .tflite on mel [batch, frames, num_mels] -> audio [batch, samples], resizing its input."""

    def __init__(self, model_path_or_bytes, num_threads: int | None = None):
        kwargs = {"model_content": model_path_or_bytes} if isinstance(model_path_or_bytes, bytes) else \
            {"model_path": model_path_or_bytes}
        with warnings.catch_warnings():
            # NOTE: tf.lite.Interpreter warns that it moves to the ai_edge_litert package (same API); TF 2.21
            # still ships it, and we add no dependency for it.
            warnings.simplefilter("ignore", UserWarning)
            self.interpreter = tf.lite.Interpreter(num_threads=num_threads, **kwargs)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.shape = None

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        if self.shape != mel.shape:
            self.interpreter.resize_tensor_input(self.input, mel.shape, strict=False)
            self.interpreter.allocate_tensors()
            self.shape = mel.shape
        self.interpreter.set_tensor(self.input, np.asarray(mel, np.float32))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)


def _max_abs_diff(name: str, ours: np.ndarray, expected: np.ndarray) -> float:
    if ours.shape != expected.shape:
        raise ExportError(f"{name}: output shape {list(ours.shape)} differs from the Keras model's "
                          f"{list(expected.shape)}")
    diff = float(np.max(np.abs(ours - expected)))
    if not np.isfinite(diff):
        raise ExportError(f"{name}: output holds NaN or infinite values")
    return diff


def check_saved_model(path: str, generator, cfg: HiFiGANConfig) -> float:
    """Max |SavedModel - Keras| on test inputs (two lengths, batch 2)."""
    loaded = tf.saved_model.load(path).signatures[SIGNATURE_KEY]
    worst = 0.0
    for frames in (37, 64):
        x = example_mel(cfg, frames, batch=2)
        expected = generator(x, training=False).numpy()[..., 0]
        worst = max(worst, _max_abs_diff(path, loaded(**{INPUT_NAME: tf.constant(x)})[OUTPUT_NAME].numpy(),
                                         expected))
    return worst


def check_tflite(path: str, generator, cfg: HiFiGANConfig) -> float:
    """Max |TFLite - Keras| on test inputs of two lengths (the second one exercises resize_tensor_input)."""
    runner = TFLiteVocoder(path)
    worst = 0.0
    for frames in (37, 64):
        x = example_mel(cfg, frames, batch=1, seed=frames)
        worst = max(worst, _max_abs_diff(path, runner(x), generator(x, training=False).numpy()[..., 0]))
    return worst


def export(generator, cfg: HiFiGANConfig, fmt: str, output: str,
           quantizations: tuple[str, ...] = TFLITE_QUANTIZATIONS) -> dict[str, float]:
    """Exports to ``output`` and checks it; returns {written path: max abs difference to the Keras model}.

    ``fmt`` "saved_model": ``output`` is the SavedModel directory. "tflite": with one quantization, ``output`` is
    the .tflite path; with several, a directory receiving generator_<quantization>.tflite for each.
    """
    if fmt not in ("saved_model", "tflite"):
        raise ExportError(f"--format: {fmt!r} is not saved_model or tflite")
    one_file = fmt == "tflite" and len(quantizations) == 1
    if one_file and os.path.isdir(output):
        raise ExportError(f"{output}: a directory; with one --tflite_quantization, --output is the .tflite file")
    if fmt == "tflite" and not one_file and output.lower().endswith(".tflite"):
        raise ExportError(f"{output}: a .tflite name for {len(quantizations)} flavours; give --tflite_quantization "
                          f"(one of {', '.join(quantizations)}) or a directory")
    check_writable(os.path.dirname(os.path.abspath(output)) if one_file else output, "export directory", io=TF_IO)
    _prepare(generator)
    results = {}
    if fmt == "saved_model":
        export_saved_model(generator, cfg, output)
        results[output] = check_saved_model(output, generator, cfg)
    else:
        for quantization in quantizations:
            path = output if one_file else os.path.join(output, f"generator_{quantization}.tflite")
            model = tflite_bytes(generator, cfg, quantization)
            with open(path, "wb") as f:
                f.write(model)
            results[path] = check_tflite(path, generator, cfg)
    for path, diff in results.items():
        log.info("%s: max |export - keras| = %.3g", path, diff)
    return results
