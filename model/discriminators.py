"""The multi-period and multi-scale discriminators of HiFi-GAN.

Each takes audio [batch, samples, 1] and returns ``(logits, feature_maps)``: logits a list with one
[batch, n] score tensor per sub-discriminator, feature_maps a list (per sub-discriminator) of the activations
after every convolution (conv_post's output last). NOTE: the original's modules take (real, generated) at once and
run each sub-discriminator on one, then the other; here a call on the list [real, generated] does the same.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from model.convs import PACKAGE, PaddedConv1D, PaddedConv2D, get_padding
from model.layers import LRELU_SLOPE, SpectralNorm, WeightNorm, track_layer_list


def _flatten(x):
    return ops.reshape(x, (ops.shape(x)[0], -1))


def _signals(x) -> tuple[list, bool]:
    """A discriminator takes one signal or a list of them (e.g. [real, generated]): each layer then computes its
    weight-normalised kernel once for all of them (one pass through the normalisation's gradient, not one per
    signal); the result is a list with one output per signal."""
    return (list(x), True) if isinstance(x, (list, tuple)) else ([x], False)


def _gather(outputs: list, is_list: bool):
    """Per sub-discriminator (logits, fmaps) -> (logits list, fmaps list); for a list of signals each
    sub-discriminator gave one pair per signal, and the result is one (logits list, fmaps list) per signal."""
    if not is_list:
        return [o[0] for o in outputs], [o[1] for o in outputs]
    return [([o[i][0] for o in outputs], [o[i][1] for o in outputs]) for i in range(len(outputs[0]))]


def _run_convs(convs, conv_post, hs: list, is_list: bool):
    """The conv stack on each signal in ``hs``: (logits, feature maps), or a list of those."""
    # A layer called on a list (see _signals) is already built: Keras builds it on one symbolic tensor.
    apply = (lambda layer, xs: layer(xs)) if is_list else (lambda layer, xs: [layer(xs[0])])
    fmaps = [[] for _ in hs]
    for conv in convs:
        hs = [ops.leaky_relu(h, LRELU_SLOPE) for h in apply(conv, hs)]
        for fmap, h in zip(fmaps, hs):
            fmap.append(h)
    hs = apply(conv_post, hs)
    outputs = [(_flatten(h), fmap + [h]) for h, fmap in zip(hs, fmaps)]
    return outputs if is_list else outputs[0]


@keras.saving.register_keras_serializable(PACKAGE)
class DiscriminatorP(keras.layers.Layer):
    """Period discriminator: audio [batch, samples, 1] -> [batch, ceil(samples / period), period, 1] 2-D view,
    then (k, 1) convolutions along time. Feature maps are [batch, time', period, channels]."""

    def __init__(self, period, kernel_size=5, stride=3, use_spectral_norm=False, channel_divisor=1, **kwargs):
        super().__init__(**kwargs)
        self.period, self.kernel_size, self.stride = period, kernel_size, stride
        self.use_spectral_norm, self.channel_divisor = use_spectral_norm, channel_divisor
        norm = SpectralNorm if use_spectral_norm else WeightNorm
        # NOTE: the original pads with get_padding(5, 1) whatever kernel_size is; kept.
        pad = get_padding(5, 1)
        self.convs = [norm(PaddedConv2D(filters // channel_divisor, (kernel_size, 1), (stride, 1), pad=pad))
                      for filters in (32, 128, 512, 1024)]
        self.convs.append(norm(PaddedConv2D(1024 // channel_divisor, (kernel_size, 1), 1, pad=2)))
        self.conv_post = norm(PaddedConv2D(1, (3, 1), 1, pad=1))
        track_layer_list(self, "convs", self.convs)

    def call(self, x):
        """x [batch, samples, 1] -> (logits [batch, time' * period], feature maps); see _signals for lists."""
        signals, is_list = _signals(x)
        hs = []
        for signal in signals:
            # NOTE: like the original, reflect-pad at the end to a multiple of the period.
            num_pad = -tf.shape(signal)[1] % self.period
            signal = tf.pad(signal, [[0, 0], [0, num_pad], [0, 0]], mode="REFLECT")
            hs.append(ops.reshape(signal, (ops.shape(signal)[0], -1, self.period, 1)))
        return _run_convs(self.convs, self.conv_post, hs, is_list)

    def get_config(self):
        return {**super().get_config(), "period": self.period, "kernel_size": self.kernel_size,
                "stride": self.stride, "use_spectral_norm": self.use_spectral_norm,
                "channel_divisor": self.channel_divisor}


@keras.saving.register_keras_serializable(PACKAGE)
class DiscriminatorS(keras.layers.Layer):
    """Scale discriminator: strided, grouped 1-D convolutions. audio [batch, samples, 1] -> (logits, fmaps)."""

    def __init__(self, use_spectral_norm=False, channel_divisor=1, **kwargs):
        super().__init__(**kwargs)
        self.use_spectral_norm, self.channel_divisor = use_spectral_norm, channel_divisor
        norm = SpectralNorm if use_spectral_norm else WeightNorm
        # (filters, kernel, stride, groups, pad) of the original's convs.
        specs = [(128, 15, 1, 1, 7), (128, 41, 2, 4, 20), (256, 41, 2, 16, 20), (512, 41, 4, 16, 20),
                 (1024, 41, 4, 16, 20), (1024, 41, 1, 16, 20), (1024, 5, 1, 1, 2)]
        self.convs = [norm(PaddedConv1D(f // channel_divisor, k, s, groups=g, pad=p)) for f, k, s, g, p in specs]
        self.conv_post = norm(PaddedConv1D(1, 3, 1, pad=1))
        track_layer_list(self, "convs", self.convs)

    def call(self, x):
        """x [batch, samples, 1] -> (logits [batch, time'], feature maps [batch, time_i, channels_i]); see
        _signals for lists."""
        return _run_convs(self.convs, self.conv_post, *_signals(x))

    def get_config(self):
        return {**super().get_config(), "use_spectral_norm": self.use_spectral_norm,
                "channel_divisor": self.channel_divisor}


@keras.saving.register_keras_serializable(PACKAGE)
class ZeroPaddedAvgPool1D(keras.layers.Layer):
    """torch's AvgPool1d(pool_size, strides, padding) with its default count_include_pad=True.

    NOTE: torch zero-pads and divides every window by pool_size, padding included, so edge windows are damped;
    Keras' "same" pooling would average only the real samples. [batch, time, C] ->
    [batch, (time + 2 * pad - pool_size) // strides + 1, C].
    """

    def __init__(self, pool_size=4, strides=2, pad=2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size, self.strides, self.pad = pool_size, strides, pad

    def call(self, x):
        x = ops.pad(x, [[0, 0], [self.pad, self.pad], [0, 0]])
        return ops.average_pool(x, self.pool_size, self.strides, padding="valid")

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides, "pad": self.pad}


@keras.saving.register_keras_serializable(PACKAGE)
class MultiPeriodDiscriminator(keras.Model):
    """One DiscriminatorP per period. call(audio [batch, samples, 1]) -> (logits list, feature-map lists).

    ``channel_divisor`` (1, 2, 4 or 8; 1 is the original) divides every layer's channels: a small model for demos
    and tests on CPU, whose cost is dominated by the discriminators' ~70 M parameters at the original's width.
    """

    def __init__(self, periods=(2, 3, 5, 7, 11), channel_divisor=1, **kwargs):
        super().__init__(**kwargs)
        self.periods, self.channel_divisor = tuple(periods), channel_divisor
        self.discriminators = track_layer_list(
            self, "discriminators", [DiscriminatorP(p, channel_divisor=channel_divisor) for p in self.periods])

    def call(self, audio):
        """audio [batch, samples, 1] -> (logits list, fmaps list); a list of signals (see _signals) -> a list of
        those, one per signal."""
        return _gather([d(audio) for d in self.discriminators], _signals(audio)[1])

    def build(self, input_shape=None):
        self.call(keras.KerasTensor(input_shape or (None, None, 1)))
        self.built = True

    def get_config(self):
        return {**super().get_config(), "periods": list(self.periods), "channel_divisor": self.channel_divisor}


@keras.saving.register_keras_serializable(PACKAGE)
class MultiScaleDiscriminator(keras.Model):
    """DiscriminatorS on the audio (spectral norm), then on 2x and 4x average-pooled audio (weight norm).
    ``channel_divisor`` as in MultiPeriodDiscriminator."""

    def __init__(self, channel_divisor=1, **kwargs):
        super().__init__(**kwargs)
        self.channel_divisor = channel_divisor
        self.discriminators = track_layer_list(self, "discriminators", [
            DiscriminatorS(use_spectral_norm=True, channel_divisor=channel_divisor),
            DiscriminatorS(channel_divisor=channel_divisor), DiscriminatorS(channel_divisor=channel_divisor)])
        self.meanpools = [ZeroPaddedAvgPool1D(4, 2, pad=2), ZeroPaddedAvgPool1D(4, 2, pad=2)]

    def call(self, audio, training=None):
        """audio [batch, samples, 1] -> (logits list, fmaps list); a list of signals (see _signals) -> a list of
        those, one per signal."""
        signals, is_list = _signals(audio)
        outputs = []
        for i, d in enumerate(self.discriminators):
            if i:
                signals = [self.meanpools[i - 1](signal) for signal in signals]
            outputs.append(d(signals if is_list else signals[0], training=training))
        return _gather(outputs, is_list)

    def build(self, input_shape=None):
        self.call(keras.KerasTensor(input_shape or (None, None, 1)))
        self.built = True

    def get_config(self):
        return {**super().get_config(), "channel_divisor": self.channel_divisor}
