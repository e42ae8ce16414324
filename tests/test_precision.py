"""bfloat16 inference: the Vocoder's bfloat16 copy against the float32 generator, run_inference.py --precision,
the bfloat16 SavedModel (float32 in and out) and the formats that refuse bfloat16 in one line. Generator: the
original's tiny fixture generator converted from tests/fixtures/ckpt_g_zip (hop 16, 8 kHz, 80 mels)."""

import os

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

import run_export
import run_inference
from core.audio import to_int16
from model.checkpoint import restore_generator
from model.export import example_mel
from model.inference import InputError, Vocoder

# bfloat16 keeps 8 significant bits (relative rounding 2^-8 ~ 0.4 %) in every layer. Measured on this generator
# (audio rms ~0.1): max |bf16 - float32| 3.1e-3 .. 4.3e-3, rms 0.9 % of the audio's rms; two bfloat16 runs of
# other batch/length/graph (chunks, the SavedModel) differ by as much, since any change of summation order moves
# bf16 roundings. Bounds: 0.01 of full scale (~330 LSB of 16 bits) and 2 % in rms.
BF16_ATOL = 0.01
BF16_RMS = 0.02
# Above float32's rounding (~1e-7): the bfloat16 path really ran.
NOT_FLOAT32 = 1e-4


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return restore_generator(tiny_checkpoint)


@pytest.fixture(scope="module")
def mels(model):
    _, cfg = model
    return [example_mel(cfg, frames, seed=frames)[0] for frames in (37, 300)]


def _close_to(ours, reference):
    diff = ours - reference
    assert np.abs(diff).max() < BF16_ATOL
    assert np.sqrt(np.mean(diff ** 2)) < BF16_RMS * np.sqrt(np.mean(reference ** 2))


def test_bfloat16_vocoder_is_close_to_float32(model, mels):
    generator, cfg = model
    full = Vocoder(generator, cfg)(mels)
    vocoder = Vocoder(generator, cfg, precision="bfloat16")
    low = vocoder(mels)
    for mel, audio, reference in zip(mels, low, full):
        assert audio.dtype == np.float32 and audio.shape == (mel.shape[0] * cfg.audio.hop_size,)
        _close_to(audio, reference)
    assert max(np.abs(a - r).max() for a, r in zip(low, full)) > NOT_FLOAT32
    # bf16 weights everywhere but conv_post (float32: the audio is not rounded to 8 bits); the float32 generator
    # it was copied from is unchanged.
    post = {id(w) for w in vocoder.generator.conv_post.weights}
    assert {w.dtype for w in vocoder.generator.weights if id(w) not in post} == {"bfloat16"}
    assert {w.dtype for w in vocoder.generator.conv_post.weights} == {"float32"}
    assert {w.dtype for w in generator.weights} == {"float32"}
    # Chunked and batched bfloat16 output against its own one pass: within bfloat16 rounding.
    chunked = Vocoder(generator, cfg, precision="bfloat16", chunk_frames=64, max_batch_frames=500)(mels)
    for mel, audio in zip(mels, chunked):
        _close_to(audio, vocoder.generate(mel[None]).numpy()[0])


def test_bad_precision_and_tflite_refused(model):
    generator, cfg = model
    with pytest.raises(InputError, match="precision must be one of float32, bfloat16, got 'float16'"):
        Vocoder(generator, cfg, precision="float16")
    with pytest.raises(InputError, match="precision bfloat16 runs with the TensorFlow backend only"):
        Vocoder(generator, cfg, backend="tflite", precision="bfloat16")


def test_run_inference_precision_flag(tiny_checkpoint, model, mels, tmp_path):
    generator, cfg = model
    inputs = tmp_path / "mels"
    inputs.mkdir()
    np.save(inputs / "a.npy", mels[1].T)  # the original's layout [num_mels, frames]
    assert run_inference.main(["--checkpoint", tiny_checkpoint, "--input_mels_dir", str(inputs),
                               "--output_dir", str(tmp_path / "out"), "--precision", "bfloat16"]) == 0
    written, rate = sf.read(tmp_path / "out" / "a_generated.wav", dtype="int16")
    assert rate == cfg.audio.sampling_rate and written.shape == (300 * cfg.audio.hop_size,)
    low, full = (to_int16(Vocoder(generator, cfg, precision=p)([mels[1]])[0]).astype(int)
                 for p in ("bfloat16", "float32"))
    assert np.abs(written.astype(int) - low).max() <= 1  # the flag runs the bfloat16 Vocoder
    assert 1 < np.abs(written.astype(int) - full).max() < BF16_ATOL * 32768


def test_bfloat16_saved_model_serves_float32(tiny_checkpoint, model, mels, tmp_path, capsys):
    generator, cfg = model
    path = str(tmp_path / "bf16")
    assert run_export.main(["--checkpoint", tiny_checkpoint, "--format", "saved_model", "--precision",
                            "bfloat16", "--output", path]) == 0
    assert "max |export - keras bfloat16|" in capsys.readouterr().out
    stored = tf.train.load_checkpoint(os.path.join(path, "variables", "variables")).get_variable_to_dtype_map()
    weights = [dtype for name, dtype in stored.items() if "/.ATTRIBUTES/VARIABLE_VALUE" in name]
    assert weights.count(tf.float32) == 2 and set(weights) == {tf.bfloat16, tf.float32}  # conv_post's two
    serve = tf.saved_model.load(path).signatures["serving_default"]
    spec = serve.structured_input_signature[1]["mel"]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, None, cfg.audio.num_mels]
    vocoder = Vocoder(generator, cfg, precision="bfloat16")
    for mel in mels:
        audio = serve(mel=tf.constant(mel[None]))["audio"]
        assert audio.dtype == tf.float32 and audio.shape == (1, mel.shape[0] * cfg.audio.hop_size)
        _close_to(audio.numpy()[0], vocoder.generate(mel[None]).numpy()[0])


@pytest.mark.parametrize("fmt, output", [("tflite", "g.tflite"), ("onnx", "g.onnx")])
def test_bfloat16_tflite_and_onnx_refused_in_one_line(tiny_checkpoint, tmp_path, capsys, fmt, output):
    assert run_export.main(["--checkpoint", tiny_checkpoint, "--format", fmt, "--precision", "bfloat16",
                            "--output", str(tmp_path / output)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --precision bfloat16 exports a SavedModel only (--format saved_model): TFLite and ONNX runtimes "
        "have no bfloat16 convolutions on CPU")
    assert os.listdir(tmp_path) == []
