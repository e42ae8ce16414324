"""Inference speed on CPU: real-time factor (seconds of audio per wall-clock second) of the V1, V2 and V3
generators on 10 s of mel, eager vs tf.function vs XLA vs bfloat16 (bf16 weights, and Keras' mixed_bfloat16: float32
weights cast per call) vs each TFLite flavour, and, given the original's checkout
and a Python with torch, the original generator on the same input in the same run, its calls interleaved with
ours (one after each of our timed calls) so that the machine's drifts hit both sides alike. Each way's speed-up
is its best of --repeats calls against the best of the original's calls made right after them (best-of-N against
best-of-N: the original's best over all its calls, the "original" row, has more tries at a quiet moment).

    .venv/bin/python -m benchmarks.bench_inference --reference_repo /work/ref \
        --reference_python /work/torchvenv/bin/python --quality_checkpoints demo_out/checkpoints

Weights are random (speed does not depend on them); weight norm is folded as for inference. The quality cost of
bfloat16 is measured on trained checkpoints (--quality_checkpoints, each with its config.json): the validation
clips of --quality_filelist vocoded by model.inference.Vocoder in float32 and in bfloat16, and core/metrics.py's
mel L1 and wide-band PESQ of the bfloat16 audio against the float32 audio (and of each against the recording).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import reference_timing
from model.export import TFLITE_QUANTIZATIONS
from model.precision import BFLOAT16_POLICIES

ORIGINAL = "original (torch)"
BFLOAT16_WAYS = {"bfloat16": "tf.function bf16", "mixed_bfloat16": "tf.function mixed_bf16"}
QUALITY_METRICS = ("mel_l1", "mrstft", "pesq")
NO_GAIN = 1.1  # a bfloat16 speed-up over float32 below this is reported as no gain

class Original:
    """The original generator in a subprocess (a Python with torch), timed one call per request: its calls are
    interleaved with ours so that the machine's slow drifts (shared CPUs) hit both sides alike."""

    def __init__(self, args, config_path: str, mel: np.ndarray):
        self.tmp = tempfile.TemporaryDirectory()
        mel_path = os.path.join(self.tmp.name, "mel.npy")
        np.save(mel_path, mel)
        cmd, env = reference_timing.command(args.reference_python, args.reference_repo, "generator",
                                            config=config_path, mel=mel_path, threads=args.threads)
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for line in self.proc.stdout:  # the original prints "Removing weight norm..." first
            if line.strip() == "ready":
                break
        else:
            raise SystemExit("the original's generator failed to start (see its error above)")

    def time_one(self) -> float:
        """Seconds of one call of the original."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.tmp.cleanup()


def _time(label: str, fn, repeats: int, original: Original | None = None) -> tuple[float, float]:
    """Best of ``repeats`` calls of fn after a warm-up, and the best of the original's calls made one after each
    of them (inf without the original): the ratio then compares best-of-N with best-of-N, same N, same moments."""
    fn()  # warm-up (tracing, XLA compilation, allocation)
    best = original_best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        if original:
            original_best = min(original_best, original.time_one())
    logging.info("%s: %.2f s per call", label, best)
    return best, original_best


def bench_config(name: str, config_path: str, args) -> tuple[dict[str, float], dict[str, float]]:
    """Real-time factor of each way of running the generator (and of the original), and each way's speed-up over
    the original (inf without it)."""
    import tensorflow as tf

    from model.export import TFLiteVocoder, example_mel, tflite_bytes
    from model.generator import Generator
    from model.precision import bfloat16_generator
    from core.config import load_config

    cfg = load_config(config_path)
    frames = int(round(args.seconds * cfg.audio.sampling_rate / cfg.audio.hop_size))
    mel = example_mel(cfg, frames, batch=1)
    generator = Generator(cfg.generator)
    generator.build((None, None, cfg.audio.num_mels))
    generator.remove_weight_norm()
    spec = [tf.TensorSpec([None, None, cfg.audio.num_mels], tf.float32)]

    def forward(mel):
        return generator(mel, training=False)

    compiled = tf.function(forward, input_signature=spec)
    xla = tf.function(forward, input_signature=spec, jit_compile=True)
    x = tf.constant(mel)
    original = Original(args, config_path, mel) if args.reference_repo else None
    timed = {
        "eager": _time(f"{name} eager", lambda: generator(x, training=False).numpy(), args.repeats, original),
        "tf.function": _time(f"{name} tf.function", lambda: compiled(x).numpy(), args.repeats, original),
        "xla": _time(f"{name} xla", lambda: xla(x).numpy(), args.repeats, original),
    }
    for policy in args.bfloat16:
        low = tf.function(lambda mel, model=bfloat16_generator(generator, policy): model(mel, training=False),
                          input_signature=spec)
        timed[BFLOAT16_WAYS[policy]] = _time(f"{name} {policy}", lambda: low(x).numpy(), args.repeats, original)
    for quantization in args.tflite:
        runner = TFLiteVocoder(tflite_bytes(generator, cfg, quantization), num_threads=args.threads)
        timed[f"tflite_{quantization}"] = _time(f"{name} tflite {quantization}", lambda: runner(mel),
                                                args.repeats, original)
    rtf = {way: args.seconds / seconds for way, (seconds, _) in timed.items()}
    speedup = {way: original_seconds / seconds for way, (seconds, original_seconds) in timed.items()}
    if original:
        original.close()
        best = min(original_seconds for _, original_seconds in timed.values())
        rtf[ORIGINAL] = args.seconds / best
        logging.info("%s original: %.2f s per call (best of all %d, interleaved with ours)", name, best,
                     args.repeats * len(timed))
    return rtf, speedup


def bfloat16_quality(checkpoint: str, filelist: str, audio_root: str) -> dict[str, dict[str, float]]:
    """{comparison: {metric: mean over clips}} for a trained checkpoint: "bf16 vs float32" (the bfloat16 audio
    against the float32 audio), "float32 vs recording" and "bf16 vs recording", each clip vocoded from the mel of
    its recording (copy synthesis, through model.inference.Vocoder)."""
    from core.audio import load_audio
    from core.filelist import audio_path, listed_paths
    from core.mel import MelExtractor
    from core.metrics import clip_metrics, summarize
    from core.storage import TF_IO, read_bytes
    from model.checkpoint import restore_generator
    from model.inference import Vocoder

    generator, cfg = restore_generator(checkpoint)
    extractor = MelExtractor(cfg.audio)
    recordings = [load_audio(read_bytes(audio_path(audio_root, listed, io=TF_IO), io=TF_IO),
                             cfg.audio.sampling_rate, normalise=True)
                  for _, listed, problem in listed_paths(filelist, io=TF_IO) if not problem]
    mels = [extractor(audio)[0] for audio in recordings]
    full = Vocoder(generator, cfg)(mels)
    low = Vocoder(generator, cfg, precision="bfloat16")(mels)
    pairs = {"bf16 vs float32": zip(full, low), "float32 vs recording": zip(recordings, full),
             "bf16 vs recording": zip(recordings, low)}
    result = {}
    for comparison, clips in pairs.items():
        values = [clip_metrics(reference, generated, cfg.audio) for reference, generated in clips]
        result[comparison] = {metric: summarize([v[metric] for v in values])["mean"] for metric in QUALITY_METRICS}
        result[comparison]["worst pesq"] = min(v["pesq"] for v in values)
    logging.info("%s: %d clips of %s", checkpoint, len(mels), filelist)
    return result


def print_speed(table: dict, speedups: dict, args) -> None:
    """The real-time factor table, bfloat16's gain over float32 per config, and the speed-ups over the original."""
    ways = list(next(iter(table.values())))
    print(f"\nreal-time factor (audio s / wall s), {args.seconds:g} s of mel, {args.threads} CPU threads, best of "
          f"{args.repeats}")
    print(f"{'':22s}" + "".join(f"{name:>10s}" for name in table))
    for way in ways:
        print(f"{way:22s}" + "".join(f"{table[name][way]:10.1f}" for name in table))
    for policy in args.bfloat16:
        way = BFLOAT16_WAYS[policy]
        gains = {name: table[name][way] / table[name]["tf.function"] for name in table}
        print(f"{way} / tf.function: " + ", ".join(
            f"{name} {gain:.2f}x{' (no gain)' if gain < NO_GAIN else ''}" for name, gain in gains.items()))
    if args.reference_repo:
        print(f"\nspeed-up over the original (same input, same run; each way's best of {args.repeats} against the "
              f"best of the original's {args.repeats} calls made right after them)")
        for way in ways:
            if way != ORIGINAL:
                print(f"{way:22s}" + "".join(f"{speedups[name][way]:9.2f}x" for name in table))


