"""Small real shard directories for the trainer's tests (numpy audio, the pipeline's mels, real TFRecords)."""

from __future__ import annotations

import glob
import json
import os

import google_crc32c
import numpy as np
import tensorflow as tf

from core.config import config_from_dict, load_config
from core.manifest import MANIFEST_NAME, Manifest, ShardFile
from core.mel import MelExtractor
from core.records import to_example

DEBUG_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "debug.json")


def debug_config(**overrides):
    """configs/debug.json with flat-key overrides."""
    with open(DEBUG_CONFIG, encoding="utf-8") as f:
        raw = json.load(f)
    raw.update(overrides)
    return config_from_dict(raw)


def config_file(tmp_path, cfg) -> str:
    path = os.path.join(str(tmp_path), "config.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(cfg.to_json())
    return path


def tone_clip(rng: np.random.Generator, num_samples: int, sampling_rate: int) -> np.ndarray:
    """A harmonic tone with a little noise, peak 0.5."""
    t = np.arange(num_samples) / sampling_rate
    f0 = rng.uniform(100, 400)
    audio = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in (1, 2, 3))
    audio = audio + 0.05 * rng.standard_normal(num_samples)
    return (0.5 * audio / np.abs(audio).max()).astype(np.float32)


def write_shards(data_dir, cfg, clips: dict[str, list[np.ndarray]], num_shards: dict[str, int] | None = None,
                 audio_encoding: str = "int16", teacher_forced: bool = False, mels: dict | None = None,
                 fingerprint_cfg=None, checksums: bool = False) -> Manifest:
    """Writes ``clips`` (split -> list of audio [frames * hop]) as shards + manifest.json, the Beam job's layout.

    ``mels`` (split -> list of (mel, mel_loss)) replaces the computed mels (teacher-forced or synthetic ones).
    ``fingerprint_cfg`` writes another config's audio fingerprint into the manifest. ``checksums`` records each
    shard's size and CRC-32C as the Beam job does (else the manifest lists bare names, as an older job's).
    """
    data_dir = str(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    extractor = MelExtractor(cfg.audio)
    manifest = Manifest.new((fingerprint_cfg or cfg).audio, audio_encoding, teacher_forced)
    for split, audios in clips.items():
        n = (num_shards or {}).get(split, 1)
        writers = [tf.io.TFRecordWriter(os.path.join(data_dir, f"{split}-{i:05d}-of-{n:05d}.tfrecord"))
                   for i in range(n)]
        summary = manifest.splits[split]
        for k, audio in enumerate(audios):
            if mels is not None:
                mel, mel_loss = mels[split][k]
            else:
                mel, mel_loss = extractor(audio)
                frames = audio.shape[0] // cfg.audio.hop_size
                mel, mel_loss = mel[:frames], mel_loss[:frames]
            writers[k % n].write(to_example(f"{split}_{k:04d}", audio, mel, mel_loss, audio_encoding))
            summary.num_lines += 1
            summary.num_examples += 1
            summary.total_frames += mel.shape[0]
        for w in writers:
            w.close()
        summary.shards = [f"{split}-{i:05d}-of-{n:05d}.tfrecord" for i in range(n)]
        if checksums:
            for name in summary.shards:
                with open(os.path.join(data_dir, name), "rb") as f:
                    data = f.read()
                summary.shard_files[name] = ShardFile(len(data), google_crc32c.Checksum(data).hexdigest().decode())
    with open(os.path.join(data_dir, MANIFEST_NAME), "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
    return manifest


def tone_shards(data_dir, cfg, num_train: int = 8, num_val: int = 2, frames=(20, 40), seed: int = 0, **kwargs):
    """Shards of harmonic tones, each a whole number of frames long."""
    rng = np.random.default_rng(seed)
    hop = cfg.audio.hop_size

    def clip():
        return tone_clip(rng, int(rng.integers(*frames)) * hop, cfg.audio.sampling_rate)

    clips = {"train": [clip() for _ in range(num_train)], "val": [clip() for _ in range(num_val)]}
    return write_shards(data_dir, cfg, clips, **kwargs)


def scalars(log_dir) -> dict[str, list[float]]:
    """{tag: [value per step written]} of the TensorBoard scalars in the event files of ``log_dir``."""
    values: dict[str, list[float]] = {}
    for event_file in sorted(glob.glob(os.path.join(str(log_dir), "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    values.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return values


__all__ = ["debug_config", "config_file", "load_config", "scalars", "tone_clip", "tone_shards", "write_shards"]
