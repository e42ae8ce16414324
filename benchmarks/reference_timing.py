"""Timing of the ORIGINAL PyTorch implementation (jik876/hifi-gan), for the benchmarks' comparisons only.

Run by bench_train.py / bench_input.py with a Python that has torch and librosa, and PYTHONPATH pointing at a
checkout of the original. Not part of the toolkit (nothing imports it); prints one JSON line.
NOTE: the original predates torch 2 and librosa 0.10: torch.stft is asked for a real view of a complex result
and librosa's mel filterbank is called with keywords, as those versions require.
"""

import argparse
import itertools
import json
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F


def patch_reference():
    try:
        import matplotlib  # noqa: F401  (the original's utils.py imports it for plots we never draw)
    except ImportError:
        stub = types.ModuleType("matplotlib")
        stub.use = lambda *args, **kwargs: None
        sys.modules.update({"matplotlib": stub, "matplotlib.pylab": types.ModuleType("matplotlib.pylab")})
    import librosa
    import meldataset

    meldataset.librosa_mel_fn = lambda sr, n_fft, n_mels, fmin, fmax: librosa.filters.mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    stft = torch.stft

    def real_stft(*args, **kwargs):
        kwargs["return_complex"] = True
        return torch.view_as_real(stft(*args, **kwargs))

    torch.stft = real_stft
    return meldataset


def time_train(args, h):
    mel_spectrogram = patch_reference().mel_spectrogram
    from models import (Generator, MultiPeriodDiscriminator, MultiScaleDiscriminator, discriminator_loss,
                        feature_loss, generator_loss)

    batch = np.load(args.batch)
    x = torch.from_numpy(batch["mel"]).transpose(1, 2).contiguous()
    y = torch.from_numpy(batch["audio"]).unsqueeze(1)
    y_mel = torch.from_numpy(batch["mel_loss"]).transpose(1, 2).contiguous()
    generator, mpd, msd = Generator(h), MultiPeriodDiscriminator(), MultiScaleDiscriminator()
    optim_g = torch.optim.AdamW(generator.parameters(), h.learning_rate, betas=[h.adam_b1, h.adam_b2])
    optim_d = torch.optim.AdamW(itertools.chain(msd.parameters(), mpd.parameters()), h.learning_rate,
                                betas=[h.adam_b1, h.adam_b2])

    def step():  # the body of the original's training loop
        y_g_hat = generator(x)
        y_g_hat_mel = mel_spectrogram(y_g_hat.squeeze(1), h.n_fft, h.num_mels, h.sampling_rate, h.hop_size,
                                      h.win_size, h.fmin, h.fmax_for_loss)
        optim_d.zero_grad()
        y_df_hat_r, y_df_hat_g, _, _ = mpd(y, y_g_hat.detach())
        loss_disc_f, _, _ = discriminator_loss(y_df_hat_r, y_df_hat_g)
        y_ds_hat_r, y_ds_hat_g, _, _ = msd(y, y_g_hat.detach())
        loss_disc_s, _, _ = discriminator_loss(y_ds_hat_r, y_ds_hat_g)
        (loss_disc_s + loss_disc_f).backward()
        optim_d.step()
        optim_g.zero_grad()
        loss_mel = F.l1_loss(y_mel, y_g_hat_mel) * 45
        y_df_hat_r, y_df_hat_g, fmap_f_r, fmap_f_g = mpd(y, y_g_hat)
        y_ds_hat_r, y_ds_hat_g, fmap_s_r, fmap_s_g = msd(y, y_g_hat)
        loss_gen_all = (generator_loss(y_ds_hat_g)[0] + generator_loss(y_df_hat_g)[0] + feature_loss(fmap_f_r, fmap_f_g)
                        + feature_loss(fmap_s_r, fmap_s_g) + loss_mel)
        loss_gen_all.backward()
        optim_g.step()
        return float(loss_gen_all)

    step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds_per_step": float(np.median(times)), "step_seconds": times}


def time_input(args, h):
    from torch.utils.data import DataLoader

    meldataset = patch_reference()
    with open(args.files) as f:
        files = [line.strip() for line in f if line.strip()]
    dataset = meldataset.MelDataset(files, h.segment_size, h.n_fft, h.num_mels, h.hop_size, h.win_size,
                                    h.sampling_rate, h.fmin, h.fmax, n_cache_reuse=0, shuffle=True,
                                    fmax_loss=h.fmax_for_loss, device=None)
    start = time.perf_counter()
    loader = DataLoader(dataset, num_workers=args.workers, shuffle=False, batch_size=h.batch_size, drop_last=True)
    clips, first = 0, None
    for epoch in range(args.epochs):
        for batch in loader:
            clips += batch[0].shape[0]
            if first is None:
                first, first_clips = time.perf_counter() - start, clips
    total = time.perf_counter() - start
    return {"first_batch_seconds": first, "clips_per_second": clips / total, "clips": clips,
            "steady_clips_per_second": (clips - first_clips) / (total - first)}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=("train", "input"))
    p.add_argument("--config", required=True)
    p.add_argument("--batch", help="train: npz with mel, mel_loss, audio")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--files", help="input: text file of wav paths")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    from env import AttrDict

    torch.set_num_threads(args.threads)
    with open(args.config) as f:
        h = AttrDict(json.load(f))
    torch.manual_seed(h.seed)
    result = time_train(args, h) if args.mode == "train" else time_input(args, h)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
