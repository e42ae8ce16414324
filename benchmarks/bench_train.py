"""Seconds per train step (D update + G update) of this trainer, V1 and V3, with XLA off and on; optionally the
original PyTorch implementation's step on the same batch in the same run, and the ratio.

    .venv/bin/python -m benchmarks.bench_train --batch_size 4 --segment_size 8192 --threads 2 \
        --reference_repo /work/ref --reference_python /work/torchvenv/bin/python
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks import reference_timing


def make_batch(cfg, batch_size: int, seed: int = 0) -> dict:
    """A batch of harmonic tones: audio [B, segment] and their mels [B, F, num_mels] (core.mel)."""
    from core.mel import MelExtractor

    rng = np.random.default_rng(seed)
    extractor = MelExtractor(cfg.audio)
    segment, frames = cfg.training.segment_size, cfg.frames_per_segment
    t = np.arange(segment) / cfg.audio.sampling_rate
    audio = np.stack([0.5 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) for _ in range(batch_size)])
    audio = (audio + 0.01 * rng.standard_normal(audio.shape)).astype(np.float32)
    mels = [extractor(a) for a in audio]
    return {"audio": audio, "mel": np.stack([m[0][:frames] for m in mels]),
            "mel_loss": np.stack([m[1][:frames] for m in mels])}


def time_ours(cfg, batch: dict, steps: int, jit_compile: bool) -> tuple[float, float]:
    """(seconds of the first call incl. tracing, median seconds per step after it)."""
    import tensorflow as tf

    from model.trainer import Trainer

    trainer = Trainer(cfg, jit_compile=jit_compile)
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    start = time.perf_counter()
    float(trainer.train_step(tensors)["gen_loss_total"])
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        float(trainer.train_step(tensors)["gen_loss_total"])
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def time_reference(args, config_path: str, batch: dict) -> float:
    """Median seconds per step of the original's train step, run by --reference_python in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "batch.npz")
        np.savez(path, **batch)
        result = reference_timing.run(args.reference_python, args.reference_repo, "train", config=config_path,
                                      batch=path, steps=args.steps, threads=args.threads)
        return result["seconds_per_step"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="configs/v1.json,configs/v3.json", help="comma-separated config paths")
    p.add_argument("--batch_size", type=int, default=4, help="batch size")
    p.add_argument("--segment_size", type=int, default=8192, help="audio samples per example")
    p.add_argument("--steps", type=int, default=5,
                   help="timed steps after one warm-up step (the median is reported, on both sides)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (TF and torch)")
    p.add_argument("--xla", default="off,on", help="comma-separated: off, on")
    p.add_argument("--reference_repo", default=None, help="checkout of jik876/hifi-gan to time as well")
    p.add_argument("--reference_python", default=sys.executable,
                   help="python with torch (and librosa) for the reference timing")
    args = p.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from core.config import config_from_dict, load_config

    for path in args.configs.split(","):
        raw = {**load_config(path).raw, "batch_size": args.batch_size, "segment_size": args.segment_size}
        cfg = config_from_dict(raw)
        batch = make_batch(cfg, args.batch_size)
        name = os.path.splitext(os.path.basename(path))[0]
        reference = None
        if args.reference_repo:
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                f.write(cfg.to_json())
            reference = time_reference(args, f.name, batch)
            os.unlink(f.name)
            print(f"{name} original (torch): {reference:.3f} s/step, "
                  f"{args.batch_size / reference:.2f} clips/s", flush=True)
        for xla in args.xla.split(","):
            first, step = time_ours(cfg, batch, args.steps, xla == "on")
            ratio = f", {step / reference:.2f}x the original's step time" if reference else ""
            print(f"{name} XLA {xla}: {step:.3f} s/step, {args.batch_size / step:.2f} clips/s, "
                  f"{args.batch_size * args.segment_size / step / 1000:.1f} k audio samples/s "
                  f"(first call incl. tracing {first:.1f} s){ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
