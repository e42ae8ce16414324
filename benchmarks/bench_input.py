"""Throughput (clips per second, overall and after the first batch) and time to first batch of the streaming
tf.data input alone; optionally the original's MelDataset + DataLoader (same worker count) on the same audio, and
the ratios. The first batch carries each side's start-up (TF's runtime and tracing; torch's worker processes),
which dominates a short run; the rate after it is the steady state that a long training run sees.

    .venv/bin/python -m benchmarks.bench_input --num_clips 1024 --batch_size 16 \
        --reference_repo /work/ref --reference_python /work/torchvenv/bin/python

With ``--num_corpora K`` the clips are written to K shard directories and read as a mixture of equal weights
(run_train.py with K --data_dir), the same number of batches per epoch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks import reference_timing


def write_corpus(tmp: str, cfg, num_clips: int, seconds: float, num_shards: int, seed: int = 0) -> list[str]:
    """Tone clips as 16-bit WAVs (for the original) and as shards + manifest (for us); returns the WAV paths."""
    import soundfile as sf
    import tensorflow as tf

    from core.manifest import MANIFEST_NAME, Manifest
    from core.mel import MelExtractor
    from core.records import to_example

    rng = np.random.default_rng(seed)
    extractor, hop = MelExtractor(cfg.audio), cfg.audio.hop_size
    manifest = Manifest.new(cfg.audio, "int16", False)
    writers = [tf.io.TFRecordWriter(os.path.join(tmp, f"train-{i:05d}-of-{num_shards:05d}.tfrecord"))
               for i in range(num_shards)]
    paths = []
    for k in range(num_clips):
        n = int(seconds * cfg.audio.sampling_rate * rng.uniform(0.7, 1.3)) // hop * hop
        t = np.arange(n) / cfg.audio.sampling_rate
        audio = (0.5 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.01 * rng.standard_normal(n))
        audio = np.round(audio.astype(np.float32) * 32767) / 32767
        path = os.path.join(tmp, f"clip{k:05d}.wav")
        sf.write(path, audio, cfg.audio.sampling_rate, subtype="PCM_16")
        paths.append(path)
        mel, mel_loss = extractor(audio)
        frames = n // hop
        writers[k % num_shards].write(to_example(f"clip{k:05d}", audio, mel[:frames], mel_loss[:frames]))
        manifest.splits["train"].num_examples += 1
    for w in writers:
        w.close()
    manifest.splits["train"].shards = [f"train-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    with open(os.path.join(tmp, MANIFEST_NAME), "w") as f:
        f.write(manifest.to_json())
    return paths


def time_ours(data_dirs: list[str], cfg, epochs: int) -> dict:
    """Time to the first batch, clips per second overall and after the first batch (steady state)."""
    from model import data
    from model.corpora import load_corpora

    corpora = load_corpora(cfg, data_dirs)
    steps = data.mixture_steps_per_epoch(corpora, cfg.training.batch_size)
    start = time.perf_counter()
    clips, first = 0, None
    for epoch in range(epochs):
        for batch in data.mixture_train_dataset(corpora, cfg, seed=1, epoch=epoch, num_batches=steps):
            clips += int(batch["mel"].shape[0])
            if first is None:
                first, first_clips = time.perf_counter() - start, clips
    total = time.perf_counter() - start
    return {"first_batch_seconds": first, "clips_per_second": clips / total,
            "steady_clips_per_second": (clips - first_clips) / (total - first)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/v1.json", help="config (audio parameters, segment_size)")
    p.add_argument("--batch_size", type=int, default=16, help="batch size")
    p.add_argument("--num_clips", type=int, default=1024, help="clips in the corpus")
    p.add_argument("--seconds", type=float, default=3.0, help="mean clip length")
    p.add_argument("--num_shards", type=int, default=4, help="shards the corpus is written to")
    p.add_argument("--epochs", type=int, default=2, help="epochs timed")
    p.add_argument("--num_corpora", type=int, default=1, help="shard directories the clips are split into, read "
                                                              "as a mixture of equal weights")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes of the original")
    p.add_argument("--reference_repo", default=None, help="checkout of jik876/hifi-gan to time as well")
    p.add_argument("--reference_python", default=sys.executable, help="python with torch for the reference")
    args = p.parse_args(argv)
    from core.config import config_from_dict, load_config

    cfg = config_from_dict({**load_config(args.config).raw, "batch_size": args.batch_size})
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [tmp] if args.num_corpora == 1 else [os.path.join(tmp, f"corpus{i}") for i in range(args.num_corpora)]
        paths = []
        for i, data_dir in enumerate(dirs):
            os.makedirs(data_dir, exist_ok=True)
            paths += write_corpus(data_dir, cfg, args.num_clips // len(dirs), args.seconds, args.num_shards, seed=i)
        ours = time_ours(dirs, cfg, args.epochs)
        mixture = f", a mixture of {len(dirs)} corpora" if len(dirs) > 1 else ""
        print(f"tf.data input{mixture}: {ours['clips_per_second']:.0f} clips/s overall, "
              f"{ours['steady_clips_per_second']:.0f} clips/s after the first batch, first batch after "
              f"{ours['first_batch_seconds']:.3f} s (batch {args.batch_size}, {args.num_clips} clips x "
              f"{args.epochs} epochs)", flush=True)
        if args.reference_repo:
            files = os.path.join(tmp, "files.txt")
            with open(files, "w") as f:
                f.write("\n".join(paths))
            config = os.path.join(tmp, "config.json")
            with open(config, "w") as f:
                f.write(cfg.to_json())
            ref = reference_timing.run(args.reference_python, args.reference_repo, "input", config=config,
                                       files=files, workers=args.workers, epochs=args.epochs)
            print(f"original MelDataset + DataLoader ({args.workers} workers): {ref['clips_per_second']:.0f} "
                  f"clips/s overall, {ref['steady_clips_per_second']:.0f} clips/s after the first batch, first "
                  f"batch after {ref['first_batch_seconds']:.3f} s", flush=True)
            for label, key in (("overall", "clips_per_second"), ("after the first batch", "steady_clips_per_second")):
                print(f"ratio {label}: {ours[key] / ref[key]:.1f}x the original's throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())
