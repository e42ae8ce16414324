"""Behaviour of the building blocks: weight/spectral normalisation, torch-style convolutions, output lengths,
the period discriminator's padding, and config round trips."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.discriminators import (DiscriminatorP, MultiPeriodDiscriminator, MultiScaleDiscriminator,
                                  ZeroPaddedAvgPool1D)
from model.generator import Generator
from model.convs import CroppedConv1DTranspose, PaddedConv1D, PaddedConv2D, time_conv
from model.layers import SpectralNorm, WeightNorm
from core.config import GeneratorConfig


def make_generator_config(**overrides) -> GeneratorConfig:
    """A tiny V1-like generator (hop 16) with overrides."""
    raw = dict(num_mels=12, resblock="1", upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8],
               upsample_initial_channel=16, resblock_kernel_sizes=[3, 5],
               resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]])
    return GeneratorConfig.from_raw({**raw, **overrides})


CONVS = {
    "conv1d": (lambda: PaddedConv1D(8, 5, dilation_rate=2, pad=4), (2, 30, 6)),
    "conv2d": (lambda: PaddedConv2D(8, (5, 1), (3, 1), pad=2), (2, 30, 3, 4)),
    "conv_transpose": (lambda: CroppedConv1DTranspose(6, 8, strides=4, pad=2), (2, 10, 12)),
}


@pytest.mark.parametrize("kind", sorted(CONVS))
def test_weight_norm_is_torchs_and_folds(kind):
    make, shape = CONVS[kind]
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    layer = WeightNorm(make())
    layer.build(shape)
    v = layer.layer.kernel.numpy()
    # g starts at ||v||: the effective kernel is v, as right after torch's weight_norm.
    np.testing.assert_allclose(layer.normalized_kernel().numpy(), v, rtol=1e-6)
    # One g per torch dim-0 entry: the LAST axis of our kernels, i.e. the input channel of the transposed conv.
    assert layer.g.shape == (v.shape[-1],)
    if kind == "conv_transpose":
        assert layer.g.shape == (shape[-1],)
    g = np.random.default_rng(1).uniform(0.5, 2.0, v.shape[-1]).astype(np.float32)
    layer.g.assign(g)
    norm = np.sqrt((v.astype(np.float64) ** 2).sum(axis=tuple(range(v.ndim - 1))))
    np.testing.assert_allclose(layer.normalized_kernel().numpy(), g * v / norm, rtol=1e-5)
    before = layer(x).numpy()
    assert len(layer.trainable_weights) == 3
    layer.fold()
    assert len(layer.trainable_weights) == 2 and layer.folded
    np.testing.assert_allclose(layer(x).numpy(), before, rtol=1e-5, atol=1e-6)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    clone.build(shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())


def test_padded_conv_is_torchs_zero_padding():
    """Strided conv with pad 20 like the MSD's: equals a 'valid' conv on the explicitly zero-padded input."""
    x = np.random.default_rng(2).normal(size=(2, 50, 8)).astype(np.float32)
    conv = PaddedConv1D(16, 41, 2, groups=4, pad=20)
    y = conv(x).numpy()
    assert y.shape == (2, (50 + 40 - 41) // 2 + 1, 16)
    # Grouped: one convolution per group, equal to Keras' own grouped convolution on the padded input.
    native = keras.layers.Conv1D(16, 41, 2, groups=4)
    native.build((2, 90, 8))
    native.set_weights(conv.get_weights())
    np.testing.assert_allclose(y, native(np.pad(x, ((0, 0), (20, 20), (0, 0)))).numpy(), rtol=1e-5, atol=1e-6)
    # torch's default init: |kernel| and |bias| <= 1 / sqrt(fan_in), fan_in = in / groups * kernel.
    bound = 1 / np.sqrt(2 * 41)
    assert np.abs(conv.kernel.numpy()).max() <= bound and np.abs(conv.bias.numpy()).max() <= bound
    assert np.abs(conv.bias.numpy()).max() > bound / 4


@pytest.mark.parametrize("kernel_size,dilation,filters", [(3, 3, 5), (5, 6, 5), (7, 12, 40), (11, 5, 5), (11, 3, 40),
                                                         (7, 1, 5)])
def test_dilated_conv_inference_path_equals_training_path_and_numpy(kernel_size, dilation, filters):
    """The plain-kernel call (inference: one native dilated conv, or SpaceToBatch for wide 11-tap layers) and the
    normalisation wrappers' path (SpaceToBatch) give torch's zero-padded dilated convolution."""
    x = np.random.default_rng(3).normal(size=(2, 37, 6)).astype(np.float32)
    pad = dilation * (kernel_size - 1) // 2
    conv = PaddedConv1D(filters, kernel_size, dilation_rate=dilation, pad=pad)
    conv.build(x.shape)
    kernel, bias = (w.astype(np.float64) for w in conv.get_weights())
    padded = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (0, 0)))
    expected = bias + sum(padded[:, j * dilation:j * dilation + 37] @ kernel[j] for j in range(kernel_size))
    inference = conv(x).numpy()
    training = conv.apply_kernel(tf.constant(x), conv.kernel).numpy()
    np.testing.assert_allclose(inference, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(training, expected, rtol=1e-5, atol=1e-5)


def test_spectral_norm_power_iteration():
    """Each training call is one of torch's power-iteration steps on the stored u and v (checked step for step
    against numpy in float64); with a clear gap between the top two singular values, 100 steps reach sigma_max."""
    rng = np.random.default_rng(3)
    layer = SpectralNorm(PaddedConv1D(16, 5, pad=2))
    x = rng.normal(size=(2, 20, 6)).astype(np.float32)
    layer(x)
    # A torch-layout [out, in * taps] matrix with singular values 3, 1, 0.9, ...: seeded, so the test does not
    # hang on the convergence rate of whatever kernel the initialiser drew.
    left, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    right, _ = np.linalg.qr(rng.normal(size=(30, 16)))
    singular = np.concatenate([[3.0], np.linspace(1.0, 0.1, 15)])
    matrix = (left * singular) @ right.T
    kernel = np.transpose(matrix.reshape(16, 6, 5), (2, 1, 0)).astype(np.float32)  # torch [16, 6, 5] -> [5, 6, 16]
    layer.layer.kernel.assign(kernel)
    u = layer.u.numpy().astype(np.float64)
    layer(x, training=False)
    np.testing.assert_array_equal(layer.u.numpy(), u.astype(np.float32))  # inference uses the stored vectors
    for step in range(100):
        v = matrix.T @ u
        v /= np.linalg.norm(v)
        u = matrix @ v
        u /= np.linalg.norm(u)
        layer(x, training=True)
        if step < 3:
            np.testing.assert_allclose(layer.u.numpy(), u, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(layer.v.numpy(), v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.normalized_kernel().numpy(), kernel / (u @ matrix @ v), rtol=1e-5)
    np.testing.assert_allclose(layer.normalized_kernel().numpy(), kernel / 3.0, rtol=1e-5)
    # Gradients reach the kernel through sigma (u and v are constants), as in torch.
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=False))
    assert np.abs(tape.gradient(loss, layer.layer.kernel).numpy()).max() > 0


