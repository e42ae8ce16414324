"""Export round trips: the SavedModel's serving signature and each TFLite flavour against the Keras generator, at
two lengths and batch sizes (TFLite through resize_tensor_input). Generator: tests/fixtures/ckpt_g_zip converted."""

import errno
import os

import numpy as np
import pytest
import tensorflow as tf

import run_convert
import run_export
import run_inference
from model.checkpoint import restore_generator
from model.export import TFLITE_QUANTIZATIONS, TFLiteVocoder, example_mel
from tests.conftest import chirp_with_noise, write_audio

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# Max |export - keras| on audio peaking near 0.3: float32 graphs differ only in rounding; float16 weights carry
# ~3 significant digits; dynamic-range int8 weights (and on-the-fly int8 activations) ~2 (measured: 2e-7, 1.3e-4,
# 4e-3 on this generator).
TOLERANCES = {"saved_model": 1e-5, "float32": 1e-5, "float16": 2e-3, "dynamic_range": 2e-2}


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return restore_generator(tiny_checkpoint)


@pytest.fixture(scope="module")
def tflite_dir(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite")
    assert run_export.main(["--checkpoint", tiny_checkpoint, "--format", "tflite", "--output", str(out)]) == 0
    return out


def _inputs(cfg):
    return [example_mel(cfg, frames=37, batch=1, seed=1), example_mel(cfg, frames=64, batch=2, seed=2)]


def test_saved_model_serves_any_length(tiny_checkpoint, model, tmp_path, capsys):
    generator, cfg = model
    path = str(tmp_path / "saved_model")
    assert run_export.main(["--checkpoint", tiny_checkpoint, "--format", "saved_model", "--output", path]) == 0
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


def test_unwritable_outputs_are_one_line_errors(tiny_checkpoint, model, tmp_path, capsys):
    """An output path under a file: run_export, run_inference and run_convert each say so in one line, with exit
    status 2, before the work (no export, vocoding or conversion is attempted)."""
    (tmp_path / "a_file").write_text("")
    blocked = str(tmp_path / "a_file" / "out")
    sr = model[1].audio.sampling_rate
    wavs = tmp_path / "wavs"
    write_audio(wavs / "clip.wav", chirp_with_noise(0.2, sr), sr)
    runs = {
        "export directory": (run_export.main, ["--checkpoint", tiny_checkpoint, "--format", "saved_model",
                                               "--output", blocked]),
        "export directory ": (run_export.main, ["--checkpoint", tiny_checkpoint, "--format", "tflite",
                                                "--tflite_quantization", "float32", "--output", blocked + "/g.tflite"]),
        "output directory": (run_inference.main, ["--checkpoint", tiny_checkpoint, "--input_wavs_dir", str(wavs),
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


def test_tflite_output_that_does_not_fit_the_flavours_is_refused(tiny_checkpoint, tmp_path, capsys):
    """One flavour names a file (not an existing directory); several name a directory (not a .tflite name)."""
    (tmp_path / "a_dir").mkdir()
    one_into_dir = ["--checkpoint", tiny_checkpoint, "--format", "tflite", "--tflite_quantization", "float16",
                    "--output", str(tmp_path / "a_dir")]
    all_into_file = ["--checkpoint", tiny_checkpoint, "--format", "tflite", "--output", str(tmp_path / "g.tflite")]
    for argv, words in ((one_into_dir, "a_dir: a directory; with one --tflite_quantization"),
                        (all_into_file, "g.tflite: a .tflite name for 3 flavours")):
        capsys.readouterr()
        assert run_export.main(argv) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and words in errors[0], errors
    assert os.listdir(tmp_path) == ["a_dir"] and not os.listdir(tmp_path / "a_dir")


def test_onnx_serves_any_batch_and_length(tiny_checkpoint, model, tmp_path, capsys):
    """tf2onnx's model in onnxruntime: symbolic batch and length, equal to Keras at two lengths and batch sizes."""
    import onnxruntime

    generator, cfg = model
    path = str(tmp_path / "g.onnx")
    assert run_export.main(["--checkpoint", tiny_checkpoint, "--format", "onnx", "--output", path]) == 0
    assert f"{path}: max |export - keras|" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (mel_input,), (audio_output,) = session.get_inputs(), session.get_outputs()
    assert (mel_input.name, audio_output.name) == ("mel", "audio")
    assert [isinstance(d, str) for d in mel_input.shape] == [True, True, False] and mel_input.shape[2] == 80
    for mel in _inputs(cfg):
        audio = session.run(None, {"mel": mel})[0]
        assert audio.shape == (mel.shape[0], mel.shape[1] * cfg.audio.hop_size)
        np.testing.assert_allclose(audio, generator(mel).numpy()[..., 0], rtol=0, atol=TOLERANCES["float32"])
    assert os.listdir(tmp_path) == ["g.onnx"]


def _one_error(capsys) -> str:
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    return errors[0]


def test_existing_outputs_are_refused_unless_overwrite(tiny_checkpoint, tmp_path, capsys):
    """A file, a non-empty directory, or one flavour's file among several: refused in one line before any work,
    nothing changed. --overwrite replaces a file or a SavedModel, never a directory of other things."""
    def run(fmt, output, *flags):
        capsys.readouterr()
        return run_export.main(["--checkpoint", tiny_checkpoint, "--format", fmt, "--output", str(output), *flags])

    user_file, user_dir, tflite_dir = tmp_path / "mine.onnx", tmp_path / "mine", tmp_path / "tflite"
    user_file.write_bytes(b"user data")
    (user_dir / "notes").mkdir(parents=True)
    tflite_dir.mkdir()
    (tflite_dir / "generator_float16.tflite").write_bytes(b"user data")
    refusals = (("onnx", user_file, "mine.onnx: exists (a file); --overwrite replaces it"),
                ("tflite", user_file, "mine.onnx: exists (a file); --overwrite replaces it"),
                ("saved_model", user_dir, "mine: exists (a non-empty directory); --overwrite replaces it"),
                ("tflite", tflite_dir, "generator_float16.tflite: exists (a file); --overwrite replaces it"))
    for fmt, output, words in refusals:
        flags = ["--tflite_quantization", "float32"] if fmt == "tflite" and output == user_file else []
        assert run(fmt, output, *flags) == 2
        assert words in _one_error(capsys)
    assert run("saved_model", user_dir, "--overwrite") == 2
    assert "mine: exists (a non-empty directory) and is not a SavedModel" in _one_error(capsys)
    assert sorted(os.listdir(tmp_path)) == ["mine", "mine.onnx", "tflite"]
    assert os.listdir(user_dir) == ["notes"] and os.listdir(tflite_dir) == ["generator_float16.tflite"]
    assert user_file.read_bytes() == b"user data"

    assert run("onnx", user_file, "--overwrite") == 0
    assert user_file.read_bytes().startswith(b"\x08") and user_file.stat().st_size > 10_000  # an ONNX protobuf
    saved = tmp_path / "saved"  # an older SavedModel, with a file the new one has not got
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"older")
    (saved / "stale").write_text("from the replaced SavedModel")
    assert run("saved_model", saved, "--overwrite") == 0
    assert "stale" not in os.listdir(saved) and (saved / "saved_model.pb").stat().st_size > 1000
    assert sorted(os.listdir(tmp_path)) == ["mine", "mine.onnx", "saved", "tflite"]  # no staged leftovers


def test_a_failed_check_keeps_the_old_output(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """An export that onnxruntime cannot run (tf2onnx's auto_pad kept as it is) is one line, exit 2; the file it
    would have replaced is untouched and nothing staged is left."""
    import model.export

    old = tmp_path / "g.onnx"
    old.write_bytes(b"the previous export")
    monkeypatch.setattr(model.export, "_explicit_same_pads", lambda graph: None)
    capsys.readouterr()
    assert run_export.main(["--checkpoint", tiny_checkpoint, "--format", "onnx", "--output", str(old),
                            "--overwrite"]) == 2
    error = _one_error(capsys)
    assert f"{old}: onnxruntime cannot run it" in error and "Dilation not supported" in error, error
    assert os.listdir(tmp_path) == ["g.onnx"] and old.read_bytes() == b"the previous export"


def test_a_full_disk_keeps_the_old_saved_model(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """ENOSPC while a SavedModel is written over an older one (--overwrite): exit status 1, one line naming it;
    the older SavedModel is untouched and the partial new one removed."""
    import model.export

    def full_disk(generator, cfg, path, streaming=False):
        os.makedirs(os.path.join(path, "variables"))
        raise OSError(errno.ENOSPC, "No space left on device", path)

    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"older")
    monkeypatch.setattr(model.export, "export_saved_model", full_disk)
    capsys.readouterr()
    assert run_export.main(["--checkpoint", tiny_checkpoint, "--format", "saved_model", "--output", str(saved),
                            "--overwrite"]) == 1
    assert _one_error(capsys) == f"error: {saved}: cannot write to this export (No space left on device)"
    assert os.listdir(tmp_path) == ["saved"] and os.listdir(saved) == ["saved_model.pb"]
    assert (saved / "saved_model.pb").read_bytes() == b"older"
