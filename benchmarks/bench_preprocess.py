"""Throughput of the preprocessing job against the bare DSP floor, in audio-seconds per second.

Builds a temporary corpus of ~10 s clips by concatenating the demo corpus (``--minutes`` of audio), then measures
  stages: the job's steps in one process without Beam, each timed over the corpus: read the file, decode,
      both mels, serialise (``to_example``), TFRecord framing + spill write, and pass 2's copy into a shard;
  (a) floor: a single-process loop of decode + both mels (core/audio.py, core/mel.py; no Beam, no
      serialisation, no writing), with glibc's default allocator settings, like the stages above;
  (a') the same once ``keep_freed_memory()``, which the job's workers call, has made the allocator keep freed
      memory (the jobs below run in this process or in workers that call it);
  (b) the whole job on DirectRunner, in_memory;
  (c) the whole job on DirectRunner, multi_threading with --workers threads;
  (d) the whole job on DirectRunner, multi_processing with --workers processes;
and prints audio-s/s, the ratios to both floors and the peak memory (RSS summed over the process tree, sampled).
Each job is also run on a one-clip corpus first: its wall time is the job's fixed cost (pipeline construction,
worker start-up and shut-down), and "marginal" is the throughput once that is paid, which is what a long corpus
(LJSpeech's 24 h) sees. Every figure is the best of ``--repeats`` runs, with the spread (slowest / best - 1)
and the load average: other processes on the machine slow some runs down.

    python -m benchmarks.bench_preprocess --minutes 30
"""

import argparse
import glob
import math
import os
import resource
import shutil
import tempfile
import threading
import time

import numpy as np
import psutil
import soundfile as sf

from core.audio import load_audio
from core.config import load_config
from core.mel import MelExtractor
from pipeline.clips import keep_freed_memory
from pipeline.options import PreprocessOptions
from pipeline.runner import run
from pipeline.tfrecord_io import SpillFile, read_frame
from core.records import to_example

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


def stage_seconds(cfg, wav_dir: str, out_dir: str) -> dict[str, float]:
    """Seconds spent in each of the job's steps over the corpus, in one process, without Beam."""
    extractor = MelExtractor(cfg.audio)
    seconds = dict.fromkeys(("read", "decode", "mels", "serialise", "frame + spill", "shard copy"), 0.0)
    spill = SpillFile(out_dir)
    index = []
    for path in sorted(glob.glob(os.path.join(wav_dir, "*.wav"))):
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            data = f.read()
        t1 = time.perf_counter()
        audio = load_audio(data, cfg.audio.sampling_rate, normalise=True)
        audio = audio[:cfg.audio.num_frames(audio.size) * cfg.audio.hop_size]
        t2 = time.perf_counter()
        mel, mel_loss = extractor(audio)
        t3 = time.perf_counter()
        record = to_example(os.path.basename(path), audio, mel, mel_loss)
        t4 = time.perf_counter()
        index.append((spill.write(record), len(record)))
        t5 = time.perf_counter()
        for name, took in zip(seconds, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            seconds[name] += took
    start = time.perf_counter()
    spill.close()
    seconds["frame + spill"] += time.perf_counter() - start
    start = time.perf_counter()
    with open(spill.path, "rb") as f, open(os.path.join(out_dir, "shard.tfrecord"), "wb") as out:
        for offset, length in sorted(index, key=lambda entry: -entry[0]):  # not the written order, as in a shard
            out.write(read_frame(f, offset, length))
    seconds["shard copy"] = time.perf_counter() - start
    return seconds


def floor_freed_memory_kept(cfg, wav_dir: str) -> None:
    """(a') the floor once the allocator keeps freed memory, as in the job's workers."""
    keep_freed_memory()
    floor(cfg, wav_dir)


def best_of(fn, repeats: int, out_dir: str) -> tuple[float, float, int]:
    """(best wall seconds, spread = slowest / best - 1, peak RSS bytes) over ``repeats`` calls of ``fn``.

    ``out_dir`` (where ``fn`` writes) is removed after each call, untimed.
    """
    walls, peak = [], 0
    for _ in range(repeats):
        with PeakMemory() as memory:
            start = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - start)
        peak = max(peak, memory.peak)
        shutil.rmtree(out_dir, ignore_errors=True)
    return min(walls), max(walls) / min(walls) - 1, peak


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="minutes of audio to process")
    parser.add_argument("--config", default="configs/v1.json", help="HiFi-GAN config")
    parser.add_argument("--demo_dir", default="demo/wavs", help="clips the benchmark corpus is made from")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="threads or processes of (c) and (d)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the best is reported")
    parser.add_argument("--modes", default="in_memory,multi_threading,multi_processing",
                        help="comma-separated DirectRunner running modes to measure")
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
        print(f"corpus: {seconds / 60:.1f} min of audio in {seconds / CLIP_SECONDS:.0f} clips of "
              f"{CLIP_SECONDS:g} s; {os.cpu_count()} CPU cores; load average {load()}")
        out_dir = os.path.join(tmp, "out")
        os.makedirs(out_dir)
        stages = stage_seconds(cfg, wav_dir, out_dir)
        shutil.rmtree(out_dir)
        print("stages, 1 process, no Beam (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
              + f"; total {sum(stages.values()):.2f}")

        def job(files, beam_args):
            """A call that runs the job on ``files`` into ``out_dir``."""
            return lambda: run(cfg, PreprocessOptions(filelists={"train": files, "val": empty}, audio_root=wav_dir,
                                                      output_dir=out_dir), beam_args)

        runs = [("(a) floor: decode + both mels, 1 process", lambda: floor(cfg, wav_dir), None),
                ("(a') floor, freed memory kept", lambda: floor_freed_memory_kept(cfg, wav_dir), None)]
        for letter, mode in zip("bcd", ("in_memory", "multi_threading", "multi_processing")):
            if mode in args.modes.split(","):
                workers = 1 if mode == "in_memory" else args.workers
                beam_args = ["--runner", "DirectRunner", "--direct_running_mode", mode,
                             "--direct_num_workers", str(workers)]
                runs.append((f"({letter}) job, DirectRunner {mode} x{workers}", job(filelist, beam_args),
                             job(tiny, beam_args)))
        floors = []
        for label, fn, fixed_cost_fn in runs:
            fixed = best_of(fixed_cost_fn, args.repeats, out_dir)[0] if fixed_cost_fn else 0.0
            wall, spread, peak = best_of(fn, args.repeats, out_dir)
            rate = seconds / wall
            if not fixed_cost_fn:
                floors.append(rate)
            marginal = rate if not fixed else (seconds - CLIP_SECONDS) / (wall - fixed) if wall > fixed else math.nan
            print(f"{label:42s} {wall:6.2f} s (+{spread:4.0%}) {rate:5.0f} audio-s/s x{rate / floors[0]:.2f} "
                  f"(x{rate / floors[-1]:.2f} a')  fixed {fixed:3.1f} s, marginal {marginal:5.0f} audio-s/s "
                  f"x{marginal / floors[0]:.2f} (x{marginal / floors[-1]:.2f} a')  peak RSS {peak / 2**20:4.0f} MiB")
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"max RSS of one process (getrusage): this process {own:.0f} MiB, largest child {children:.0f} MiB; "
          f"load average {load()}")


if __name__ == "__main__":
    main()
