"""The HiFi-GAN generator: log-mel [batch, frames, num_mels] -> waveform [batch, frames * hop_size, 1]."""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from model.compat import sublayers
from model.convs import PACKAGE, CroppedConv1DTranspose, PaddedConv1D
from model.layers import LRELU_SLOPE, ResBlock1, ResBlock2, WeightNorm, fold_weight_norms, track_layer_list
from core.config import GeneratorConfig


def generator_config_to_dict(cfg: GeneratorConfig) -> dict:
    """JSON-friendly dict of a GeneratorConfig (lists for tuples)."""
    return {k: [list(d) for d in v] if k == "resblock_dilation_sizes" else list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(cfg).items()}


@keras.saving.register_keras_serializable(PACKAGE)
class Generator(keras.Model):
    """The original's Generator with its module names (``conv_pre``, ``ups``, ``resblocks``, ``conv_post``).

    ``resblocks[i * num_kernels + j]`` follows upsampling layer i with kernel size j. Every convolution is
    weight-normalised (``weight_norm=False`` builds the folded, inference form directly).
    NOTE: the original hard-codes 80 input channels; we take ``cfg.num_mels``.
    """

    def __init__(self, cfg: GeneratorConfig, weight_norm: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        folded = not weight_norm
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        channels = cfg.upsample_initial_channel
        # NOTE: the original applies init_weights (N(0, 0.01)) to ups, resblocks and conv_post AFTER wrapping
        # them in weight_norm, where it only rewrites the derived `weight` tensor that the next forward
        # recomputes from g and v: it has no effect, and every layer starts from torch's default init (checked
        # with torch 2.13). We reproduce that effective init (see convs.torch_kernel_initializer).
        self.conv_pre = WeightNorm(PaddedConv1D(channels, 7, pad=3), folded=folded)
        resblock = ResBlock1 if cfg.resblock == "1" else ResBlock2
        self.ups, self.resblocks = [], []
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            channels = cfg.upsample_initial_channel // (2 ** (i + 1))
            self.ups.append(WeightNorm(CroppedConv1DTranspose(channels, kernel, strides=rate,
                                                              pad=(kernel - rate) // 2), folded=folded))
            for size, dilation in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(resblock(channels, size, dilation, folded=folded))
        self.conv_post = WeightNorm(PaddedConv1D(1, 7, pad=3), folded=folded)
        track_layer_list(self, "ups", self.ups)
        track_layer_list(self, "resblocks", self.resblocks)

    def call(self, mel):
        """mel float [batch, frames, num_mels] -> audio [batch, frames * hop_size, 1] in (-1, 1)."""
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(ops.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs + block(x)
            x = xs / self.num_kernels
        # NOTE: the original's last leaky ReLU uses torch's default slope 0.01, not LRELU_SLOPE.
        x = self.conv_post(ops.leaky_relu(x, 0.01))
        return ops.cast(ops.tanh(x), "float32")  # float32 audio under mixed precision too

    def build(self, input_shape=None):
        if input_shape is None:
            input_shape = (None, None, self.cfg.num_mels)
        self.call(keras.KerasTensor(input_shape))
        self.built = True

    @property
    def weight_norm(self) -> bool:
        return not all(layer.folded for layer in sublayers(self) if isinstance(layer, WeightNorm))

    def remove_weight_norm(self) -> None:
        """Fold every weight norm into a plain kernel for inference (torch's ``remove_weight_norm``)."""
        fold_weight_norms(self)

    fold_weight_norm = remove_weight_norm

    def get_config(self):
        return {**super().get_config(), "cfg": generator_config_to_dict(self.cfg),
                "weight_norm": self.weight_norm}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        cfg = config.pop("cfg")
        return cls(cfg if isinstance(cfg, GeneratorConfig) else GeneratorConfig.from_raw(cfg), **config)


def fold_for_inference(generator) -> None:
    """Folds a Generator's weight norms into plain kernels (a no-op once folded); any other callable, such as a
    model that has none, is left as it is."""
    if getattr(generator, "weight_norm", False):
        generator.remove_weight_norm()
