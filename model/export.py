"""Exporting a generator for serving: a TensorFlow SavedModel, TFLite flatbuffers (float32, float16 weights,
dynamic-range int8 weights) and ONNX, each taking mel [batch, frames, num_mels] of any length and returning
audio [batch, frames * hop_size]. Every export is run against the Keras model on a test input before it takes
its name; an existing output is refused unless ``overwrite`` is given, and then replaced only once the new one
passed its check.

A SavedModel can also be exported in bfloat16 (``precision="bfloat16"``: model/precision.py's bfloat16 copy,
bf16 weights, half the size); its signature still takes and returns float32, and its check is against the
bfloat16 Keras model. TFLite and ONNX exports are float32 only: neither runtime has bfloat16 convolutions on CPU.

A float32 SavedModel can also carry the streaming signatures (``streaming=True``; model/streaming.py):
``stream_initial_state``, ``stream_step(mel_chunk, state) -> {audio, state}`` and ``stream_flush(state)``; the
check then streams a test mel through them in chunks and compares with the Keras model's one pass.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
import warnings

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from core.config import HiFiGANConfig
from core.errors import UserError
from core.storage import TF_IO, check_writable, existing_output, exists, first_line, is_uri, join
from model.generator import fold_for_inference
from model.options import INFERENCE_PRECISIONS
from model.precision import inference_generator
from model.streaming import StreamingVocoder, stream_vocode, streaming_module, streaming_signatures

log = logging.getLogger(__name__)

FORMATS = ("saved_model", "tflite", "onnx")
TFLITE_QUANTIZATIONS = ("float32", "float16", "dynamic_range")
ONNX_OPSET = 17  # tf2onnx 1.17 writes up to 18; every onnxruntime our requirements allow runs 17
SIGNATURE_KEY = "serving_default"
INPUT_NAME, OUTPUT_NAME = "mel", "audio"


class ExportError(UserError):
    """An export that failed or does not match the Keras model; one line."""


class ExportWriteError(ExportError):
    """An export that could not be written (full disk, I/O or bucket error); the path keeps what it held."""

    exit_status = 1


class _Serving(tf.Module):
    """Holds the (folded) generator and its serving function, and optionally the streaming module; what
    tf.saved_model.save writes."""

    def __init__(self, generator, num_mels: int, stream=None):
        super().__init__()
        self.generator, self.stream = generator, stream
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


def export_saved_model(generator, cfg: HiFiGANConfig, path: str, streaming: bool = False) -> None:
    """Writes a SavedModel whose 'serving_default' signature maps mel -> audio for any batch and length; with
    ``streaming``, also the streaming signatures (STREAM_SIGNATURES)."""
    fold_for_inference(generator)
    stream = streaming_module(generator, cfg) if streaming else None
    module = _Serving(generator, cfg.audio.num_mels, stream)
    signatures = {SIGNATURE_KEY: module.serve, **(streaming_signatures(stream) if streaming else {})}
    tf.saved_model.save(module, path, signatures=signatures)


def tflite_bytes(generator, cfg: HiFiGANConfig, quantization: str) -> bytes:
    """A TFLite flatbuffer of the generator with dynamic batch and length (resize_tensor_input works).

    quantization: "float32"; "float16" (weights stored as float16, computed in float32 on CPU);
    "dynamic_range" (weights int8, activations quantised on the fly where kernels support it).
    """
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ExportError(f"--tflite_quantization: {quantization!r} is not one of "
                          f"{', '.join(TFLITE_QUANTIZATIONS)}")
    fold_for_inference(generator)
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


def onnx_bytes(generator, cfg: HiFiGANConfig) -> bytes:
    """An ONNX model (opset ONNX_OPSET) of the generator, converted by tf2onnx: input 'mel' [batch, frames,
    num_mels], output 'audio' [batch, frames * hop_size], batch and length dynamic."""
    try:
        import tf2onnx
    except ImportError as e:
        raise ExportError(f"--format onnx needs tf2onnx and onnxruntime (pip install -r requirements.txt): "
                          f"{first_line(e, with_type=False)}") from None
    fold_for_inference(generator)
    module = _Serving(generator, cfg.audio.num_mels)
    quiet = logging.getLogger("tf2onnx")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # tf2onnx logs each of its passes at INFO
    try:
        model, _ = tf2onnx.convert.from_function(module.serve, input_signature=module.serve.input_signature,
                                                 opset=ONNX_OPSET)
    finally:
        quiet.setLevel(level)
    _explicit_same_pads(model.graph)
    return model.SerializeToString()


def _explicit_same_pads(graph) -> None:
    """Writes a stride-1 Conv's auto_pad SAME_UPPER / SAME_LOWER out as explicit ``pads``.

    NOTE: tf2onnx maps TensorFlow's "SAME" padding to auto_pad, and onnxruntime refuses auto_pad with dilations
    ("Dilation not supported for AutoPadType::SAME_UPPER"); the folded generator runs its dilated convolutions
    with "SAME" (model/convs.py). At stride 1 the padding is d (k - 1) per axis, the odd one after (UPPER) or
    before (LOWER). Strided convolutions keep auto_pad (their pads depend on the length; none is dilated here).
    """
    from onnx import helper

    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Conv" or attrs.get("auto_pad") not in (b"SAME_UPPER", b"SAME_LOWER") \
                or any(stride != 1 for stride in attrs.get("strides", [])):
            continue
        kernel = attrs["kernel_shape"]
        total = [d * (k - 1) for k, d in zip(kernel, attrs.get("dilations", [1] * len(kernel)))]
        before = [t // 2 if attrs["auto_pad"] == b"SAME_UPPER" else t - t // 2 for t in total]
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("pads", before + [t - b for t, b in zip(total, before)])])


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
    if ours.dtype != np.float32:
        raise ExportError(f"{name}: output is {ours.dtype}, not float32")
    if ours.shape != expected.shape:
        raise ExportError(f"{name}: output shape {list(ours.shape)} differs from the Keras model's "
                          f"{list(expected.shape)}")
    diff = float(np.max(np.abs(ours - expected)))
    if not np.isfinite(diff):
        raise ExportError(f"{name}: output holds NaN or infinite values")
    return diff


def check_saved_model(path: str, generator, cfg: HiFiGANConfig, name: str | None = None) -> float:
    """Max |SavedModel - Keras| on test inputs (two lengths, batch 2); errors name ``name`` (default ``path``)."""
    loaded = tf.saved_model.load(path).signatures[SIGNATURE_KEY]
    worst = 0.0
    for frames in (37, 64):
        x = example_mel(cfg, frames, batch=2)
        expected = generator(x, training=False).numpy()[..., 0]
        worst = max(worst, _max_abs_diff(name or path,
                                         loaded(**{INPUT_NAME: tf.constant(x)})[OUTPUT_NAME].numpy(), expected))
    return worst


def check_streaming(path: str, generator, cfg: HiFiGANConfig, name: str | None = None) -> float:
    """Max |streamed - Keras one pass| of a SavedModel's streaming signatures on a test mel fed in chunks of
    1, 5 and 16 frames."""
    streamer = StreamingVocoder.from_module(tf.saved_model.load(path))
    x = example_mel(cfg, 64)
    expected = generator(x, training=False).numpy()[0, :, 0]
    return max(_max_abs_diff(name or path, stream_vocode(streamer, x[0], chunk), expected) for chunk in (1, 5, 16))


def check_tflite(path: str, generator, cfg: HiFiGANConfig, name: str | None = None) -> float:
    """Max |TFLite - Keras| on test inputs of two lengths (the second one exercises resize_tensor_input)."""
    runner = TFLiteVocoder(path)
    worst = 0.0
    for frames in (37, 64):
        x = example_mel(cfg, frames, batch=1, seed=frames)
        worst = max(worst, _max_abs_diff(name or path, runner(x), generator(x, training=False).numpy()[..., 0]))
    return worst


def check_onnx(path: str, generator, cfg: HiFiGANConfig, name: str | None = None) -> float:
    """Max |onnxruntime - Keras| on test inputs of two lengths and batch sizes (one session: dynamic axes)."""
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        worst = 0.0
        for frames, batch in ((37, 1), (64, 2)):
            x = example_mel(cfg, frames, batch=batch, seed=frames)
            ours = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
            worst = max(worst, _max_abs_diff(name or path, ours, generator(x, training=False).numpy()[..., 0]))
    except ImportError as e:
        raise ExportError(f"checking {name or path} needs onnxruntime (pip install -r requirements.txt): "
                          f"{first_line(e, with_type=False)}") from None
    except ExportError:
        raise
    except Exception as e:  # onnxruntime's own errors (InvalidArgument, Fail, ...): what it cannot run
        raise ExportError(f"{name or path}: onnxruntime cannot run it: {first_line(e)}") from None
    return worst


def _targets(fmt: str, output: str, quantizations: tuple[str, ...]) -> dict[str, str]:
    """{path to write: what goes there (saved_model, onnx, or a TFLite quantization)}; ExportError for an
    ``output`` that does not fit the format."""
    if fmt not in FORMATS:
        raise ExportError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "saved_model":
        return {output: fmt}
    if fmt == "onnx" or len(quantizations) == 1:
        if os.path.isdir(output):
            raise ExportError(f"{output}: a directory; --output is the .onnx file" if fmt == "onnx" else
                              f"{output}: a directory; with one --tflite_quantization, --output is the .tflite file")
        return {output: fmt if fmt == "onnx" else quantizations[0]}
    if output.lower().endswith(".tflite"):
        raise ExportError(f"{output}: a .tflite name for {len(quantizations)} flavours; give --tflite_quantization "
                          f"(one of {', '.join(quantizations)}) or a directory")
    return {os.path.join(output, f"generator_{q}.tflite"): q for q in quantizations}


def _refuse_existing(targets: dict[str, str], overwrite: bool) -> None:
    """ExportError (one line) for the first target that exists, unless ``overwrite``; even then, only a file is
    replaced by a file and a SavedModel by a SavedModel (never a directory of other things)."""
    for path, flavour in targets.items():
        found = existing_output(path, io=TF_IO)
        if found is None:
            continue
        if not overwrite:
            raise ExportError(f"{path}: exists ({found}); --overwrite replaces it")
        if flavour == "saved_model" and not exists(join(path, "saved_model.pb", io=TF_IO), io=TF_IO):
            raise ExportError(f"{path}: exists ({found}) and is not a SavedModel; --overwrite replaces only one")
        if flavour != "saved_model" and not os.path.isfile(path):
            raise ExportError(f"{path}: exists ({found}) and is not a file; --overwrite replaces only a file")


def _staged(path: str, kind: str = "tmp") -> str:
    """A new hidden name beside ``path`` (``.<name>.<kind>-<hex>``), where its export is written and checked
    before it takes ``path``'s name. A URI is written in place (object stores have no directory renames)."""
    if is_uri(path):
        return path
    path = os.path.abspath(path)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{kind}-{uuid.uuid4().hex}")


