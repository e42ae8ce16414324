"""Streaming vocoding (model/streaming.py): for every split of the input into chunks the stream equals one pass of
the generator within 1 LSB of 16 bits, it gives each sample as soon as the stated latency allows (and that latency
is the generator's true right context), resets between utterances, and streams the same from a reloaded
SavedModel."""

import numpy as np
import pytest
import tensorflow as tf

from core.config import load_config
from model.generator import Generator
from model.inference import receptive_field_frames
from model.streaming import (STREAM_SIGNATURES, StreamingVocoder, stream_latency_samples, stream_vocode,
                             streaming_signatures)
from tests.conftest import REPO_ROOT
from tests.test_layers import make_generator_config
from tests.train_helpers import debug_config

LSB = 1 / 32768

CONFIGS = {
    "resblock1": lambda: make_generator_config(),  # V1-like, hop 16
    "resblock2": lambda: debug_config().generator,  # configs/debug.json: V3-like, hop 64
    # k - u odd in every layer, and a kernel (7) that is no multiple of its rate (4): hop 40
    "odd": lambda: make_generator_config(upsample_rates=[5, 4, 2], upsample_kernel_sizes=[10, 7, 5], resblock="2",
                                         resblock_dilation_sizes=[[1, 2], [2, 3]]),
}


@pytest.fixture(scope="module")
def models():
    """name -> (generator, its config, a StreamingVocoder of it), each built once for this module's tests."""
    built = {}

    def get(name):
        if name not in built:
            cfg = CONFIGS[name]()
            generator = Generator(cfg)
            generator.build()
            built[name] = generator, cfg, StreamingVocoder(generator, cfg)
        return built[name]

    return get


@pytest.fixture(params=sorted(CONFIGS))
def model(request, models):
    return models(request.param)


def _mel(frames, num_mels, seed=0):
    return np.random.default_rng(seed).normal(-5, 2, (frames, num_mels)).astype(np.float32)


def _one_pass(generator, mel):
    return generator(mel[None]).numpy()[0, :, 0]


def _random_split(frames, rng):
    """Chunk sizes (0 included) adding up to ``frames``."""
    sizes = []
    while sum(sizes) < frames:
        sizes.append(min(int(rng.choice([0, 1, 2, 3, 5, 8, 13])), frames - sum(sizes)))
    return sizes


def _stream(streamer, mel, sizes):
    """The stream's output for chunks of ``sizes``, checking after each chunk that it gave all the audio the
    latency allows and no more."""
    hop, pieces, start = streamer.hop_size, [], 0
    for size in sizes:
        pieces.append(streamer.step(mel[start:start + size]))
        start += size
        assert sum(p.size for p in pieces) == max(0, start * hop - streamer.latency_samples)
    return np.concatenate(pieces + [streamer.flush()])


def test_every_split_equals_one_pass(model):
    generator, cfg, streamer = model
    rng = np.random.default_rng(1)
    mel = _mel(24, cfg.num_mels, seed=1)
    expected = _one_pass(generator, mel)
    splits = [[1] * 24, [0, 3, 0, 21]] + [_random_split(24, rng) for _ in range(3)]
    for sizes in splits:
        audio = _stream(streamer, mel, sizes)
        assert audio.shape == expected.shape
        np.testing.assert_allclose(audio, expected, rtol=0, atol=LSB, err_msg=f"chunks {sizes}")
    # one frame at a time reaches the steady state (the lean graph) well before the end
    streamer.step(mel[:streamer.latency_frames + 2])
    assert streamer.steady
    streamer.reset()
    assert not streamer.steady


def test_very_short_inputs(model):
    generator, cfg, streamer = model
    for frames in (1, 2, 3):
        mel = _mel(frames, cfg.num_mels, seed=frames)
        expected = _one_pass(generator, mel)
        for sizes in ([1] * frames, [0, frames, 0]):
            np.testing.assert_allclose(_stream(streamer, mel, sizes), expected, rtol=0, atol=LSB)
    assert streamer.flush().size == 0  # an utterance of no frames: no audio


