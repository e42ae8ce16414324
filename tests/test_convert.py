"""Converting the original's g_ / do_ files into our checkpoint format, against the original's outputs
(tests/fixtures/ckpt_parity.npz, made by tools/make_checkpoint_fixtures.py with torch 2.13)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import run_convert
from model.checkpoint import CONFIG_NAME, FINGERPRINT_NAME, has_discriminators, latest_checkpoint, restore_generator
from model.convert import ConversionError, convert
from model.discriminators import MultiPeriodDiscriminator, MultiScaleDiscriminator
from core.audio import to_int16
from core.config import load_config

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CONFIG = os.path.join(FIXTURES, "ckpt_config.json")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# float32 through ~30 convolutions of a tiny generator: torch and TF round differently, ~1e-7 of full scale.
AUDIO_ATOL = 1e-5
INT16_LSB = 1  # truncation toward zero can flip one LSB where the float results straddle an integer
DISC_RTOL = 1e-4  # of each logit tensor's largest magnitude (70 M parameters, 1024-channel convolutions)


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(FIXTURES, "ckpt_parity.npz")) as data:
        return dict(data)


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_converted_generator_matches_the_original(fmt, cfg, expected, tmp_path):
    prefix = convert(cfg, os.path.join(FIXTURES, f"ckpt_g_{fmt}"), str(tmp_path / "ckpt"))
    assert prefix == str(tmp_path / "ckpt" / "ckpt-0") and latest_checkpoint(str(tmp_path / "ckpt")) == prefix
    assert not has_discriminators(prefix)
    assert load_config(str(tmp_path / "ckpt" / CONFIG_NAME)).raw == cfg.raw
    assert (tmp_path / "ckpt" / FINGERPRINT_NAME).exists()
    generator, _ = restore_generator(str(tmp_path / "ckpt"))  # folds weight norm, as the original's inference
    mel = expected["generator/mel"].T[None]  # the original's [num_mels, frames] -> [1, frames, num_mels]
    audio = generator(mel).numpy()[0, :, 0]
    np.testing.assert_allclose(audio, expected["generator/audio"], rtol=0, atol=AUDIO_ATOL)
    lsb = np.abs(to_int16(audio).astype(np.int32) - expected["generator/audio_int16"].astype(np.int32))
    assert lsb.max() <= INT16_LSB
    # Restoring keeps the step / epoch counters of a generator-only conversion at 0.
    step = tf.Variable(-1, dtype=tf.int64)
    tf.train.Checkpoint(step=step).restore(prefix).expect_partial()
    assert int(step.numpy()) == 0


def test_discriminator_file_converts_with_counters(cfg, expected, tmp_path):
    out = tmp_path / "with_do"
    assert run_convert.main(["--config", CONFIG, "--torch_generator", os.path.join(FIXTURES, "ckpt_g_legacy"),
                             "--torch_discriminator", os.path.join(FIXTURES, "ckpt_do_legacy"),
                             "--output_dir", str(out)]) == 0
    prefix = latest_checkpoint(str(out))
    assert prefix.endswith("ckpt-1234") and has_discriminators(prefix)
    mpd, msd = MultiPeriodDiscriminator(cfg.discriminator.mpd_periods), MultiScaleDiscriminator()
    mpd.build()
    msd.build()
    step, epoch = tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64)
    tf.train.Checkpoint(mpd=mpd, msd=msd, step=step, epoch=epoch).restore(prefix).expect_partial()
    assert (int(step.numpy()), int(epoch.numpy())) == (1234, 5)
    audio = expected["disc/audio"].reshape(1, -1, 1)
    for name, model in (("mpd", mpd), ("msd", msd)):
        logits = model(audio)[0]
        for i, score in enumerate(logits):
            want = expected[f"{name}/logits/{i}"].reshape(-1)
            np.testing.assert_allclose(np.asarray(score).reshape(-1), want, rtol=0,
                                       atol=DISC_RTOL * np.abs(want).max(), err_msg=f"{name} {i}")


@pytest.mark.parametrize("broken, message", [
    ("missing_key", "missing key 'resblocks.1.convs2.0.bias'"),
    ("wrong_shape", "key 'ups.0.weight_v' has shape [16, 8, 7], expected [16, 8, 8]"),
    ("unexpected_key", "unexpected key 'conv_mid.weight'"),
])
def test_bad_checkpoints_are_refused_and_nothing_is_written(broken, message, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_convert.main(["--config", CONFIG, "--torch_generator", os.path.join(FIXTURES, f"ckpt_g_{broken}"),
                             "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == []  # no output dir, no temporary dir left behind


def test_config_that_does_not_fit_the_checkpoint(cfg, tmp_path):
    raw = {**cfg.raw, "upsample_initial_channel": 32}
    from core.config import config_from_dict

    with pytest.raises(ConversionError, match="key 'conv_pre.bias' has shape \\[16\\], expected \\[32\\]"):
        convert(config_from_dict(raw), os.path.join(FIXTURES, "ckpt_g_zip"), str(tmp_path / "out"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(ConversionError, match="not an empty directory"):
        convert(cfg, os.path.join(FIXTURES, "ckpt_g_zip"), str(tmp_path / "busy"))


def test_cli_refusal_is_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "run_convert.py"), "--config", CONFIG,
                             "--torch_generator", os.path.join(FIXTURES, "ckpt_malicious_legacy"),
                             "--output_dir", str(tmp_path / "out")],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO_ROOT}, capture_output=True, text=True)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refusing to load global" in errors[0] and "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == []  # neither the checkpoint nor the marker the pickle would touch
