"""Building blocks of HiFi-GAN in Keras 3, channels-last: torch-style padded convolutions, weight and spectral
normalisation wrappers, and the generator's two residual block types.

Every tensor is [batch, time, channels] (Conv2D: [batch, time, period, channels]). Kernels are in Keras layout:
Conv1D [kernel, in / groups, out], Conv2D [kh, kw, in, out], Conv1DTranspose [kernel, out, in].
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

LRELU_SLOPE = 0.1
PACKAGE = "hifigan"
# At inference, a dilated convolution runs natively (one dilated conv) when it has up to this many taps or up to
# this many output channels; otherwise, and always for training, through SpaceToBatch (tf.nn.convolution's way).
# Measured with 2 threads (benchmarks/bench_inference.py; per layer on 10 s of mel): native makes the generator's
# 3-7-tap dilated layers 20-30 % faster (V3 whole: ~160 -> ~120 ms), and V2's narrow 11-tap ones too (32 channels:
# 3.0 vs 5.2 ms; V2 whole ~4 %); but with 11 taps and 128 channels oneDNN's dilated kernel is 2x SLOWER (92 vs 43
# ms). For training (forward + gradients) the two are even, or SpaceToBatch ahead (dilation 12: 5.6 vs 8.9 ms).
NATIVE_DILATION_MAX_KERNEL = 7
NATIVE_DILATION_MAX_CHANNELS = 32


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """Zero padding per side that keeps the length of a stride-1 convolution (the original's ``get_padding``)."""
    return (kernel_size * dilation - dilation) // 2


def torch_kernel_initializer() -> keras.initializers.Initializer:
    """torch's default conv init, kaiming_uniform(a=sqrt(5)): U(+-1 / sqrt(fan_in)).

    NOTE: Keras computes fan_in from a Conv1DTranspose kernel [k, out, in] as k * out, which is exactly torch's
    (quirky) fan_in of a ConvTranspose1d weight [in, out, k], so one initializer fits all our convolutions.
    """
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def _time_conv_input_grad(dy, kernel, stride: int, in_len):
    """Gradient w.r.t. x of a "valid" convolution of x [B, T, W, Cin] with kernel [k, 1, Cin, Cout], strides
    (stride, 1), given dy [B, T', W, Cout]: as stride-1 forward convolutions, one per phase of the stride.

    dx[m * s + r] = sum_q kernel[q * s + r]^T dy[m - q]: phase r is dy (zero-padded) convolved with the taps
    r, r + s, ... reversed in time, in and out swapped.
    """
    out_len = tf.shape(dy)[1]
    phases_len = (in_len + stride - 1) // stride
    phases = []
    for r in range(stride):
        taps = tf.reverse(tf.transpose(kernel[r::stride], [0, 1, 3, 2]), [0])  # [k_r, 1, Cout, Cin]
        if taps.shape[0] == 0:  # kernel shorter than the stride: these inputs are never read
            shape = tf.shape(dy)
            phases.append(tf.zeros(tf.stack([shape[0], phases_len, shape[2], kernel.shape[2]]), dy.dtype))
            continue
        padded = tf.pad(dy, [[0, 0], [taps.shape[0] - 1, phases_len - out_len], [0, 0], [0, 0]])
        phases.append(tf.nn.conv2d(padded, taps, 1, "VALID"))
    if stride == 1:
        return phases[0]
    dx = tf.stack(phases, axis=2)  # [B, T / s, s, W, Cin]
    shape = tf.shape(dx)
    return tf.reshape(dx, tf.stack([shape[0], phases_len * stride, shape[3], shape[4]]))[:, :in_len]


def time_conv(x, kernel, stride: int):
    """"valid" convolution along the time axis: x [B, T, W, Cin], kernel [k, 1, Cin, Cout], strides (stride, 1)
    -> [B, (T - k) // stride + 1, W, Cout].

    NOTE: the same as tf.nn.conv2d, but its input gradient runs as forward convolutions: TensorFlow's
    Conv2DBackpropInput on CPU is 2-5x slower than the forward convolution for the period discriminators' large
    strided layers (512 -> 1024 channels, kernel 5, stride 3, batch 4, forward + input gradient: 78 -> 39 ms;
    the MPD's forward + backward at batch 4: 1.40 -> 1.22 s).
    """
    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            dx = _time_conv_input_grad(dy, kernel, stride, tf.shape(x)[1])
            dk = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(kernel), out_backprop=dy,
                                                 strides=[1, stride, 1, 1], padding="VALID")
            return dx, dk

        return tf.nn.conv2d(x, kernel, [1, stride, 1, 1], "VALID"), grad

    return conv(x, kernel)