def test_latency_is_the_generators_right_context(model):
    generator, cfg, streamer = model
    # Positive kernels and zero biases: a one-frame impulse reaches exactly the samples its receptive field
    # covers, with no cancellation or rounding away (random weights shrink the reach's edges below float32).
    weights = generator.get_weights()  # the streamer keeps its own copy; restored below for the other tests
    try:
        for variable in generator.weights:
            variable.assign(np.zeros(variable.shape) if "bias" in variable.path else np.abs(variable.numpy()))
        hop, frame = cfg.upsample_factor, 20
        impulse = np.zeros((40, cfg.num_mels), np.float32)
        impulse[frame] = 1.0
        reached = np.nonzero(_one_pass(generator, impulse))[0]
    finally:
        generator.set_weights(weights)
    assert reached[0] == frame * hop - streamer.latency_samples  # the first sample that frame can change
    assert streamer.latency_frames == -(-streamer.latency_samples // hop)
    assert streamer.latency_frames <= receptive_field_frames(cfg)


def test_reset_between_utterances_equals_a_fresh_stream(model):
    generator, cfg, streamer = model
    first, second = _mel(30, cfg.num_mels, seed=3), _mel(25, cfg.num_mels, seed=4)
    streamer.step(first[:17])  # an utterance dropped halfway
    streamer.reset()
    np.testing.assert_allclose(stream_vocode(streamer, second, 4), _one_pass(generator, second), rtol=0, atol=LSB)
    # flush ends an utterance: the next one starts afresh without a reset
    np.testing.assert_allclose(stream_vocode(streamer, first, 7), _one_pass(generator, first), rtol=0, atol=LSB)
    with pytest.raises(ValueError, match=r"expected \[frames, "):
        streamer.step(first[None])


@pytest.mark.parametrize("name, frames, samples", [("v1", 13, 3258), ("v2", 13, 3258), ("v3", 11, 2582)])
def test_latency_of_the_published_configs(name, frames, samples):
    # the formula's agreement with the stream and with the generator is checked on the small configs above
    cfg = load_config(f"{REPO_ROOT}/configs/{name}.json")
    assert stream_latency_samples(cfg) == samples and -(-samples // cfg.audio.hop_size) == frames
    assert frames <= receptive_field_frames(cfg.generator)


def test_saved_model_signatures_stream_equal_to_one_pass(tmp_path, models):
    generator, cfg, streamer = models("resblock2")
    module = streamer.module
    tf.saved_model.save(module, str(tmp_path), signatures=streaming_signatures(module))
    loaded = tf.saved_model.load(str(tmp_path))
    assert sorted(loaded.signatures) == sorted(STREAM_SIGNATURES)
    step, flush = loaded.signatures["stream_step"], loaded.signatures["stream_flush"]
    state = loaded.signatures["stream_initial_state"]()["state"]
    assert state.shape == (module.state_size,) and not np.any(state.numpy())
    mel = _mel(25, cfg.num_mels, seed=5)
    pieces, start = [], 0
    for size in _random_split(25, np.random.default_rng(6)):
        out = step(mel_chunk=tf.constant(mel[start:start + size]), state=state)
        state = out["state"]
        assert state.shape == (module.state_size,)
        pieces.append(out["audio"].numpy())
        start += size
    audio = np.concatenate(pieces + [flush(state=state)["audio"].numpy()])
    expected = _one_pass(generator, mel)
    np.testing.assert_allclose(audio, expected, rtol=0, atol=LSB)
    reloaded = StreamingVocoder.from_module(loaded)  # the Python API over the reloaded module
    assert reloaded.latency_samples == int(module.latency_samples.numpy())
    np.testing.assert_allclose(stream_vocode(reloaded, mel, 3), expected, rtol=0, atol=LSB)
