"""Parity of our generator and discriminators with the original PyTorch modules (golden outputs in
tests/fixtures/model_parity.npz, made by tools/make_fixtures.py with the same synthetic weights that
``synthetic_state`` regenerates here and model/torch_weights.py loads)."""

import json
import os

import numpy as np
import pytest

from model.discriminators import MultiPeriodDiscriminator, MultiScaleDiscriminator
from model.generator import Generator
from model.torch_weights import load_generator_state, load_mpd_state, load_msd_state
from core.config import GeneratorConfig
from tools.make_fixtures import sample_points, synthetic_state

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "model_parity.npz")
# float32 through a few conv layers: errors are ~1e-6 of the signal's scale.
GENERATOR_RTOL = 1e-4
DISC_TOL = 1e-4  # relative to each tensor's largest magnitude


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as data:
        return dict(data)


def _generator_cfg(ref, name):
    raw = json.loads(str(ref["generator_configs"]))[name]
    return GeneratorConfig.from_raw({**raw, "num_mels": ref["mel"].shape[-1]})


def _state(ref, name):
    return synthetic_state(json.loads(str(ref[f"{name}/shapes"])))


def _close(ours, theirs, tol=DISC_TOL):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=tol * max(np.abs(theirs).max(), 1e-6))


@pytest.mark.parametrize("name", ["resblock1", "resblock2", "odd"])
def test_generator_matches_original(ref, name):
    cfg = _generator_cfg(ref, name)
    generator = Generator(cfg)
    load_generator_state(generator, _state(ref, name))
    expected, mel = ref[f"{name}/audio"], ref["mel"]
    audio = generator(mel).numpy()
    assert audio.shape == (mel.shape[0], mel.shape[1] * cfg.upsample_factor, 1)
    if name == "odd":
        # NOTE: the original's last upsampler (k - u odd) gives one extra sample; ours stops at frames * hop.
        # The extra sample reaches the last samples through the resblocks' and conv_post's receptive field, so
        # the comparison stops 64 samples before the end.
        assert expected.shape[1] == audio.shape[1] + 1
        expected, audio = expected[:, :-65], audio[:, :-64]
    np.testing.assert_allclose(audio, expected, rtol=GENERATOR_RTOL, atol=GENERATOR_RTOL * np.abs(expected).max())
    # Folding the weight norms changes nothing but rounding.
    generator.remove_weight_norm()
    folded = generator(mel).numpy()[:, :expected.shape[1]]
    np.testing.assert_allclose(folded, expected, rtol=GENERATOR_RTOL, atol=GENERATOR_RTOL * np.abs(expected).max())


def _fold_state(state):
    """The original's remove_weight_norm on a state dict: weight = g * v / ||v|| (norm over all but dim 0)."""
    folded = {}
    for key, value in state.items():
        if key.endswith(".weight_v"):
            prefix = key[:-len(".weight_v")]
            norm = np.sqrt(np.sum(value.astype(np.float64) ** 2, axis=tuple(range(1, value.ndim)), keepdims=True))
            folded[f"{prefix}.weight"] = (state[f"{prefix}.weight_g"] * value / norm).astype(np.float32)
        elif not key.endswith(".weight_g"):
            folded[key] = value
    return folded


@pytest.mark.parametrize("weight_norm", [True, False])
def test_generator_loads_folded_state(ref, weight_norm):
    cfg = _generator_cfg(ref, "resblock2")
    generator = Generator(cfg, weight_norm=weight_norm)
    load_generator_state(generator, _fold_state(_state(ref, "resblock2")))
    expected = ref["resblock2/audio"]
    np.testing.assert_allclose(generator(ref["mel"]).numpy(), expected, rtol=GENERATOR_RTOL,
                               atol=GENERATOR_RTOL * np.abs(expected).max())


def test_bad_state_dicts_name_the_key(ref):
    cfg = _generator_cfg(ref, "resblock1")
    generator = Generator(cfg)
    generator.build()
    before = [w.numpy().copy() for w in generator.weights]
    state = _state(ref, "resblock1")
    missing = {k: v for k, v in state.items() if k != "resblocks.3.convs1.2.weight_v"}
    with pytest.raises(ValueError, match=r"missing key 'resblocks\.3\.convs1\.2\.weight_v'"):
        load_generator_state(generator, missing)
    with pytest.raises(ValueError, match=r"unexpected key 'ups\.9\.weight_g'"):
        load_generator_state(generator, {**state, "ups.9.weight_g": np.ones(3, np.float32)})
    wrong = {**state, "conv_pre.weight_v": np.zeros((32, 80, 5), np.float32)}
    with pytest.raises(ValueError, match=r"'conv_pre\.weight_v' has shape \[32, 80, 5\], expected \[32, 80, 7\]"):
        load_generator_state(generator, wrong)
    # A failed load leaves the model untouched.
    for w, b in zip(generator.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


def _check_disc(ref, name, logits, fmaps):
    for i, (score, fmap) in enumerate(zip(logits, fmaps)):
        _close(score, ref[f"{name}/{i}/logits"])
        assert len(fmap) == sum(1 for k in ref if k.startswith(f"{name}/{i}/fmap/") and k.endswith("/shape"))
        for j, layer in enumerate(fmap):
            layer = np.asarray(layer)
            key = f"{name}/{i}/fmap/{j}"
            assert list(layer.shape) == list(ref[f"{key}/shape"]), key
            flat = layer.reshape(-1).astype(np.float64)
            _close(flat[sample_points(flat.size)], ref[f"{key}/sample"])
            stats = np.array([flat.mean(), np.abs(flat).mean(), flat.std()])
            _close(stats, ref[f"{key}/stats"])


def test_mpd_matches_original(ref):
    mpd = MultiPeriodDiscriminator()
    load_mpd_state(mpd, _state(ref, "mpd"))
    logits, fmaps = mpd(ref["audio"][..., None])
    assert len(logits) == 5
    _check_disc(ref, "mpd", logits, fmaps)


def test_msd_matches_original_in_eval_and_training(ref):
    msd = MultiScaleDiscriminator()
    state = _state(ref, "msd")
    load_msd_state(msd, state)
    audio = ref["audio"][..., None]
    logits, fmaps = msd(audio)
    assert len(logits) == 3
    _check_disc(ref, "msd", logits, fmaps)
    # Training mode, from unconverged u and v: one power iteration updates them before the forward, as torch's
    # spectral_norm does.
    load_msd_state(msd, synthetic_state(json.loads(str(ref["msd/shapes"])), power_iterations=0))
    scale0 = msd.discriminators[0]
    start = scale0.convs[3].u.numpy().copy()
    score, _ = scale0(audio, training=True)
    _close(score, ref["msd/train/logits"])
    for j, conv in enumerate([*scale0.convs, scale0.conv_post]):
        key = "conv_post" if j == len(scale0.convs) else f"convs.{j}"
        np.testing.assert_allclose(conv.u.numpy(), ref[f"msd/train/{key}/weight_u"], atol=1e-5)
        np.testing.assert_allclose(conv.v.numpy(), ref[f"msd/train/{key}/weight_v"], atol=1e-5)
    assert np.abs(scale0.convs[3].u.numpy() - start).max() > 0.1
