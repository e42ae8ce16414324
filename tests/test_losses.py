"""Our losses against the original's discriminator_loss / generator_loss / feature_loss
(tests/fixtures/loss_parity.npz), and the TF mel's dtype, shape and gradient behaviour."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.losses import (MelSpectrogram, discriminator_loss, feature_matching_loss, generator_adversarial_loss,
                          mel_loss)
from core.config import LossConfig, load_config
from core.mel import MelExtractor

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "loss_parity.npz")
CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "v1.json")


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as data:
        data = dict(data)
    real = [data[f"real/{i}"] for i in range(3)]
    fake = [data[f"fake/{i}"] for i in range(3)]
    fmap_r = [[data["fmap_r/0/0"], data["fmap_r/0/1"]], [data["fmap_r/1/0"]]]
    fmap_g = [[data["fmap_g/0/0"], data["fmap_g/0/1"]], [data["fmap_g/1/0"]]]
    return data, real, fake, fmap_r, fmap_g


def test_adversarial_losses_match_original(ref):
    data, real, fake, _, _ = ref
    loss, real_losses, fake_losses = discriminator_loss(real, fake)
    np.testing.assert_allclose(float(loss), data["d_loss"], rtol=1e-6)
    np.testing.assert_allclose([float(x) for x in real_losses], data["r_losses"], rtol=1e-6)
    np.testing.assert_allclose([float(x) for x in fake_losses], data["g_losses"], rtol=1e-6)
    loss, per_disc = generator_adversarial_loss(fake)
    np.testing.assert_allclose(float(loss), data["g_loss"], rtol=1e-6)
    np.testing.assert_allclose([float(x) for x in per_disc], data["gen_losses"], rtol=1e-6)


def test_feature_matching_matches_original_with_the_config_weight(ref):
    data, _, _, fmap_r, fmap_g = ref
    loss = float(feature_matching_loss(fmap_r, fmap_g))
    # NOTE: the original's feature_loss includes its factor 2, which is our lambda_feature_matching default.
    np.testing.assert_allclose(loss * LossConfig().lambda_feature_matching, data["feature_loss"], rtol=1e-6)
    assert float(feature_matching_loss(fmap_r, fmap_r)) == 0.0


def test_losses_are_float32_under_float16_inputs(ref):
    _, real, fake, fmap_r, fmap_g = ref
    half = lambda arrays: [tf.constant(a, tf.float16) for a in arrays]  # noqa: E731
    loss, _, _ = discriminator_loss(half(real), half(fake))
    assert loss.dtype == tf.float32
    assert generator_adversarial_loss(half(fake))[0].dtype == tf.float32
    assert feature_matching_loss([half(g) for g in fmap_r], [half(g) for g in fmap_g]).dtype == tf.float32
    np.testing.assert_allclose(float(loss), float(discriminator_loss(real, fake)[0]), rtol=1e-3)


def test_tf_mel_shapes_dtype_gradient_and_config():
    cfg = load_config(CONFIG).audio
    t = np.arange(8192) / cfg.sampling_rate
    audio = np.stack([0.5 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 1234 * t)]).astype(np.float32)
    layer = MelSpectrogram(cfg)
    mel = layer(tf.constant(audio, tf.float16)[..., None])
    assert mel.dtype == tf.float32
    assert mel.shape == (2, cfg.num_frames(8192), cfg.num_mels)
    # float16 audio is computed like the same values in float32, and agrees with the pipeline's numpy mel.
    rounded = audio.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(mel.numpy(), layer(rounded).numpy())
    expected = np.stack([MelExtractor(cfg)(a)[1] for a in rounded])
    np.testing.assert_allclose(mel.numpy(), expected, atol=1e-4)
    # The mel loss passes gradients back to the audio (the generator's output).
    fake = tf.Variable(audio * 0.5)
    with tf.GradientTape() as tape:
        loss = mel_loss(layer(audio), layer(fake))
    grad = tape.gradient(loss, fake).numpy()
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    # Config round trip, through Keras serialisation.
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, MelSpectrogram) and clone.audio_cfg == cfg and clone.for_loss
    np.testing.assert_array_equal(clone(audio).numpy(), layer(audio).numpy())
    # for_loss=False uses fmax instead of fmax_for_loss.
    assert cfg.fmax != cfg.fmax_for_loss
    assert not np.allclose(MelSpectrogram(cfg, for_loss=False)(audio).numpy(), mel.numpy(), atol=1e-2)
