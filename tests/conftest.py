"""Shared fixtures: numpy-made audio written to real files, the repo's configs and its demo corpus."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_WAVS = os.path.join(REPO_ROOT, "demo", "wavs")
DEMO_TRAIN = os.path.join(REPO_ROOT, "filelists", "demo_train.txt")
DEMO_VAL = os.path.join(REPO_ROOT, "filelists", "demo_val.txt")


def sine(freq: float, seconds: float, sampling_rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A float32 sine [seconds * sampling_rate]."""
    t = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chirp_with_noise(seconds: float, sampling_rate: int, seed: int = 0, amplitude: float = 0.4) -> np.ndarray:
    """A rising chirp plus a little noise: broadband, speech-like energy in every mel band."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    phase = 2 * np.pi * (100 * t + 1500 * t ** 2 / seconds)
    return (amplitude * np.sin(phase) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def write_audio(path, audio: np.ndarray, sampling_rate: int, subtype: str = "PCM_16", format: str | None = None) -> str:
    """Writes ``audio`` [num_samples] or [num_samples, channels] with soundfile; returns the path."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, audio, sampling_rate, subtype=subtype, format=format)
    return path


def raw_config(name: str = "v1", **overrides) -> dict:
    """One of the repo's configs as a flat dict, with overrides."""
    with open(os.path.join(REPO_ROOT, "configs", f"{name}.json"), encoding="utf-8") as f:
        raw = json.load(f)
    raw.update(overrides)
    return raw


def read_filelist_ids(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.split("|", 1)[0] for line in f.read().splitlines() if line.strip()]


# The seed every test starts from (subprocesses that must see the test's random state set it too).
TEST_SEED = 20261129


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state (python, numpy, TF and Keras initialisers), whatever ran
    before it: a failure in CI can be rerun here as it was."""
    import keras

    keras.utils.set_random_seed(TEST_SEED)


@pytest.fixture(autouse=True)
def _no_stale_log_handlers():
    """A run_*.py main() called in a test installs its console handler on the root logger (run_preprocess.py with
    basicConfig(force=True)) bound to that test's captured stderr, which pytest closes after it: any later log line
    in this worker would then print "--- Logging error ---" and a traceback into another test's stderr. Such
    handlers are removed after each test."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(getattr(handler, "stream", None), "closed", False):
            root.removeHandler(handler)


@pytest.fixture(scope="session")
def v1_config():
    from core.config import load_config

    return load_config(os.path.join(REPO_ROOT, "configs", "v1.json"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """The original's tiny fixture generator (tests/fixtures/ckpt_g_zip: hop 16, 8 kHz, 80 mels) converted into a
    checkpoint directory of ours; tests read it and never write into it."""
    from core.config import load_config
    from model.convert import convert

    fixtures = os.path.join(REPO_ROOT, "tests", "fixtures")
    out = str(tmp_path_factory.mktemp("tiny_checkpoint") / "ckpt")
    convert(load_config(os.path.join(fixtures, "ckpt_config.json")), os.path.join(fixtures, "ckpt_g_zip"), out)
    return out
