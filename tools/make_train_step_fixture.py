"""Regenerate tests/fixtures/train_step_parity.npz and train_step_parity_small.npz: two steps of the original's
training loop (jik876/hifi-gan).

Run with a Python that has torch, librosa and scipy (not the project's venv), from the repo root, after
tools/make_fixtures.py (the batches are cut from the speech clip of its mel_parity.npz):

    /work/torchvenv/bin/python -m tools.make_train_step_fixture --reference_repo /work/ref --out tests/fixtures

The original's Generator (v1 audio, a tiny generator; torch's default init from a fixed seed), its full
MultiPeriodDiscriminator and MultiScaleDiscriminator (``synthetic_state`` weights, the scheme of
tools/make_fixtures.py: 70 M parameters cannot be stored, the tests regenerate them) and its two AdamW
optimisers, built as its train.py builds them (its ExponentialLR schedulers only act between epochs), run
two iterations of its train.py loop body (tools/reference.py) on two batches of speech (x and y_mel from its
meldataset.mel_spectrogram). Stored: the config, the initial generator, the
batches, every loss of both steps, and after step 2 the whole generator, every discriminator tensor of at most
``FULL_SIZE`` elements (biases, weight_g, the first and last convolutions), spectral norm's u and v, and of the
larger ones ``sample_points`` elements plus the L2 norm of their total update; and the reference's commit and
the torch version.

train_step_parity_small.npz is the same with 512-sample segments and the MPD's period-2 discriminator only (the
original's DiscriminatorP(2); our config's ``mpd_periods``): a step's compiled graph a quarter smaller, for the
tests of the compiled, distributed, bfloat16 and XLA paths, which each trace (or compile) it.

The original runs as it is: each sub-discriminator is called on real, then on generated audio, so MSD's
spectral-normalised first scale does two power iterations per pass, as our trainer's separate calls do.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import numpy as np

from tools import reference
from tools.make_fixtures import SCHEME, sample_points, synthetic_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/v1.json's audio and optimiser with a tiny generator (hop 256 = 8 * 8 * 4) and short segments.
OVERRIDES = dict(batch_size=2, segment_size=1024, upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8],
                 upsample_initial_channel=16, resblock="1", resblock_kernel_sizes=[3, 7],
                 resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]])
# name -> the keys of configs/v1.json it overrides
FIXTURES = {"train_step_parity.npz": OVERRIDES,
            "train_step_parity_small.npz": {**OVERRIDES, "segment_size": 512, "mpd_periods": [2]}}
STEPS = 2
FULL_SIZE = 4096  # discriminator tensors up to this size are stored whole after the steps
SEED = 1234


def _segments(speech_int16: np.ndarray, h) -> np.ndarray:
    """[STEPS * batch_size, segment_size] float32 cuts of the speech, scaled as the original's MelDataset does
    (int16 / 32768, peak-normalised to 0.95)."""
    from librosa.util import normalize

    audio = normalize(speech_int16 / 32768.0) * 0.95
    count = STEPS * h.batch_size
    starts = np.linspace(2000, audio.size - h.segment_size - 2000, count).astype(np.int64)
    return np.stack([audio[s:s + h.segment_size] for s in starts]).astype(np.float32)


def make_train_step_fixture(ref: reference.Reference, speech_int16: np.ndarray,
                            overrides: dict = OVERRIDES) -> dict[str, np.ndarray]:
    import torch

    with open(os.path.join(ROOT, "configs", "v1.json"), encoding="utf-8") as f:
        raw = {**json.load(f), **overrides}
    h = ref.hparams(raw)
    torch.manual_seed(SEED)
    nets = reference.build_training(ref, h)
    generator, mpd, msd = nets.generator, nets.mpd, nets.msd
    out = {"config": np.asarray(json.dumps(raw)), "scheme": np.asarray(SCHEME), **ref.provenance_arrays()}
    for name, net in (("mpd", mpd), ("msd", msd)):
        shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
        reference.load_numpy_state(net, synthetic_state(shapes))
        out[f"{name}/shapes"] = np.asarray(json.dumps(shapes))
    for key, value in reference.numpy_state(generator).items():
        out[f"initial/generator/{key}"] = value
    initial = {"mpd": reference.numpy_state(mpd), "msd": reference.numpy_state(msd)}

    audio, mel_spectrogram = _segments(speech_int16, h), ref.meldataset.mel_spectrogram
    for step in range(STEPS):
        y = torch.from_numpy(audio[step * h.batch_size:(step + 1) * h.batch_size])
        # The original's MelDataset (not fine-tuning): both mels from the segment itself.
        x = mel_spectrogram(y, h.n_fft, h.num_mels, h.sampling_rate, h.hop_size, h.win_size, h.fmin, h.fmax)
        y_mel = mel_spectrogram(y, h.n_fft, h.num_mels, h.sampling_rate, h.hop_size, h.win_size, h.fmin,
                                h.fmax_for_loss)
        out[f"step{step}/audio"] = y.numpy()
        out[f"step{step}/mel"] = x.transpose(1, 2).numpy().astype(np.float32)
        out[f"step{step}/mel_loss"] = y_mel.transpose(1, 2).numpy().astype(np.float32)
        losses = {k: v.item() for k, v in reference.train_step(ref, h, nets, x, y, y_mel).items()}
        logging.info("step %d: %s", step, ", ".join(f"{k} {v:.6f}" for k, v in losses.items()))
        for key, value in losses.items():
            out[f"step{step}/{key}"] = np.float64(value)

    for key, value in reference.numpy_state(generator).items():
        out[f"after/generator/{key}"] = value
    for name, net in (("mpd", mpd), ("msd", msd)):
        state = reference.numpy_state(net)
        for key, value in state.items():
            prefix, _, leaf = key.rpartition(".")
            if value.size <= FULL_SIZE or (leaf in ("weight_u", "weight_v") and f"{prefix}.weight_orig" in state):
                out[f"after/{name}/{key}"] = value
            else:
                flat = value.reshape(-1)
                out[f"after/{name}/{key}/sample"] = flat[sample_points(flat.size)]
                out[f"after/{name}/{key}/update_norm"] = np.float64(
                    np.linalg.norm(flat.astype(np.float64) - initial[name][key].reshape(-1)))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference_repo", required=True, help="checkout of github.com/jik876/hifi-gan")
    parser.add_argument("--out", default="tests/fixtures",
                        help="fixtures folder: reads its mel_parity.npz, writes the FIXTURES")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ref = reference.load(args.reference_repo)
    with np.load(os.path.join(args.out, "mel_parity.npz")) as data:
        speech = data["speech_int16"]
    for name, overrides in FIXTURES.items():
        path = os.path.join(args.out, name)
        np.savez_compressed(path, **make_train_step_fixture(ref, speech, overrides))
        logging.info("wrote %s (%d bytes)", path, os.path.getsize(path))


if __name__ == "__main__":
    main()