def _commit(staged: str, path: str) -> None:
    """Gives ``staged`` the name ``path``; a directory there (a SavedModel that --overwrite replaces, or an empty
    one) is moved aside first and removed after."""
    if staged == path:
        return
    if os.path.isdir(path):
        old = _staged(path, "old")
        os.rename(path, old)
        os.rename(staged, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, path)


def _write_checked(generator, cfg: HiFiGANConfig, flavour: str, path: str, streaming: bool = False) -> float:
    """Writes one export under a staged name, checks it against the Keras model, then renames it to ``path``;
    returns the largest difference. A failure (or Ctrl-C) leaves ``path`` as it was and removes the staged one."""
    staged = _staged(path)
    try:
        if flavour == "saved_model":
            export_saved_model(generator, cfg, staged, streaming)
            diff = check_saved_model(staged, generator, cfg, name=path)
            if streaming:
                diff = max(diff, check_streaming(staged, generator, cfg, name=f"{path} (streaming)"))
        else:
            model = onnx_bytes(generator, cfg) if flavour == "onnx" else tflite_bytes(generator, cfg, flavour)
            with open(staged, "wb") as f:
                f.write(model)
            check = check_onnx if flavour == "onnx" else check_tflite
            diff = check(staged, generator, cfg, name=path)
        _commit(staged, path)
    except BaseException as e:
        if staged != path and os.path.isdir(staged):
            shutil.rmtree(staged, ignore_errors=True)
        elif staged != path and os.path.lexists(staged):
            os.remove(staged)
        if isinstance(e, (OSError, tf.errors.OpError)):
            raise ExportWriteError(str(TF_IO.write_error(path, "export", e))) from None
        raise
    return diff


