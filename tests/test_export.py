"""Export round trips: the SavedModel's serving signature and each TFLite flavour against the Keras generator, at
two lengths and batch sizes (TFLite through resize_tensor_input). Generator: tests/fixtures/ckpt_g_zip converted."""

import os

import numpy as np
import pytest
import tensorflow as tf

import run_convert
import run_export
import run_inference
from model.checkpoint import restore_generator
from model.convert import convert
from model.export import TFLITE_QUANTIZATIONS, TFLiteVocoder, example_mel
from core.config import load_config
from tests.conftest import chirp_with_noise, write_audio

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# Max |export - keras| on audio peaking near 0.3: float32 graphs differ only in rounding; float16 weights carry
# ~3 significant digits; dynamic-range int8 weights (and on-the-fly int8 activations) ~2 (measured: 2e-7, 1.3e-4,
# 4e-3 on this generator).
TOLERANCES = {"saved_model": 1e-5, "float32": 1e-5, "float16": 2e-3, "dynamic_range": 2e-2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export") / "ckpt")
    convert(load_config(os.path.join(FIXTURES, "ckpt_config.json")), os.path.join(FIXTURES, "ckpt_g_zip"), out)
    return out


@pytest.fixture(scope="module")
def model(checkpoint):
    return restore_generator(checkpoint)


@pytest.fixture(scope="module")
def tflite_dir(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite")
    assert run_export.main(["--checkpoint", checkpoint, "--format", "tflite", "--output", str(out)]) == 0
    return out


def _inputs(cfg):
    return [example_mel(cfg, frames=37, batch=1, seed=1), example_mel(cfg, frames=64, batch=2, seed=2)]


def test_saved_model_serves_any_length(checkpoint, model, tmp_path, capsys):
    generator, cfg = model
    path = str(tmp_path / "saved_model")
    assert run_export.main(["--checkpoint", checkpoint, "--format", "saved_model", "--output", path]) == 0
    assert "max |export - keras|" in capsys.readouterr().out
    serve = tf.saved_model.load(path).signatures["serving_default"]
    spec = serve.structured_input_signature[1]["mel"]
    assert spec.shape.as_list() == [None, None, cfg.audio.num_mels]
    for mel in _inputs(cfg):
        audio = serve(mel=tf.constant(mel))["audio"].numpy()
        assert audio.shape == (mel.shape[0], mel.shape[1] * cfg.audio.hop_size)
        np.testing.assert_allclose(audio, generator(mel).numpy()[..., 0], rtol=0, atol=TOLERANCES["saved_model"])


@pytest.mark.parametrize("quantization", TFLITE_QUANTIZATIONS)
def test_tflite_flavours_match_keras_after_resizing(quantization, model, tflite_dir):
    generator, cfg = model
    runner = TFLiteVocoder(str(tflite_dir / f"generator_{quantization}.tflite"))
    for mel in _inputs(cfg):  # the second call resizes the input to another batch size and length
        audio = runner(mel)
        assert audio.shape == (mel.shape[0], mel.shape[1] * cfg.audio.hop_size)
        reference = generator(mel).numpy()[..., 0]
        diff = np.abs(audio - reference).max()
        assert diff <= TOLERANCES[quantization], f"{quantization}: {diff}"
        if quantization != "float32":
            assert diff > 0  # the weights really are quantised


def test_quantised_files_are_smaller(tflite_dir):
    sizes = {q: os.path.getsize(tflite_dir / f"generator_{q}.tflite") for q in TFLITE_QUANTIZATIONS}
    assert sizes["float16"] < sizes["float32"] and sizes["dynamic_range"] < sizes["float32"]


def test_unwritable_outputs_are_one_line_errors(checkpoint, model, tmp_path, capsys):
    """An output path under a file: run_export, run_inference and run_convert each say so in one line, with exit
    status 2, before the work (no export, vocoding or conversion is attempted)."""
    (tmp_path / "a_file").write_text("")
    blocked = str(tmp_path / "a_file" / "out")
    sr = model[1].audio.sampling_rate
    wavs = tmp_path / "wavs"
    write_audio(wavs / "clip.wav", chirp_with_noise(0.2, sr), sr)
    runs = {
        "export directory": (run_export.main, ["--checkpoint", checkpoint, "--format", "saved_model",
                                               "--output", blocked]),
        "export directory ": (run_export.main, ["--checkpoint", checkpoint, "--format", "tflite",
                                                "--tflite_quantization", "float32", "--output", blocked + "/g.tflite"]),
        "output directory": (run_inference.main, ["--checkpoint", checkpoint, "--input_wavs_dir", str(wavs),
                                                   "--output_dir", blocked]),
        "output directory's parent": (run_convert.main, ["--config", os.path.join(FIXTURES, "ckpt_config.json"),
                                                         "--torch_generator", os.path.join(FIXTURES, "ckpt_g_zip"),
                                                         "--output_dir", blocked + "/ckpt"]),
    }
    for what, (main, argv) in runs.items():
        capsys.readouterr()
        assert main(argv) == 2, what
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and f"cannot write to this {what.strip()} (" in errors[0], errors
        assert "a_file" in errors[0] and "not a directory" in errors[0], errors


def test_tflite_output_that_does_not_fit_the_flavours_is_refused(checkpoint, tmp_path, capsys):
    """One flavour names a file (not an existing directory); several name a directory (not a .tflite name)."""
    (tmp_path / "a_dir").mkdir()
    one_into_dir = ["--checkpoint", checkpoint, "--format", "tflite", "--tflite_quantization", "float16",
                    "--output", str(tmp_path / "a_dir")]
    all_into_file = ["--checkpoint", checkpoint, "--format", "tflite", "--output", str(tmp_path / "g.tflite")]
    for argv, words in ((one_into_dir, "a_dir: a directory; with one --tflite_quantization"),
                        (all_into_file, "g.tflite: a .tflite name for 3 flavours")):
        capsys.readouterr()
        assert run_export.main(argv) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and words in errors[0], errors
    assert os.listdir(tmp_path) == ["a_dir"] and not os.listdir(tmp_path / "a_dir")
