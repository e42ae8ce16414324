"""Building blocks of HiFi-GAN in Keras 3, channels-last: weight and spectral normalisation wrappers (applied
by type to the torch-style convolutions of model/convs.py) and the generator's two residual block types.

Every tensor is [batch, time, channels]. Kernels are in Keras layout (see model/convs.py).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from model.compat import delete_attribute_without_gc, sublayers, track_child, untrack_variable
from model.convs import PACKAGE, PaddedConv1D, get_padding

LRELU_SLOPE = 0.1


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
            untrack_variable(self, self.g)
            # NOTE: not `del self.g`: Keras' Layer.__delattr__ also runs gc.collect(), ~0.2 s per layer.
            delete_attribute_without_gc(self, "g")
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
        track_child(owner, layer, f"{name}_{i}")
    return layers


def fold_weight_norms(layer: keras.layers.Layer) -> int:
    """Fold every WeightNorm found (by type) under ``layer``; returns how many were folded."""
    wrappers = [sub for sub in sublayers(layer) if isinstance(sub, WeightNorm)]
    for wrapper in wrappers:
        wrapper.fold()
    return len(wrappers)


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