def plan(fmt: str, output: str, quantizations: tuple[str, ...] = TFLITE_QUANTIZATIONS,
         overwrite: bool = False, precision: str = "float32", streaming: bool = False) -> dict[str, str]:
    """{path: what is written there} once the outputs fit the format and ``precision``, may be written (not
    existing, or ``overwrite``) and their directory is writable; otherwise ExportError / OutputError, one line,
    before any work (run_export.py calls it before it loads the checkpoint)."""
    if precision not in INFERENCE_PRECISIONS:
        raise ExportError(f"--precision: {precision!r} is not one of {', '.join(INFERENCE_PRECISIONS)}")
    if precision != "float32" and fmt != "saved_model":
        raise ExportError(f"--precision {precision} exports a SavedModel only (--format saved_model): TFLite and "
                          f"ONNX runtimes have no {precision} convolutions on CPU")
    if streaming and (fmt != "saved_model" or precision != "float32"):
        raise ExportError("--streaming adds its signatures to a float32 SavedModel only (--format saved_model, "
                          "--precision float32)")
    targets = _targets(fmt, output, quantizations)
    _refuse_existing(targets, overwrite)
    where = output if len(targets) > 1 or is_uri(output) else os.path.dirname(os.path.abspath(output))
    check_writable(where, "export directory", io=TF_IO)
    return targets


