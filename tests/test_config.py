"""Every validation rule of core/config.py: the one-line ConfigError names the key at fault."""

import json
import os

import pytest

from conftest import REPO_ROOT, raw_config
from core.config import ConfigError, config_from_dict, load_config


@pytest.mark.parametrize("name,resblock,channels", [("v1", "1", 512), ("v2", "1", 128), ("v3", "2", 256)])
def test_original_configs_load(name, resblock, channels):
    cfg = load_config(os.path.join(REPO_ROOT, "configs", f"{name}.json"))
    assert cfg.generator.resblock == resblock
    assert cfg.generator.upsample_initial_channel == channels
    assert cfg.generator.upsample_factor == cfg.audio.hop_size == 256
    assert cfg.audio.num_mels == cfg.generator.num_mels == 80
    assert cfg.frames_per_segment == 8192 // 256
    assert cfg.audio.padding == (1024 - 256) // 2
    assert cfg.loss.lambda_mel == 45.0 and cfg.optimizer.weight_decay == 0.01
    assert json.loads(cfg.to_json()) == raw_config(name)


def test_num_frames_matches_framing(v1_config):
    audio = v1_config.audio
    assert [audio.num_frames(n) for n in (256, 511, 512, 22050)] == [1, 1, 2, 22050 // 256]


def test_fingerprint_changes_with_features():
    base = config_from_dict(raw_config()).audio
    other = config_from_dict(raw_config(fmax=7600)).audio
    assert base.fingerprint_hash() != other.fingerprint_hash()
    assert base.fingerprint_hash() == config_from_dict(raw_config(batch_size=4)).audio.fingerprint_hash()


CASES = [
    # (overrides, key named in the message, words in the message)
    ({"num_mel": 80}, "num_mel", "unknown key"),
    ({"sampling_rate": None}, "sampling_rate", "integer"),
    ({"sampling_rate": 22050.0}, "sampling_rate", "integer"),
    ({"hop_size": True}, "hop_size", "integer"),
    ({"batch_size": 0}, "batch_size", ">= 1"),
    ({"seed": -1}, "seed", ">= 0"),
    ({"fmin": "0"}, "fmin", "finite number"),
    ({"learning_rate": float("nan")}, "learning_rate", "finite number"),
    ({"learning_rate": 0}, "learning_rate", "positive"),
    ({"adam_b1": 1.0}, "adam_b1", "[0, 1)"),
    ({"adam_b2": -0.1}, "adam_b2", ">= 0"),
    ({"lr_decay": 1.5}, "lr_decay", "(0, 1]"),
    ({"weight_decay": "high"}, "weight_decay", "finite number"),
    ({"lambda_mel": -1}, "lambda_mel", ">= 0"),
    ({"upsample_rates": []}, "upsample_rates", "non-empty list"),
    ({"upsample_rates": [8, 8, 2, 0]}, "upsample_rates", "positive integers"),
    ({"upsample_rates": [8, 8, 2, 4]}, "upsample_rates", "must equal hop_size"),
    ({"upsample_kernel_sizes": [16, 16, 4]}, "upsample_kernel_sizes", "entries"),
    ({"upsample_kernel_sizes": [16, 4, 4, 4]}, "upsample_kernel_sizes", "smaller than its upsample rate"),
    ({"upsample_initial_channel": 100}, "upsample_initial_channel", "not divisible"),
    ({"resblock": "3"}, "resblock", "\"1\" or \"2\""),
    ({"resblock_dilation_sizes": 3}, "resblock_dilation_sizes", "list of lists"),
    ({"resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]]}, "resblock_dilation_sizes", "entries"),
    ({"resblock_dilation_sizes": [[1, 3], [1, 3], [1, 3]]}, "resblock_dilation_sizes", "exactly 3"),
    ({"segment_size": 8000}, "segment_size", "not a multiple of hop_size"),
    ({"fmax": 12000}, "fmax", "above Nyquist"),
    ({"fmax_for_loss": 11026}, "fmax_for_loss", "above Nyquist"),
    ({"fmin": 8000}, "fmax", "must be above fmin"),
    ({"win_size": 2048}, "win_size", "exceeds n_fft"),
    ({"hop_size": 2048, "upsample_rates": [8, 8, 8, 4]}, "hop_size", "exceeds n_fft"),
    ({"mpd_periods": [2, 0]}, "mpd_periods", "positive integers"),
    ({"discriminator_channel_divisor": 16}, "discriminator_channel_divisor", "one of (1, 2, 4, 8)"),
]


@pytest.mark.parametrize("overrides,key,words", CASES, ids=[f"{c[1]}:{c[2]}" for c in CASES])
def test_invalid_values_name_their_key(overrides, key, words):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw_config(**overrides))
    message = str(err.value)
    assert f"'{key}'" in message and words in message
    assert "\n" not in message


def test_missing_key_is_named():
    raw = raw_config()
    del raw["hop_size"]
    with pytest.raises(ConfigError, match="'hop_size': missing"):
        config_from_dict(raw)


def test_fmin_at_nyquist_is_rejected():
    with pytest.raises(ConfigError, match="'fmin'.*Nyquist"):
        config_from_dict(raw_config(fmin=11025, fmax=None, fmax_for_loss=None))


def test_not_an_object():
    with pytest.raises(ConfigError, match="JSON object"):
        config_from_dict([1, 2])


def test_optional_and_ignored_keys():
    cfg = config_from_dict(raw_config(mpd_periods=[2, 3], lambda_mel=30, weight_decay=0.0, num_freq=1025,
                                      discriminator_channel_divisor=4))
    assert cfg.discriminator.mpd_periods == (2, 3) and cfg.discriminator.channel_divisor == 4
    assert config_from_dict(raw_config()).discriminator.channel_divisor == 1
    assert cfg.loss.lambda_mel == 30.0 and cfg.loss.lambda_feature_matching == 2.0
    assert cfg.optimizer.weight_decay == 0.0


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.json: cannot read config"):
        load_config(str(tmp_path / "nope.json"))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{\"resblock\": ")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_config(str(bad_json))
    bad_value = tmp_path / "bad_value.json"
    bad_value.write_text(json.dumps(raw_config(win_size=4096)))
    with pytest.raises(ConfigError, match="bad_value.json: config key 'win_size'"):
        load_config(str(bad_value))
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(ConfigError, match=r"binary.json: not UTF-8 text \(at byte 0\)"):
        load_config(str(binary))