class _TorchConv:
    """Mixin: torch's explicit zero padding on the time axis, torch's default init, and ``apply_kernel`` so that
    a normalisation wrapper can run the convolution with a kernel it computed."""

    def _init_torch(self, kwargs: dict, pad) -> dict:
        kwargs.pop("padding", None)
        kwargs.setdefault("kernel_initializer", torch_kernel_initializer())
        self._torch_bias_init = "bias_initializer" not in kwargs
        self.pad = tuple(pad) if isinstance(pad, (list, tuple)) else (pad, pad)
        return kwargs

    def build(self, input_shape):
        if self._torch_bias_init:
            # torch's default bias init: U(+-1 / sqrt(fan_in)), fan_in as for the kernel.
            kernel_shape = self._kernel_shape(input_shape)
            bound = 1.0 / math.sqrt(math.prod(kernel_shape[:-1]))
            self.bias_initializer = keras.initializers.RandomUniform(-bound, bound)
        # Keras checks the output size of a "valid" convolution at build time; the time axis is padded later.
        super().build((input_shape[0], None, *input_shape[2:]))

    def compute_output_shape(self, input_shape):
        time = None if input_shape[1] is None else input_shape[1] + sum(self.pad)
        return super().compute_output_shape((input_shape[0], time, *input_shape[2:]))

    def _pad_time(self, inputs):
        if not any(self.pad):
            return inputs
        paddings = [[0, 0]] * len(inputs.shape)
        paddings[1] = list(self.pad)
        return ops.pad(inputs, paddings)

    def call(self, inputs):
        return self.apply_kernel(inputs, self.kernel)

    def _add_bias(self, outputs):
        return ops.add(outputs, self.bias) if self.use_bias else outputs

    def get_config(self):
        config = super().get_config()
        config.pop("padding", None)
        config["pad"] = list(self.pad)
        return config


