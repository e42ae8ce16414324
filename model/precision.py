"""Inference precision: the folded float32 generator (the default, and the reference for parity), or a bfloat16
copy of it whose audio is still float32.

The bfloat16 copy keeps bfloat16 weights and computes in bfloat16 (Keras' "bfloat16" dtype policy on every
layer); on a CPU with AVX512-BF16 (or AMX) TensorFlow runs its convolutions through oneDNN's bf16 kernels
(``brg_conv_fwd:avx512_core_bf16`` in ONEDNN_VERBOSE=1), accumulating in float32. Two choices, measured with
benchmarks/bench_inference.py:
- bfloat16 weights rather than float32 weights cast on every call (Keras' "mixed_bfloat16"): the same numbers
  (each kernel is rounded to bfloat16 either way) and half the size of a SavedModel. Neither is faster
  everywhere: real-time factor V1 12.5 vs 11.7, V2 79 vs 97, V3 80 vs 94 (one quiet run; see the README).
- ``conv_post`` and the final tanh stay float32: rounding the audio itself to bfloat16's 8 significant bits
  adds audible noise (about 3 dB more error against the float32 audio on the demo checkpoint), while this
  one-channel layer is ~1 % of V1's time.
The input mel is float32 and cast by the first layer; the output is float32 (the generator casts it).
"""

from __future__ import annotations

from model.compat import sublayers
from model.generator import Generator, fold_for_inference
from model.options import INFERENCE_PRECISIONS

# Keras dtype policies a bfloat16 copy may be built with: "mixed_bfloat16" (float32 weights, cast per call) is
# kept for the benchmark that compares it.
BFLOAT16_POLICIES = ("bfloat16", "mixed_bfloat16")


def bfloat16_generator(generator: Generator, policy: str = "bfloat16") -> Generator:
    """A folded copy of ``generator`` computing in bfloat16 under the Keras dtype ``policy`` ("bfloat16": bf16
    weights; "mixed_bfloat16": float32 weights), its ``conv_post`` and tanh in float32.

    mel float32 [batch, frames, num_mels] -> audio float32 [batch, frames * hop_size, 1]. ``generator`` is
    folded (its weight norm removed) and otherwise left as it is.
    """
    if policy not in BFLOAT16_POLICIES:
        raise ValueError(f"policy {policy!r} is not one of {', '.join(BFLOAT16_POLICIES)}")
    fold_for_inference(generator)
    copy = Generator(generator.cfg, weight_norm=False, name=f"{generator.name}_{policy}")
    for layer in sublayers(copy):  # before build: the variables are created in the policy's dtype
        layer.dtype_policy = policy
    for layer in sublayers(copy.conv_post):
        layer.dtype_policy = "float32"
    copy.build((None, None, generator.cfg.num_mels))
    ours, theirs = copy.weights, generator.weights
    if [tuple(w.shape) for w in ours] != [tuple(w.shape) for w in theirs]:
        raise ValueError("the bfloat16 copy's weights do not line up with the generator's")
    copy.set_weights([w.numpy() for w in theirs])  # rounded to bfloat16 on assignment
    return copy


def inference_generator(generator: Generator, precision: str = "float32") -> Generator:
    """The generator to run at ``precision``: ``generator`` itself, folded, for float32; its bfloat16 copy
    (:func:`bfloat16_generator`) for bfloat16. Either returns float32 audio."""
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(INFERENCE_PRECISIONS)}")
    fold_for_inference(generator)
    return generator if precision == "float32" else bfloat16_generator(generator)