def export(generator, cfg: HiFiGANConfig, fmt: str, output: str,
           quantizations: tuple[str, ...] = TFLITE_QUANTIZATIONS, overwrite: bool = False,
           precision: str = "float32", streaming: bool = False) -> dict[str, float]:
    """Exports to ``output`` and checks it; returns {written path: max abs difference to the Keras model at
    ``precision``}. A "bfloat16" export is a SavedModel of the bfloat16 copy (float32 mel in, float32 audio out).
    ``streaming`` adds the streaming signatures to a float32 SavedModel (checked in chunks against one pass).

    ``fmt`` "saved_model": ``output`` is the SavedModel directory. "onnx": the .onnx file. "tflite": with one
    quantization, ``output`` is the .tflite path; with several, a directory receiving
    generator_<quantization>.tflite for each. An output that exists (a file, a non-empty directory) is refused
    unless ``overwrite``; each export is written under a hidden name beside its path and renamed once checked.
    """
    targets = plan(fmt, output, quantizations, overwrite, precision, streaming)
    generator = inference_generator(generator, precision)
    results = {path: _write_checked(generator, cfg, flavour, path, streaming) for path, flavour in targets.items()}
    for path, diff in results.items():
        log.debug("%s: max |export - keras| = %.3g", path, diff)
    return results
