"""Timing of the ORIGINAL PyTorch implementation (jik876/hifi-gan), for the benchmarks' comparisons only.

bench_train.py, bench_input.py and bench_inference.py run it through ``run`` / ``command`` below, in a Python
with torch and librosa (their --reference_python), as ``python -m benchmarks.reference_timing MODE
--reference_repo PATH ...`` with this repo's root on PYTHONPATH; it loads the original with tools/reference.py
(which patches it for torch 2 and librosa 0.10). Not part of the toolkit. Modes:
  train      the original's train.py loop body on one batch: prints one JSON line;
  input      its MelDataset + DataLoader over a list of WAVs: prints one JSON line;
  generator  its Generator (weight norm removed) on one mel: prints "ready", then the seconds of one call for each
             line read from stdin.
At module level it imports the standard library and numpy only, so that the benchmarks can import ``run``.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(reference_python: str, reference_repo: str, mode: str, **options) -> tuple[list[str], dict]:
    """The command line and environment that run ``mode`` of this module in the reference's Python."""
    cmd = [reference_python, "-m", "benchmarks.reference_timing", mode, "--reference_repo",
           os.path.abspath(reference_repo)]
    for key, value in options.items():
        cmd += [f"--{key}", str(value)]
    return cmd, {**os.environ, "PYTHONPATH": ROOT}


def run(reference_python: str, reference_repo: str, mode: str, **options) -> dict:
    """Runs a ``train`` or ``input`` timing in the reference's Python; its JSON result."""
    cmd, env = command(reference_python, reference_repo, mode, **options)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"reference timing failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_train(args, ref, h) -> dict:
    """Median seconds per step of the original's train step (tools/reference.py) on the batch in ``args.batch``."""
    import torch

    from tools import reference

    batch = np.load(args.batch)
    x = torch.from_numpy(batch["mel"]).transpose(1, 2).contiguous()
    y = torch.from_numpy(batch["audio"])
    y_mel = torch.from_numpy(batch["mel_loss"]).transpose(1, 2).contiguous()
    nets = reference.build_training(ref, h)

    def step():
        return float(reference.train_step(ref, h, nets, x, y, y_mel)["gen_loss_total"])

    step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds_per_step": float(np.median(times)), "step_seconds": times}


def time_input(args, ref, h) -> dict:
    """Time to the first batch and clips per second of the original's MelDataset + DataLoader."""
    from torch.utils.data import DataLoader

    with open(args.files) as f:
        files = [line.strip() for line in f if line.strip()]
    dataset = ref.meldataset.MelDataset(files, h.segment_size, h.n_fft, h.num_mels, h.hop_size, h.win_size,
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


def serve_generator(args, ref, h) -> None:
    """The original generator (weight norm removed) on the mel in ``args.mel`` ([1, frames, num_mels]): after one
    warm-up call prints "ready", then one timed call per line read from stdin, its seconds on a line each."""
    import torch

    generator = ref.models.Generator(h)
    generator.eval()
    generator.remove_weight_norm()
    mel = torch.from_numpy(np.load(args.mel)).transpose(1, 2).contiguous()  # [1, num_mels, frames]
    with torch.inference_mode():
        generator(mel)
        print("ready", flush=True)
        for _ in sys.stdin:
            start = time.perf_counter()
            generator(mel)
            print(time.perf_counter() - start, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("train", "input", "generator"))
    p.add_argument("--reference_repo", required=True, help="checkout of github.com/jik876/hifi-gan")
    p.add_argument("--config", required=True)
    p.add_argument("--batch", help="train: npz with mel, mel_loss, audio")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--files", help="input: text file of wav paths")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--mel", help="generator: .npy mel [1, frames, num_mels]")
    args = p.parse_args()
    import torch

    from tools import reference

    ref = reference.load(args.reference_repo)
    torch.set_num_threads(args.threads)
    with open(args.config) as f:
        h = ref.hparams(json.load(f))
    if args.mode == "generator":
        serve_generator(args, ref, h)
        return
    torch.manual_seed(h.seed)
    result = time_train(args, ref, h) if args.mode == "train" else time_input(args, ref, h)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
