"""Streaming vocoding speed on CPU: milliseconds per chunk of 1, 4, 16 and 64 mel frames for V1 and V3, the
real-time factor of the stream (seconds of audio per wall-clock second, the whole utterance chunk by chunk, flush
included), and one pass of the generator over the same mel in the same run beside it.

    .venv/bin/python -m benchmarks.bench_streaming --configs configs/v1.json configs/v3.json --seconds 10

Weights are random (speed does not depend on them); weight norm is folded as for inference. Each stream's output
is checked against the one pass (max |difference|, printed; 1 LSB of 16 bits is 3.1e-05).
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np


def _stream_once(streamer, mel: np.ndarray, chunk: int) -> tuple[np.ndarray, list[float], float]:
    """(audio, seconds of each step call, seconds of the flush) for one utterance."""
    streamer.reset()
    pieces, steps = [], []
    for start in range(0, mel.shape[0], chunk):
        begin = time.perf_counter()
        pieces.append(streamer.step(mel[start:start + chunk]))
        steps.append(time.perf_counter() - begin)
    begin = time.perf_counter()
    pieces.append(streamer.flush())
    return np.concatenate(pieces), steps, time.perf_counter() - begin


def bench_config(config_path: str, args) -> list[dict]:
    """One row per way (the one pass, then each chunk size)."""
    import tensorflow as tf

    from core.config import load_config
    from model.export import example_mel
    from model.generator import Generator
    from model.streaming import StreamingVocoder

    cfg = load_config(config_path)
    hop, rate = cfg.audio.hop_size, cfg.audio.sampling_rate
    frames = int(round(args.seconds * rate / hop))
    seconds = frames * hop / rate
    mel = example_mel(cfg, frames)[0]
    generator = Generator(cfg.generator)
    generator.build((None, None, cfg.audio.num_mels))
    generator.remove_weight_norm()
    one_pass = tf.function(lambda x: generator(x, training=False)[0, :, 0],
                           input_signature=[tf.TensorSpec([None, None, cfg.audio.num_mels], tf.float32)])
    x = tf.constant(mel[None])
    expected = one_pass(x).numpy()  # warm-up
    best = float("inf")
    for _ in range(args.repeats):
        begin = time.perf_counter()
        one_pass(x).numpy()
        best = min(best, time.perf_counter() - begin)
    rows = [dict(way="one pass", chunk_ms=seconds * 1000, step_ms=best * 1000, rtf=seconds / best, diff=0.0)]
    streamer = StreamingVocoder(generator, cfg)
    logging.info("%s: latency %d frames (%d samples, %.1f ms); state %d floats", config_path,
                 streamer.latency_frames, streamer.latency_samples, 1000 * streamer.latency_samples / rate,
                 streamer.module.state_size)
    for chunk in args.chunk_frames:
        _stream_once(streamer, mel[:streamer.latency_frames + 2 * chunk + 1], chunk)  # warm-up, steady state too
        runs = [_stream_once(streamer, mel, chunk) for _ in range(args.repeats)]
        audio, steps, flush = min(runs, key=lambda r: sum(r[1]) + r[2])
        total = sum(steps) + flush
        rows.append(dict(way=f"stream {chunk}", chunk_ms=1000 * chunk * hop / rate,
                         step_ms=1000 * float(np.median(steps)), rtf=seconds / total,
                         diff=float(np.abs(audio - expected).max())))
        logging.info("%s chunk %d: median %.2f ms per chunk, flush %.1f ms", config_path, chunk, rows[-1]["step_ms"],
                     1000 * flush)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["configs/v1.json", "configs/v3.json"],
                        help="generator configs to time")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio seconds of mel per utterance")
    parser.add_argument("--chunk_frames", type=int, nargs="+", default=[1, 4, 16, 64], help="chunk sizes to time")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (TF intra-op)")
    parser.add_argument("--repeats", type=int, default=3, help="utterances per way (the fastest is kept)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    print(f"\nstreaming on CPU, {args.seconds:g} s of mel, {args.threads} threads, best of {args.repeats} utterances; "
          f"ms per chunk: median step; real-time factor: audio s / wall s of the whole utterance")
    print(f"{'config':8s}{'way':>12s}{'chunk audio ms':>16s}{'ms per chunk':>14s}{'RTF':>8s}{'max |diff|':>12s}")
    for config in args.configs:
        name = os.path.splitext(os.path.basename(config))[0].upper()
        for row in bench_config(config, args):
            print(f"{name:8s}{row['way']:>12s}{row['chunk_ms']:16.1f}{row['step_ms']:14.2f}{row['rtf']:8.1f}"
                  f"{row['diff']:12.1e}")


if __name__ == "__main__":
    main()
