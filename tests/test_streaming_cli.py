"""The streaming vocoder through the commands: run_inference.py --stream_frames K writes the files a one-pass run
writes (within 1 LSB of 16 bits), and run_export.py --streaming writes a SavedModel whose stream_step signature
streams what the Keras generator gives in one pass. Generator: the original's tiny fixture generator (hop 16)."""

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

import run_export
import run_inference
from model.checkpoint import restore_generator
from model.export import example_mel
from model.streaming import STREAM_SIGNATURES, StreamingVocoder, stream_vocode


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return restore_generator(tiny_checkpoint)


def test_run_inference_stream_frames_equals_one_pass(tiny_checkpoint, model, tmp_path):
    _, cfg = model
    inputs = tmp_path / "mels"
    inputs.mkdir()
    for name, frames in (("short", 2), ("long", 157)):
        np.save(inputs / f"{name}.npy", example_mel(cfg, frames, seed=frames)[0].T)
    outputs = {}
    for way, extra in (("one_pass", []), ("stream", ["--stream_frames", "7"])):
        out = tmp_path / way
        assert run_inference.main(["--checkpoint", tiny_checkpoint, "--input_mels_dir", str(inputs),
                                   "--output_dir", str(out), *extra]) == 0
        outputs[way] = {name: sf.read(out / f"{name}_generated.wav", dtype="int16")[0].astype(int)
                        for name in ("short", "long")}
    for name, frames in (("short", 2), ("long", 157)):
        streamed, whole = outputs["stream"][name], outputs["one_pass"][name]
        assert streamed.shape == whole.shape == (frames * cfg.audio.hop_size,)
        assert np.abs(streamed - whole).max() <= 1
        assert np.abs(whole).max() > 100  # real audio, not silence on both sides


@pytest.mark.parametrize("extra", [["--stream_frames", "0"], ["--stream_frames", "4", "--precision", "bfloat16"],
                                   ["--stream_frames", "4", "--backend", "tflite"]])
def test_stream_frames_refused_in_one_line(tiny_checkpoint, tmp_path, capsys, extra):
    with pytest.raises(SystemExit) as exit_info:
        run_inference.main(["--checkpoint", tiny_checkpoint, "--input_mels_dir", str(tmp_path),
                            "--output_dir", str(tmp_path / "out"), *extra])
    assert exit_info.value.code == 2
    assert "--stream_frames must be >= 1" in capsys.readouterr().err


def test_streaming_saved_model_streams_the_one_pass_output(tiny_checkpoint, model, tmp_path, capsys):
    generator, cfg = model
    out = tmp_path / "exported"
    assert run_export.main(["--checkpoint", tiny_checkpoint, "--format", "saved_model", "--streaming",
                            "--output", str(out)]) == 0
    assert "max |export - keras|" in capsys.readouterr().out
    loaded = tf.saved_model.load(str(out))
    assert set(STREAM_SIGNATURES) | {"serving_default"} == set(loaded.signatures)
    mel = example_mel(cfg, 50, seed=3)[0]
    whole = generator(mel[None], training=False).numpy()[0, :, 0]
    streamed = stream_vocode(StreamingVocoder.from_module(loaded), mel, 3)
    assert np.abs(streamed - whole).max() < 1 / 32768
    # The serving signature with its fixed-size state, as a server calls it.
    step, flush = loaded.signatures["stream_step"], loaded.signatures["stream_flush"]
    state = loaded.signatures["stream_initial_state"]()["state"]
    pieces = []
    for start in range(0, 50, 11):
        result = step(mel_chunk=tf.constant(mel[start:start + 11]), state=state)
        pieces.append(result["audio"].numpy())
        assert result["state"].shape == state.shape
        state = result["state"]
    pieces.append(flush(state=state)["audio"].numpy())
    assert np.abs(np.concatenate(pieces) - whole).max() < 1 / 32768


def test_streaming_export_refused_for_other_formats(tiny_checkpoint, tmp_path, capsys):
    assert run_export.main(["--checkpoint", tiny_checkpoint, "--format", "saved_model", "--streaming",
                            "--precision", "bfloat16", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--streaming adds its signatures to a float32 SavedModel only" in err[0]