CONFIGS = {
    "v1_like": {},
    "resblock2": dict(resblock="2", resblock_dilation_sizes=[[1, 3], [1, 3]]),
    # k - u odd in every layer (5 vs 10 is the original's 16 kHz shape bug): still frames * hop samples.
    "odd": dict(upsample_rates=[5, 4, 2], upsample_kernel_sizes=[10, 7, 5], upsample_initial_channel=16),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_generator_length_is_frames_times_hop_for_any_length(name):
    cfg = make_generator_config(**CONFIGS[name])
    generator = Generator(cfg)
    generator.build()  # variables exist before tracing, as after loading a checkpoint
    infer = tf.function(generator, input_signature=[tf.TensorSpec([None, None, cfg.num_mels])])
    for frames in (1, 7, 33):
        mel = np.random.default_rng(frames).normal(-5, 2, (2, frames, cfg.num_mels)).astype(np.float32)
        audio = infer(mel).numpy()
        assert audio.shape == (2, frames * cfg.upsample_factor, 1)
        assert np.abs(audio).max() < 1 and audio.std() > 0
    assert infer.experimental_get_tracing_count() == 1


def test_generator_config_round_trip_and_fold():
    cfg = make_generator_config(resblock="2", resblock_dilation_sizes=[[1, 3], [2, 4]])
    generator = Generator(cfg)
    mel = np.random.default_rng(4).normal(-5, 2, (1, 9, cfg.num_mels)).astype(np.float32)
    audio = generator(mel).numpy()
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(generator))
    assert clone.cfg == cfg
    clone.build()
    clone.set_weights(generator.get_weights())
    np.testing.assert_array_equal(clone(mel).numpy(), audio)
    num_weights = len(generator.weights)
    generator.remove_weight_norm()
    num_convs = 2 + len(cfg.upsample_rates) * (1 + 2 * len(cfg.resblock_kernel_sizes))
    assert num_weights == 3 * num_convs and len(generator.weights) == 2 * num_convs
    np.testing.assert_allclose(generator(mel).numpy(), audio, atol=1e-6)
    folded = Generator.from_config(generator.get_config())
    assert not folded.weight_norm
    folded.build()
    folded.set_weights(generator.get_weights())
    np.testing.assert_array_equal(folded(mel).numpy(), generator(mel).numpy())


