"""Regenerate the parity fixtures (tests/fixtures/*.npz) from a checkout of the original jik876/hifi-gan.

Run with a Python that has torch, librosa and scipy (not the project's venv), from the repo root:

    python -m tools.make_fixtures --reference_repo /work/ref

Writes three small files:
  mel_parity.npz     an espeak-ng speech clip (int16) and its silence-padded copy through the original's
                     ``mel_spectrogram`` for V1 (fmax 8000 and None) and a 16 kHz config with win_size < n_fft;
  model_parity.npz   tiny generators (resblock "1", "2", and an odd kernel - rate upsampler) and the full MPD and
                     MSD on short audio: outputs and feature-map statistics of the original with weights from
                     ``synthetic_state`` (the names and shapes are stored, not the weights);
  loss_parity.npz    the original's discriminator_loss, generator_loss and feature_loss on small random inputs.

Each also holds the reference's commit and the torch version (tools/reference.py). This file imports nothing of
the toolkit and no torch at module level, so the tests import ``synthetic_state`` from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import tempfile
import zlib

import numpy as np

from tools import reference

SCHEME = ("synthetic_state v1: per key rng = np.random.default_rng(zlib.crc32(key)); weight_g ~ U(0.5, 1.5) "
          "(x0.1 for conv_post); bias ~ N(0, 0.05); spectral weight_u / weight_v = 30 power iterations on "
          "weight_orig.reshape(out, -1) (0 for the training-mode check) from normalised N(0, 1) draws of their own "
          "key's rng; anything else ~ N(0, 0.02)")
SPEECH_TEXT = "Printing, in the only sense."
MEL_CONFIGS = {
    "v1": dict(sampling_rate=22050, n_fft=1024, hop_size=256, win_size=1024, num_mels=80, fmin=0.0, fmax=8000.0,
               fmax_for_loss=None),
    "small": dict(sampling_rate=16000, n_fft=512, hop_size=128, win_size=400, num_mels=64, fmin=50.0,
                  fmax=7000.0, fmax_for_loss=None),
}
GENERATOR_CONFIGS = {
    "resblock1": dict(resblock="1", upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8],
                      upsample_initial_channel=32, resblock_kernel_sizes=[3, 7],
                      resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]]),
    "resblock2": dict(resblock="2", upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8],
                      upsample_initial_channel=32, resblock_kernel_sizes=[3, 5],
                      resblock_dilation_sizes=[[1, 2], [2, 6]]),
    # k - u = 1 in the last upsampler: the original gives one sample more than frames * hop_size.
    "odd": dict(resblock="1", upsample_rates=[4, 4], upsample_kernel_sizes=[8, 5],
                upsample_initial_channel=32, resblock_kernel_sizes=[3, 7],
                resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]]),
}
NUM_MELS = 80  # NOTE: the original Generator hard-codes 80 input channels.
FRAMES, BATCH, DISC_SAMPLES = 12, 2, 1021
NUM_SAMPLED = 64


def _rng(key: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(key.encode("utf-8")))


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / max(np.linalg.norm(x), 1e-12)


def synthetic_state(shapes: dict[str, list[int]], power_iterations: int = 30) -> dict[str, np.ndarray]:
    """Deterministic float32 weights for a state dict's keys and shapes (the scheme in ``SCHEME``).

    ``power_iterations=0`` leaves spectral norm's u and v at their random starting points.
    """
    state = {}
    for key, shape in shapes.items():
        prefix, _, leaf = key.rpartition(".")
        rng = _rng(key)
        if leaf == "weight_g":
            state[key] = rng.uniform(0.5, 1.5, shape) * (0.1 if prefix == "conv_post" else 1.0)
        elif leaf == "bias":
            state[key] = rng.normal(0.0, 0.05, shape)
        elif leaf in ("weight_u", "weight_v") and f"{prefix}.weight_orig" in shapes:
            continue
        else:
            state[key] = rng.normal(0.0, 0.02, shape)
    for key in shapes:
        prefix, _, leaf = key.rpartition(".")
        if leaf == "weight_orig":
            matrix = state[key].reshape(shapes[key][0], -1)
            u = _normalize(_rng(f"{prefix}.weight_u").normal(size=matrix.shape[0]))
            v = _normalize(_rng(f"{prefix}.weight_v").normal(size=matrix.shape[1]))
            for _ in range(power_iterations):
                v = _normalize(matrix.T @ u)
                u = _normalize(matrix @ v)
            state[f"{prefix}.weight_u"], state[f"{prefix}.weight_v"] = u, v
    return {key: np.asarray(value, dtype=np.float32) for key, value in state.items()}


def sample_points(size: int) -> np.ndarray:
    """Flat indices at which feature maps are compared value by value."""
    return np.linspace(0, size - 1, NUM_SAMPLED).astype(np.int64)


def summarize(array: np.ndarray) -> dict[str, np.ndarray]:
    """A channels-last feature map as shape, (mean, mean |x|, std) and NUM_SAMPLED values."""
    flat = array.reshape(-1).astype(np.float64)
    return {"shape": np.asarray(array.shape, np.int64),
            "stats": np.asarray([flat.mean(), np.abs(flat).mean(), flat.std()], np.float64),
            "sample": flat[sample_points(flat.size)].astype(np.float32)}


def _speech_int16(max_seconds: float = 1.5) -> np.ndarray:
    from scipy.io import wavfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "speech.wav")
        subprocess.run(["espeak-ng", "-w", path, SPEECH_TEXT], check=True, capture_output=True)
        rate, audio = wavfile.read(path)
    if rate != 22050 or audio.dtype != np.int16:
        raise RuntimeError(f"espeak-ng gave {rate} Hz {audio.dtype}, expected 22050 Hz int16")
    voiced = np.flatnonzero(np.abs(audio) > 100)
    return audio[voiced[0]:voiced[0] + int(max_seconds * rate)]


def make_mel_fixture(meldataset) -> dict[str, np.ndarray]:
    import torch
    from librosa.util import normalize

    speech = _speech_int16()
    clips = {"speech": speech, "padded": np.pad(speech, (6000, 9000))}
    out = {"speech_int16": speech, "pad_left": np.int64(6000), "pad_right": np.int64(9000),
           "configs": np.asarray(json.dumps(MEL_CONFIGS))}
    for clip_name, clip in clips.items():
        # The original's dataset preparation: int16 / 32768, then peak-normalise to 0.95.
        audio = torch.FloatTensor(normalize(clip / 32768.0) * 0.95).unsqueeze(0)
        for cfg_name, c in MEL_CONFIGS.items():
            for kind, fmax in (("mel", c["fmax"]), ("mel_loss", c["fmax_for_loss"])):
                mel = meldataset.mel_spectrogram(audio, c["n_fft"], c["num_mels"], c["sampling_rate"],
                                                 c["hop_size"], c["win_size"], c["fmin"], fmax)
                out[f"{cfg_name}/{clip_name}/{kind}"] = mel[0].T.numpy().astype(np.float32)
    return out


def _channels_last(x):
    x = x.detach().numpy()
    return np.moveaxis(x, 1, -1)


def _load_synthetic(module) -> dict[str, list[int]]:
    import torch

    shapes = {key: list(value.shape) for key, value in module.state_dict().items()}
    module.load_state_dict({k: torch.from_numpy(v) for k, v in synthetic_state(shapes).items()})
    return shapes


def _store_disc(out, name, logits, fmaps):
    for i, (score, fmap) in enumerate(zip(logits, fmaps)):
        out[f"{name}/{i}/logits"] = score.detach().numpy().astype(np.float32)
        for j, layer in enumerate(fmap):
            for stat, value in summarize(_channels_last(layer)).items():
                out[f"{name}/{i}/fmap/{j}/{stat}"] = value


def make_model_fixture(ref: reference.Reference) -> dict[str, np.ndarray]:
    import torch

    models = ref.models

    torch.set_grad_enabled(False)
    rng = np.random.default_rng(1234)
    mel = rng.normal(-4.0, 1.5, (BATCH, FRAMES, NUM_MELS)).astype(np.float32)
    audio = (0.5 * np.sin(np.arange(DISC_SAMPLES) * 0.05 * np.arange(1, BATCH + 1)[:, None])
             + 0.1 * rng.normal(size=(BATCH, DISC_SAMPLES))).astype(np.float32)
    out = {"scheme": np.asarray(SCHEME), "mel": mel, "audio": audio,
           "generator_configs": np.asarray(json.dumps(GENERATOR_CONFIGS))}
    for name, cfg in GENERATOR_CONFIGS.items():
        generator = models.Generator(ref.hparams(cfg)).eval()
        out[f"{name}/shapes"] = np.asarray(json.dumps(_load_synthetic(generator)))
        out[f"{name}/audio"] = _channels_last(generator(torch.from_numpy(mel).transpose(1, 2)))
        logging.info("generator %s: output %s, std %.3f", name, out[f"{name}/audio"].shape,
                     out[f"{name}/audio"].std())
    signal = torch.from_numpy(audio).unsqueeze(1)
    msd = models.MultiScaleDiscriminator()
    for name, module in (("mpd", models.MultiPeriodDiscriminator()), ("msd", msd)):
        module.eval()
        shapes = _load_synthetic(module)
        out[f"{name}/shapes"] = np.asarray(json.dumps(shapes))
        logits, _, fmaps, _ = module(signal, signal)
        _store_disc(out, name, logits, fmaps)
    # Training mode of the spectral-normalised scale from unconverged u / v: one power iteration changes them.
    msd.load_state_dict({k: torch.from_numpy(v) for k, v in synthetic_state(shapes, power_iterations=0).items()})
    scale0 = msd.discriminators[0].train()
    logits, _ = scale0(signal)
    out["msd/train/logits"] = logits.numpy().astype(np.float32)
    for j, conv in enumerate([*scale0.convs, scale0.conv_post]):
        key = "conv_post" if j == len(scale0.convs) else f"convs.{j}"
        out[f"msd/train/{key}/weight_u"] = conv.weight_u.numpy().astype(np.float32)
        out[f"msd/train/{key}/weight_v"] = conv.weight_v.numpy().astype(np.float32)
    return out


def make_loss_fixture(models) -> dict[str, np.ndarray]:
    import torch

    rng = np.random.default_rng(99)
    shapes = [(3, 7), (3, 5), (3, 11)]
    real = [rng.normal(0.5, 0.5, s).astype(np.float32) for s in shapes]
    fake = [rng.normal(-0.2, 0.7, s).astype(np.float32) for s in shapes]
    fmap_shapes = [[(3, 9, 4), (3, 5, 2)], [(3, 6, 8)]]
    fmap_r = [[rng.normal(size=s).astype(np.float32) for s in group] for group in fmap_shapes]
    fmap_g = [[rng.normal(size=s).astype(np.float32) for s in group] for group in fmap_shapes]
    t = lambda arrays: [torch.from_numpy(a) for a in arrays]  # noqa: E731
    d_loss, r_losses, g_losses = models.discriminator_loss(t(real), t(fake))
    g_loss, gen_losses = models.generator_loss(t(fake))
    fm_loss = models.feature_loss([t(g) for g in fmap_r], [t(g) for g in fmap_g])
    out = {"d_loss": np.float64(d_loss), "r_losses": np.asarray(r_losses), "g_losses": np.asarray(g_losses),
           "g_loss": np.float64(g_loss), "gen_losses": np.asarray([float(x) for x in gen_losses]),
           "feature_loss": np.float64(fm_loss)}
    for i in range(len(shapes)):
        out[f"real/{i}"], out[f"fake/{i}"] = real[i], fake[i]
    for i, group in enumerate(fmap_shapes):
        for j in range(len(group)):
            out[f"fmap_r/{i}/{j}"], out[f"fmap_g/{i}/{j}"] = fmap_r[i][j], fmap_g[i][j]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference_repo", required=True, help="checkout of github.com/jik876/hifi-gan")
    parser.add_argument("--out", default="tests/fixtures", help="output folder for the .npz fixtures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ref = reference.load(args.reference_repo)
    os.makedirs(args.out, exist_ok=True)
    for name, make in (("mel_parity", lambda: make_mel_fixture(ref.meldataset)),
                       ("model_parity", lambda: make_model_fixture(ref)),
                       ("loss_parity", lambda: make_loss_fixture(ref.models))):
        path = os.path.join(args.out, f"{name}.npz")
        np.savez_compressed(path, **make(), **ref.provenance_arrays())
        logging.info("wrote %s (%d bytes)", path, os.path.getsize(path))


if __name__ == "__main__":
    main()
