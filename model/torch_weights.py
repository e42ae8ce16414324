"""Loading the original's PyTorch state dicts (given as {name: np.ndarray}) into our Keras modules.

Keys are the original's module paths (``conv_pre.weight_g``, ``ups.0.weight_v``, ``resblocks.3.convs1.2.bias``,
``discriminators.0.convs.0.weight_orig`` ...). Weight-normalised layers take ``weight_g`` + ``weight_v`` or a
plain ``weight`` (a generator saved after remove_weight_norm); spectral-normalised ones take ``weight_orig``,
``weight_u`` and ``weight_v``. Anything missing, left over or of the wrong shape raises a one-line ValueError
naming the key, before any variable is touched.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

from model.layers import SpectralNorm, WeightNorm

# torch.nn.utils.parametrizations.weight_norm (newer torch) names g and v differently; same tensors.
_PARAMETRIZATION_ALIASES = {".parametrizations.weight.original0": ".weight_g",
                            ".parametrizations.weight.original1": ".weight_v"}


def torch_to_keras_kernel(weight: np.ndarray) -> np.ndarray:
    """torch [out, in, *spatial] (ConvTranspose: [in, out, *spatial]) -> Keras [*spatial, in, out] / [.., out, in]."""
    rank = weight.ndim
    return np.transpose(weight, (*range(2, rank), 1, 0))


def keras_to_torch_shape(shape) -> tuple[int, ...]:
    """The torch weight shape matching a Keras kernel shape."""
    shape = tuple(shape)
    return (shape[-1], shape[-2], *shape[:-2])


def _generator_layers(generator) -> Iterator[tuple[str, object]]:
    yield "conv_pre", generator.conv_pre
    for i, up in enumerate(generator.ups):
        yield f"ups.{i}", up
    for i, block in enumerate(generator.resblocks):
        for group in ("convs1", "convs2", "convs"):
            for j, conv in enumerate(getattr(block, group, [])):
                yield f"resblocks.{i}.{group}.{j}", conv
    yield "conv_post", generator.conv_post


def _discriminator_layers(model) -> Iterator[tuple[str, object]]:
    for i, disc in enumerate(model.discriminators):
        for j, conv in enumerate(disc.convs):
            yield f"discriminators.{i}.convs.{j}", conv
        yield f"discriminators.{i}.conv_post", disc.conv_post


class _StateReader:
    """Hands out state-dict entries by key, checking presence and shape, and remembers what was used."""

    def __init__(self, state: Mapping[str, np.ndarray]):
        self.state = {}
        for key, value in state.items():
            for old, new in _PARAMETRIZATION_ALIASES.items():
                key = key.replace(old, new)
            self.state[key] = np.asarray(value)
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.state

    def take(self, key: str, shape) -> np.ndarray:
        if key not in self.state:
            raise ValueError(f"state dict: missing key '{key}'")
        value = self.state[key]
        if value.size != int(np.prod(shape)) or (value.ndim == len(shape) and value.shape != tuple(shape)):
            raise ValueError(f"state dict: key '{key}' has shape {list(value.shape)}, expected {list(shape)}")
        self.used.add(key)
        return value.reshape(shape).astype(np.float32)

    def check_all_used(self) -> None:
        unexpected = sorted(set(self.state) - self.used)
        if unexpected:
            raise ValueError(f"state dict: unexpected key '{unexpected[0]}' ({len(unexpected)} unexpected in all)")


def _kernel_norm(kernel: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(np.square(kernel, dtype=np.float64), axis=tuple(range(kernel.ndim - 1))))


def _plan(layer, prefix: str, reader: _StateReader) -> list[tuple[object, np.ndarray]]:
    """(variable, value) assignments for one normalised conv layer."""
    conv = layer.layer
    kernel_shape = tuple(conv.kernel.shape)
    torch_shape = keras_to_torch_shape(kernel_shape)
    plan = [(conv.bias, reader.take(f"{prefix}.bias", tuple(conv.bias.shape)))]
    if isinstance(layer, SpectralNorm):
        weight = reader.take(f"{prefix}.weight_orig", torch_shape)
        plan += [(conv.kernel, torch_to_keras_kernel(weight)),
                 (layer.u, reader.take(f"{prefix}.weight_u", tuple(layer.u.shape))),
                 (layer.v, reader.take(f"{prefix}.weight_v", tuple(layer.v.shape)))]
    elif isinstance(layer, WeightNorm):
        if reader.has(f"{prefix}.weight") and not reader.has(f"{prefix}.weight_v"):
            kernel = torch_to_keras_kernel(reader.take(f"{prefix}.weight", torch_shape))
            g = _kernel_norm(kernel)
        else:
            kernel = torch_to_keras_kernel(reader.take(f"{prefix}.weight_v", torch_shape))
            g = reader.take(f"{prefix}.weight_g", (kernel_shape[-1],)).astype(np.float64)
        if layer.folded:
            plan.append((conv.kernel, (kernel * (g / _kernel_norm(kernel))).astype(np.float32)))
        else:
            plan += [(conv.kernel, kernel), (layer.g, g.astype(np.float32))]
    else:
        raise TypeError(f"{prefix}: {type(layer).__name__} is not a normalised convolution")
    return plan


def _load(model, layers: Iterator[tuple[str, object]], state: Mapping[str, np.ndarray]) -> None:
    if not model.built:
        model.build()
    reader = _StateReader(state)
    plan = [item for prefix, layer in layers for item in _plan(layer, prefix, reader)]
    reader.check_all_used()
    for variable, value in plan:
        variable.assign(value)


def load_generator_state(generator, state: Mapping[str, np.ndarray]) -> None:
    """Load the original Generator's state dict (weight-normalised or already folded) into ``generator``."""
    _load(generator, _generator_layers(generator), state)


def load_mpd_state(mpd, state: Mapping[str, np.ndarray]) -> None:
    """Load the original MultiPeriodDiscriminator's state dict (``discriminators.{i}.convs.{j}...``)."""
    _load(mpd, _discriminator_layers(mpd), state)


def load_msd_state(msd, state: Mapping[str, np.ndarray]) -> None:
    """Load the original MultiScaleDiscriminator's state dict (scale 0 spectral-normalised)."""
    _load(msd, _discriminator_layers(msd), state)


def _torch_state(layers: Iterator[tuple[str, object]]) -> dict[str, np.ndarray]:
    state = {}
    for prefix, layer in layers:
        conv = layer.layer
        kernel = conv.kernel.numpy()
        weight = np.transpose(kernel, (kernel.ndim - 1, kernel.ndim - 2, *range(kernel.ndim - 2)))
        if isinstance(layer, SpectralNorm):
            state.update({f"{prefix}.weight_orig": weight, f"{prefix}.weight_u": layer.u.numpy(),
                          f"{prefix}.weight_v": layer.v.numpy()})
        elif layer.folded:
            state[f"{prefix}.weight"] = weight
        else:
            state[f"{prefix}.weight_g"] = layer.g.numpy().reshape(-1, *[1] * (weight.ndim - 1))
            state[f"{prefix}.weight_v"] = weight
        state[f"{prefix}.bias"] = conv.bias.numpy()
    return state


def generator_torch_state(generator) -> dict[str, np.ndarray]:
    """The inverse of ``load_generator_state``: ``generator``'s weights as the original's state dict (torch
    names and layouts)."""
    return _torch_state(_generator_layers(generator))


def discriminator_torch_state(model) -> dict[str, np.ndarray]:
    """The inverse of ``load_mpd_state`` / ``load_msd_state`` for a MultiPeriod- or MultiScaleDiscriminator."""
    return _torch_state(_discriminator_layers(model))