@pytest.mark.parametrize("num_samples", [97, 99])
def test_period_discriminator_reflect_pads_to_a_multiple_of_the_period(num_samples):
    period = 5
    disc = DiscriminatorP(period)
    x = np.random.default_rng(num_samples).normal(size=(2, num_samples, 1)).astype(np.float32)
    logits, fmaps = disc(x)
    rows = -(-num_samples // period)
    assert fmaps[0].shape == (2, (rows - 1) // 3 + 1, period, 32)
    assert logits.shape[1] == fmaps[-1].shape[1] * period
    # The original's padding: reflect at the end up to a multiple of the period.
    padded = np.pad(x, ((0, 0), (0, rows * period - num_samples), (0, 0)), mode="reflect")
    padded_logits, _ = disc(padded)
    np.testing.assert_allclose(logits.numpy(), padded_logits.numpy(), rtol=1e-5, atol=1e-6)


def test_mpd_config_round_trip():
    mpd = MultiPeriodDiscriminator(periods=(2, 3))
    clone = MultiPeriodDiscriminator.from_config(mpd.get_config())
    assert [d.period for d in clone.discriminators] == [2, 3]


@pytest.mark.parametrize("divisor", [2, 8])
def test_channel_divisor_narrows_every_discriminator_layer(divisor):
    audio = np.random.default_rng(3).uniform(-0.5, 0.5, (2, 1000, 1)).astype(np.float32)
    for full, small in ((MultiPeriodDiscriminator((2, 3)), MultiPeriodDiscriminator((2, 3), channel_divisor=divisor)),
                        (MultiScaleDiscriminator(), MultiScaleDiscriminator(channel_divisor=divisor))):
        (full_logits, full_fmaps), (logits, fmaps) = full(audio), small(audio)
        # Same time axes and logits, every hidden layer's channels divided (conv_post keeps its one channel).
        assert [t.shape for t in logits] == [t.shape for t in full_logits]
        for fm_full, fm in zip(full_fmaps, fmaps):
            assert [f.shape[:-1] for f in fm] == [f.shape[:-1] for f in fm_full]
            assert [f.shape[-1] * divisor for f in fm[:-1]] == [f.shape[-1] for f in fm_full[:-1]]
        assert small.count_params() < full.count_params() / (divisor ** 2 / 2)
        clone = type(small).from_config(small.get_config())
        clone.build()
        assert clone.count_params() == small.count_params()


def test_avg_pool_counts_padding_like_torch():
    x = np.arange(1, 11, dtype=np.float32).reshape(1, 10, 1)
    y = ZeroPaddedAvgPool1D(4, 2, pad=2)(x).numpy()[0, :, 0]
    padded = np.pad(x[0, :, 0], 2)
    expected = [padded[i:i + 4].sum() / 4 for i in range(0, len(padded) - 3, 2)]
    np.testing.assert_allclose(y, expected)
    assert y[0] == (1 + 2) / 4  # edge window divided by 4, zeros included


def _checkpointed_variables(obj):
    return [t for t in tf.train.TrackableView(obj).descendants() if isinstance(t, keras.Variable)]


def test_tf_checkpoint_holds_every_variable(tmp_path):
    """tf.train.Checkpoint (the trainer's) must see the layers kept in lists (ups, resblocks, convs...)."""
    cfg = make_generator_config()
    generator = Generator(cfg)
    generator.build()
    path = tf.train.Checkpoint(generator=generator).write(str(tmp_path / "ckpt"))
    restored = Generator(cfg)
    restored.build()
    tf.train.Checkpoint(generator=restored).read(path).assert_consumed()
    mel = np.random.default_rng(5).normal(-5, 2, (1, 6, cfg.num_mels)).astype(np.float32)
    np.testing.assert_array_equal(restored(mel).numpy(), generator(mel).numpy())
    for model in (MultiPeriodDiscriminator(periods=(2, 3)), MultiScaleDiscriminator()):
        model.build()
        assert len(_checkpointed_variables(model)) == len(model.weights)


@pytest.mark.parametrize("kind", ["mpd", "msd"])
def test_discriminator_on_a_list_equals_one_call_per_signal(kind):
    # [real, generated] in one call shares each normalised kernel; outputs and spectral norm's power iterations
    # (one per signal, in order) are those of separate calls.
    make = {"mpd": lambda: MultiPeriodDiscriminator(channel_divisor=8),
            "msd": lambda: MultiScaleDiscriminator(channel_divisor=8)}[kind]
    together, apart = make(), make()
    for d in (together, apart):
        d.build((None, None, 1))
    apart.set_weights(together.get_weights())
    rng = np.random.default_rng(0)
    real, fake = (tf.constant(rng.uniform(-0.5, 0.5, (2, 1000, 1)).astype(np.float32)) for _ in range(2))
    outputs = together([real, fake], training=True)
    expected = [apart(real, training=True), apart(fake, training=True)]
    for (logits, fmaps), (logits_ref, fmaps_ref) in zip(outputs, expected):
        for a, b in zip(logits + sum(fmaps, []), logits_ref + sum(fmaps_ref, [])):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    for a, b in zip(together.weights, apart.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)


@pytest.mark.parametrize("length,kernel_size,stride", [(50, 5, 3), (52, 5, 3), (40, 5, 1), (31, 2, 3), (60, 7, 2)])
def test_time_conv_gradients_equal_tensorflow(length, kernel_size, stride):
    # time_conv's own input gradient (one forward convolution per phase of the stride) against TF's Conv2D.
    rng = np.random.default_rng(length + kernel_size)
    x = tf.constant(rng.standard_normal((2, length, 3, 4)).astype(np.float32))
    kernel = tf.constant(rng.standard_normal((kernel_size, 1, 4, 5)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, kernel])
        ours, theirs = time_conv(x, kernel, stride), tf.nn.conv2d(x, kernel, [1, stride, 1, 1], "VALID")
        losses = [tf.reduce_sum(y * tf.sin(y)) for y in (ours, theirs)]
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(tape.gradient(losses[0], [x, kernel]), tape.gradient(losses[1], [x, kernel])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