def print_quality(quality: dict) -> None:
    """One block per checkpoint: each comparison's mean mel L1, MR-STFT and PESQ, and its worst clip's PESQ."""
    columns = (*QUALITY_METRICS, "worst pesq")
    print("\nbfloat16 quality cost (copy synthesis of the validation clips; mean over clips)")
    for checkpoint, comparisons in quality.items():
        print(f"{checkpoint}\n{'':22s}" + "".join(f"{c:>12s}" for c in columns))
        for comparison, values in comparisons.items():
            print(f"{comparison:22s}" + "".join(f"{values[c]:12.4f}" for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["configs/v1.json", "configs/v2.json", "configs/v3.json"],
                        help="generator configs to time")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio seconds of mel per call")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (TF intra-op, TFLite, torch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per way (the best is kept)")
    parser.add_argument("--tflite", nargs="*", default=list(TFLITE_QUANTIZATIONS), choices=TFLITE_QUANTIZATIONS,
                        help="TFLite flavours to time (none: skip TFLite)")
    parser.add_argument("--bfloat16", nargs="*", default=list(BFLOAT16_POLICIES), choices=BFLOAT16_POLICIES,
                        help="bfloat16 ways to time: bf16 weights (what --precision bfloat16 runs), float32 "
                             "weights cast per call (Keras' mixed_bfloat16); none: skip")
    parser.add_argument("--quality_checkpoints", nargs="*", default=[],
                        help="trained checkpoint directories on which to measure bfloat16's quality cost")
    parser.add_argument("--quality_filelist", default="filelists/demo_val.txt",
                        help="the clips vocoded for the quality cost (id|text lines)")
    parser.add_argument("--quality_audio_root", default="demo/wavs", help="where --quality_filelist's clips are")
    parser.add_argument("--reference_repo", default=None, help="checkout of jik876/hifi-gan to time the original")
    parser.add_argument("--reference_python", default=sys.executable, help="a Python with torch for the original")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    table, speedups = {}, {}
    for config in args.configs:
        name = os.path.splitext(os.path.basename(config))[0].upper()
        table[name], speedups[name] = bench_config(name, config, args)
    quality = {checkpoint: bfloat16_quality(checkpoint, args.quality_filelist, args.quality_audio_root)
               for checkpoint in args.quality_checkpoints}
    print_speed(table, speedups, args)
    if quality:
        print_quality(quality)


if __name__ == "__main__":
    main()