@keras.saving.register_keras_serializable(PACKAGE)
class PaddedConv1D(_TorchConv, keras.layers.Conv1D):
    """Conv1D with torch's symmetric zero padding ``pad`` (int or (left, right)) instead of "same"/"valid".

    inputs [batch, time, in] -> [batch, (time + pads - dilation * (kernel - 1) - 1) // strides + 1, filters].
    Grouped convolutions (``groups``) run as one convolution per group.
    """

    def __init__(self, filters, kernel_size, strides=1, pad=0, **kwargs):
        kwargs = self._init_torch(kwargs, pad)
        super().__init__(filters, kernel_size, strides=strides, padding="valid", **kwargs)

    def _kernel_shape(self, input_shape):
        return (*self.kernel_size, input_shape[-1] // self.groups, self.filters)

    def _pads_same(self) -> bool:
        """True when ``pad`` is what "same" padding does (stride 1, pad = dilation * (kernel - 1) / 2 each side):
        the convolution then pads inside the kernel instead of copying the input (~6 % of the generator's time)."""
        total = self.dilation_rate[0] * (self.kernel_size[0] - 1)
        return self.strides[0] == 1 and total % 2 == 0 and self.pad == (total // 2, total // 2)

    def _dilation_runs_natively(self) -> bool:
        """A dilated layer for which one native dilated conv was measured faster than SpaceToBatch at inference."""
        return self.dilation_rate[0] > 1 and (self.kernel_size[0] <= NATIVE_DILATION_MAX_KERNEL
                                              or self.filters <= NATIVE_DILATION_MAX_CHANNELS)

    def call(self, inputs):
        return self.apply_kernel(inputs, self.kernel, native_dilation=True)

    def apply_kernel(self, inputs, kernel, native_dilation: bool = False):
        """``native_dilation``: run a dilated "same" convolution as one dilated Conv2D instead of TensorFlow's
        SpaceToBatch / convolution / BatchToSpace where that was measured faster (NATIVE_DILATION_MAX_KERNEL,
        NATIVE_DILATION_MAX_CHANNELS). The plain-kernel call (a folded generator: inference) does; the
        normalisation wrappers' training path keeps SpaceToBatch."""
        if self.groups == 1 and self._pads_same():
            if native_dilation and self._dilation_runs_natively():
                outputs = tf.nn.conv1d(inputs, ops.cast(kernel, inputs.dtype), 1, "SAME",
                                       dilations=self.dilation_rate[0])
                return self._add_bias(outputs)
            return self._add_bias(ops.conv(inputs, kernel, strides=1, padding="same",
                                           dilation_rate=self.dilation_rate))
        inputs = self._pad_time(inputs)
        if self.groups == 1:
            return self._add_bias(self.convolution_op(inputs, kernel))
        # NOTE: Keras runs grouped convolutions on CPU through XLA, whose gradient is ~70x slower than one plain
        # convolution per group (7.8 s vs 0.11 s for the MSD's 1024-channel layer); so we split the groups.
        # (time_conv's input gradient is slower than TensorFlow's for these narrow 41-tap groups.)
        pairs = zip(ops.split(inputs, self.groups, axis=-1), ops.split(kernel, self.groups, axis=-1))
        return self._add_bias(ops.concatenate([self.convolution_op(x, k) for x, k in pairs], axis=-1))


@keras.saving.register_keras_serializable(PACKAGE)
class PaddedConv2D(_TorchConv, keras.layers.Conv2D):
    """Conv2D with torch's zero padding on the first spatial (time) axis only: the original's period
    discriminator pads (2, 0). inputs [batch, time, period, in] -> [batch, time', period', filters]."""

    def __init__(self, filters, kernel_size, strides=1, pad=0, **kwargs):
        kwargs = self._init_torch(kwargs, pad)
        super().__init__(filters, kernel_size, strides=strides, padding="valid", **kwargs)

    def _kernel_shape(self, input_shape):
        return (*self.kernel_size, input_shape[-1] // self.groups, self.filters)

    def apply_kernel(self, inputs, kernel):
        # time_conv's gradient was measured faster on CPU only: GPUs keep their own (cuDNN) backward pass.
        if (self.strides[1] != 1 or self.kernel_size[1] != 1 or self.dilation_rate != (1, 1)
                or tf.config.list_logical_devices("GPU")):
            return self._add_bias(self.convolution_op(self._pad_time(inputs), kernel))
        inputs = self._pad_time(inputs)
        return self._add_bias(time_conv(inputs, ops.cast(kernel, inputs.dtype), self.strides[0]))


@keras.saving.register_keras_serializable(PACKAGE)
class CroppedConv1DTranspose(_TorchConv, keras.layers.Conv1DTranspose):
    """The original's ConvTranspose1d(k, stride u, padding p = (k - u) // 2), always giving time * u samples.

    inputs [batch, time, in] -> [batch, time * strides, filters]: the full transposed convolution
    ((time - 1) * u + k samples) cropped by ``pad`` on the left.
    NOTE: torch returns time * u + 1 samples when k - u is odd (the original's 16 kHz shape bug); we drop
    that extra last sample so that audio is always frames * hop_size long.
    """

    def __init__(self, filters, kernel_size, strides=1, pad=0, **kwargs):
        kwargs = self._init_torch(kwargs, pad)
        super().__init__(filters, kernel_size, strides=strides, padding="valid", **kwargs)

    def _kernel_shape(self, input_shape):
        return (*self.kernel_size, self.filters, input_shape[-1])

    def apply_kernel(self, inputs, kernel):
        stride, size = self.strides[0], self.kernel_size[0]
        shape = tf.shape(inputs)
        full = tf.stack([shape[0], (shape[1] - 1) * stride + size, self.filters])
        outputs = tf.nn.conv1d_transpose(inputs, ops.cast(kernel, inputs.dtype), full, stride, padding="VALID")
        outputs = outputs[:, self.pad[0]:self.pad[0] + shape[1] * stride]
        return self._add_bias(outputs)

    def compute_output_shape(self, input_shape):
        time = None if input_shape[1] is None else input_shape[1] * self.strides[0]
        return (input_shape[0], time, self.filters)


def _torch_order(kernel):
    """A Keras kernel [*spatial, in, out] (transposed conv: [*spatial, out, in]) in torch's axis order."""
    rank = len(kernel.shape)
    return ops.transpose(kernel, (rank - 1, rank - 2, *range(rank - 2)))


@keras.saving.register_keras_serializable(PACKAGE)
class WeightNorm(keras.layers.Wrapper):
    """torch's ``weight_norm``: kernel = g * v / ||v||, v being the wrapped layer's kernel variable.

    The norm runs over every kernel axis but the last, which is torch's dim 0 in both cases: the output channel
    of a convolution and, NOTE, the INPUT channel of a transposed convolution (torch's ConvTranspose1d weight is
    [in, out, k] and weight_norm uses dim=0), so g is per input channel there, as in the original.
    Like torch, g starts at ||v||. ``fold()`` writes the normalised kernel into v and drops g (torch's
    ``remove_weight_norm``); ``folded=True`` builds the plain layer directly.
    """

    def __init__(self, layer, folded: bool = False, **kwargs):
        super().__init__(layer, **kwargs)
        self.folded = folded

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        if not self.folded:
            v = self.layer.kernel
            self.g = self.add_weight(name="g", shape=(v.shape[-1],), initializer="ones")
            self.g.assign(self._norm(v))
        self.built = True

    @staticmethod
    def _norm(v):
        return ops.sqrt(ops.sum(ops.square(v), axis=tuple(range(len(v.shape) - 1))))

    def normalized_kernel(self):
        """The effective kernel g * v / ||v|| (v itself once folded)."""
        v = self.layer.kernel
        if self.folded:
            return v
        return v * (self.g / self._norm(v))

    def call(self, inputs):
        """inputs: one tensor, or a list of tensors that all go through the same kernel, computed once (its
        gradient then flows back through the normalisation once)."""
        if isinstance(inputs, (list, tuple)):
            kernel = self.layer.kernel if self.folded else self.normalized_kernel()
            return [self.layer.apply_kernel(x, kernel) for x in inputs]
        if self.folded:
            return self.layer(inputs)
        return self.layer.apply_kernel(inputs, self.normalized_kernel())

    def fold(self):
        """Replace (g, v) by the plain kernel they define (same outputs within float rounding)."""
        if self.folded:
            return
        if self.built:
            self.layer.kernel.assign(self.normalized_kernel())
            self._untrack_variable(self.g)
            # NOTE: not `del self.g`: Keras' Layer.__delattr__ also runs gc.collect(), ~0.2 s per layer.
            super(keras.layers.Layer, self).__delattr__("g")
        self.folded = True

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "folded": self.folded}


@keras.saving.register_keras_serializable(PACKAGE)
class SpectralNorm(keras.layers.Wrapper):
    """torch's ``spectral_norm`` (weight_orig, u, v; one power iteration per call in training).

    W is the kernel in torch's layout reshaped to [out, -1]; in training each call first updates
    v = normalize(W^T u), u = normalize(W v) (stored, no gradient through them), then every call uses
    kernel / sigma with sigma = u . (W v); at inference the stored u and v are used as they are.
    NOTE: keras.layers.SpectralNormalization overwrites the kernel with W / sigma in training and keeps no v,
    so gradients skip sigma and torch's u/v buffers cannot be loaded; hence this wrapper.
    NOTE: the original runs its discriminators once on real and once on generated audio, i.e. two power
    iterations per pass; so does a call on [real, generated] here.
    """

    def __init__(self, layer, eps: float = 1e-12, **kwargs):
        super().__init__(layer, **kwargs)
        self.eps = eps

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        shape = self.layer.kernel.shape
        rows = math.prod(shape[:-2]) * shape[-2]
        self.u = self.add_weight(name="u", shape=(shape[-1],), initializer="random_normal", trainable=False)
        self.v = self.add_weight(name="v", shape=(rows,), initializer="random_normal", trainable=False)
        self.u.assign(self._normalize(self.u))
        self.v.assign(self._normalize(self.v))
        self.built = True

    def _normalize(self, x):
        return x / ops.maximum(ops.sqrt(ops.sum(ops.square(x))), self.eps)

    def normalized_kernel(self, training=False):
        """kernel / sigma; in training after one power-iteration update of the stored u and v."""
        kernel = self.layer.kernel
        matrix = ops.reshape(_torch_order(kernel), (kernel.shape[-1], -1))
        u, v = self.u.value, self.v.value
        if training:
            frozen = ops.stop_gradient(matrix)
            v = self._normalize(ops.matmul(u, frozen))
            u = self._normalize(ops.matmul(frozen, v))
            self.u.assign(u)
            self.v.assign(v)
        sigma = ops.sum(u * ops.matmul(matrix, v))
        return kernel / sigma

    def call(self, inputs, training=None):
        """inputs: one tensor, or a list of them; NOTE: in training each one gets its own power iteration, as
        each of the original's calls does."""
        if isinstance(inputs, (list, tuple)):
            return [self.layer.apply_kernel(x, self.normalized_kernel(bool(training))) for x in inputs]
        return self.layer.apply_kernel(inputs, self.normalized_kernel(bool(training)))

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}


def track_layer_list(owner: keras.layers.Layer, name: str, layers: list) -> list:
    """Make a list of sub-layers visible to tf.train.Checkpoint; returns the list.

    NOTE: Keras 3 keeps list attributes in its own TrackedList, which TF's checkpoint graph does not follow
    (Keras 3.15 / TF 2.21: a Model holding [Dense, Dense] writes no variables at all). Each element is
    registered as a TF dependency named after the original's state-dict path ("ups_0", "convs1_2").
    """
    for i, layer in enumerate(layers):
        owner._track_trackable(layer, name=f"{name}_{i}", overwrite=True)
    return layers


def fold_weight_norms(layer: keras.layers.Layer) -> int:
    """Fold every WeightNorm found (by type) under ``layer``; returns how many were folded."""
    wrappers = [sub for sub in layer._flatten_layers(include_self=True) if isinstance(sub, WeightNorm)]
    for wrapper in wrappers:
        wrapper.fold()
    return sum(1 for _ in wrappers)


def _wn_conv(channels, kernel_size, dilation, folded):
    return WeightNorm(PaddedConv1D(channels, kernel_size, dilation_rate=dilation,
                                   pad=get_padding(kernel_size, dilation)), folded=folded)


@keras.saving.register_keras_serializable(PACKAGE)
class ResBlock1(keras.layers.Layer):
    """Three (leaky-ReLU, dilated conv, leaky-ReLU, conv) residual units. [batch, time, C] -> same shape."""

    def __init__(self, channels, kernel_size=3, dilation=(1, 3, 5), folded=False, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.kernel_size, self.dilation = channels, kernel_size, tuple(dilation)
        self.convs1 = [_wn_conv(channels, kernel_size, d, folded) for d in self.dilation]
        self.convs2 = [_wn_conv(channels, kernel_size, 1, folded) for _ in self.dilation]
        track_layer_list(self, "convs1", self.convs1)
        track_layer_list(self, "convs2", self.convs2)

    def call(self, x):
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = c1(ops.leaky_relu(x, LRELU_SLOPE))
            xt = c2(ops.leaky_relu(xt, LRELU_SLOPE))
            x = xt + x
        return x

    def get_config(self):
        folded = all(c.folded for c in self.convs1 + self.convs2)
        return {**super().get_config(), "channels": self.channels, "kernel_size": self.kernel_size,
                "dilation": list(self.dilation), "folded": folded}


@keras.saving.register_keras_serializable(PACKAGE)
class ResBlock2(keras.layers.Layer):
    """Two (leaky-ReLU, dilated conv) residual units. [batch, time, C] -> same shape."""

    def __init__(self, channels, kernel_size=3, dilation=(1, 3), folded=False, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.kernel_size, self.dilation = channels, kernel_size, tuple(dilation)
        self.convs = [_wn_conv(channels, kernel_size, d, folded) for d in self.dilation]
        track_layer_list(self, "convs", self.convs)

    def call(self, x):
        for c in self.convs:
            x = c(ops.leaky_relu(x, LRELU_SLOPE)) + x
        return x

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "kernel_size": self.kernel_size,
                "dilation": list(self.dilation), "folded": all(c.folded for c in self.convs)}
