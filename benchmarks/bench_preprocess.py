"""Throughput of the preprocessing job against the bare DSP floor, in audio-seconds per second.

Builds a temporary corpus of ~10 s clips by concatenating the demo corpus (``--minutes`` of audio), then measures
  (a) floor: a single-process loop of decode + both mels (pipeline/audio.py, pipeline/mel.py; no Beam, no
      serialisation, no writing);
  (b) the whole job on DirectRunner, in_memory;
  (c) the whole job on DirectRunner, multi_processing with --workers processes;
and prints audio-s/s, the ratio to the floor and the peak memory (RSS summed over the process tree, sampled).
Each job is also run on a one-clip corpus first: its wall time is the job's fixed cost (pipeline construction,
worker start-up, TensorFlow import in every worker), and "marginal" is the throughput once that is paid, which is
what a long corpus (LJSpeech's 24 h) sees.

    python -m benchmarks.bench_preprocess --minutes 30
"""

import argparse
import glob
import os
import resource
import tempfile
import threading
import time

import numpy as np
import psutil
import soundfile as sf

from pipeline.audio import load_audio
from pipeline.config import load_config
from pipeline.mel import MelExtractor
from pipeline.preprocess import PreprocessOptions, run

CLIP_SECONDS = 10.0


def make_corpus(demo_dir: str, minutes: float, out_dir: str) -> tuple[str, float]:
    """~10 s clips concatenated from the demo corpus; returns (filelist path, total seconds)."""
    pieces = [sf.read(path, dtype="float32") for path in sorted(glob.glob(os.path.join(demo_dir, "*.wav")))]
    sampling_rate = pieces[0][1]
    stream = np.concatenate([audio for audio, _ in pieces])
    clip = int(CLIP_SECONDS * sampling_rate)
    num_clips = max(1, round(minutes * 60 / CLIP_SECONDS))
    wav_dir = os.path.join(out_dir, "wavs")
    os.makedirs(wav_dir)
    lines = []
    for i in range(num_clips):
        start = (i * clip) % max(1, stream.size - clip)
        sf.write(os.path.join(wav_dir, f"clip{i:05d}.wav"), stream[start:start + clip], sampling_rate,
                 subtype="PCM_16")
        lines.append(f"clip{i:05d}|bench\n")
    filelist = os.path.join(out_dir, "train.txt")
    with open(filelist, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return filelist, num_clips * CLIP_SECONDS


class PeakMemory:
    """Samples the RSS of this process and all its descendants every 50 ms; ``peak`` in bytes."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me] + me.children(recursive=True):
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def floor(cfg, wav_dir: str) -> None:
    """(a) decode + both mels in one process."""
    extractor = MelExtractor(cfg.audio)
    for path in sorted(glob.glob(os.path.join(wav_dir, "*.wav"))):
        with open(path, "rb") as f:
            audio = load_audio(f.read(), cfg.audio.sampling_rate, normalise=True)
        extractor(audio[:cfg.audio.num_frames(audio.size) * cfg.audio.hop_size])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="minutes of audio to process")
    parser.add_argument("--config", default="configs/v1.json", help="HiFi-GAN config")
    parser.add_argument("--demo_dir", default="demo/wavs", help="clips the benchmark corpus is made from")
    parser.add_argument("--workers", type=int, default=2, help="processes for the multi_processing run")
    args = parser.parse_args()
    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        filelist, seconds = make_corpus(args.demo_dir, args.minutes, tmp)
        empty = os.path.join(tmp, "val.txt")
        open(empty, "w").close()
        wav_dir = os.path.join(tmp, "wavs")
        tiny = os.path.join(tmp, "tiny.txt")
        with open(filelist, encoding="utf-8") as f, open(tiny, "w", encoding="utf-8") as out:
            out.write(f.readline())
        runs = [("(a) floor: decode + both mels, 1 process", lambda: floor(cfg, wav_dir), None)]
        for label, beam_args in (
                ("(b) job, DirectRunner in_memory", ["--runner", "DirectRunner"]),
                (f"(c) job, DirectRunner multi_processing x{args.workers}",
                 ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing",
                  "--direct_num_workers", str(args.workers)])):
            jobs = [lambda files=files, beam_args=beam_args: run(cfg, PreprocessOptions(
                filelists={"train": files, "val": empty}, audio_root=wav_dir,
                output_dir=os.path.join(tmp, f"out{len(runs)}-{len(files)}")), beam_args) for files in (filelist, tiny)]
            runs.append((label, jobs[0], jobs[1]))
        print(f"corpus: {seconds / 60:.1f} min of audio in {seconds / CLIP_SECONDS:.0f} clips of "
              f"{CLIP_SECONDS:g} s; {os.cpu_count()} CPU cores")
        floor_rate = None
        for label, fn, fixed_cost_fn in runs:
            fixed = 0.0
            if fixed_cost_fn is not None:
                start = time.perf_counter()
                fixed_cost_fn()
                fixed = time.perf_counter() - start
            with PeakMemory() as memory:
                start = time.perf_counter()
                fn()
                wall = time.perf_counter() - start
            rate = seconds / wall
            floor_rate = floor_rate or rate
            marginal = (seconds - CLIP_SECONDS) / max(wall - fixed, 1e-9) if fixed else rate
            print(f"{label:45s} {wall:6.1f} s wall {rate:6.0f} audio-s/s (x{rate / floor_rate:.2f} floor)  "
                  f"fixed cost {fixed:5.1f} s, marginal {marginal:6.0f} audio-s/s (x{marginal / floor_rate:.2f})  "
                  f"peak RSS {memory.peak / 2**20:5.0f} MiB")
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"max RSS of one process (getrusage): this process {own:.0f} MiB, largest child {children:.0f} MiB")


if __name__ == "__main__":
    main()
