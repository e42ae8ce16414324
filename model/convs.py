"""Torch-style convolutions in Keras 3, channels-last: torch's explicit zero padding and default init, the
transposed convolution cropped like the original's, and a time-axis convolution with a faster input gradient.

Every tensor is [batch, time, channels] (Conv2D: [batch, time, period, channels]). Kernels are in Keras layout:
Conv1D [kernel, in / groups, out], Conv2D [kh, kw, in, out], Conv1DTranspose [kernel, out, in].
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

PACKAGE = "hifigan"  # the Keras serialisation package of every layer and model of ours

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

    def _kernel_shape(self, input_shape):
        """The kernel's shape for ``input_shape`` (Conv1D / Conv2D layout; the transposed conv overrides it)."""
        return (*self.kernel_size, input_shape[-1] // self.groups, self.filters)

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

    def apply_kernel(self, inputs, kernel):
        # time_conv's gradient was measured faster on CPU only: GPUs keep their own (cuDNN) backward pass.
        inputs = self._pad_time(inputs)
        if (self.strides[1] != 1 or self.kernel_size[1] != 1 or self.dilation_rate != (1, 1)
                or tf.config.list_logical_devices("GPU")):
            return self._add_bias(self.convolution_op(inputs, kernel))
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
