"""The TFRecord schema: the one contract between the Beam writer, the tf.data reader and outside tools.

Each record is a ``tf.train.Example`` with
  - ``id``         bytes   the clip's file stem
  - ``audio``      bytes   little-endian int16 PCM (sample = round(x * 32767)) or float32 LE, see the manifest's
                           ``audio_encoding``; always ``num_frames * hop_size`` samples
  - ``mel``        bytes   float32 LE, row-major [num_frames, num_mels]: the model input (or a teacher-forced mel)
  - ``mel_loss``   bytes   float32 LE, row-major [num_frames, num_mels]: the mel for the L1 loss (fmax_for_loss)
  - ``num_frames`` int64
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

SCHEMA_VERSION = 1
AUDIO_ENCODINGS = ("int16", "float32")

FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.string),
    "audio": tf.io.FixedLenFeature([], tf.string),
    "mel": tf.io.FixedLenFeature([], tf.string),
    "mel_loss": tf.io.FixedLenFeature([], tf.string),
    "num_frames": tf.io.FixedLenFeature([], tf.int64),
}


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def encode_audio(audio: np.ndarray, audio_encoding: str) -> bytes:
    """Audio [num_samples] float in [-1, 1] to the record's bytes."""
    if audio_encoding == "int16":
        return np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2").tobytes()
    if audio_encoding == "float32":
        return np.asarray(audio, dtype="<f4").tobytes()
    raise ValueError(f"unknown audio_encoding {audio_encoding!r}; expected one of {AUDIO_ENCODINGS}")


def to_example(clip_id: str, audio: np.ndarray, mel: np.ndarray, mel_loss: np.ndarray,
               audio_encoding: str = "int16") -> bytes:
    """Serialises one clip. audio [num_frames * hop_size], mel and mel_loss [num_frames, num_mels]."""
    num_frames = mel.shape[0]
    if mel_loss.shape != mel.shape:
        raise ValueError(f"{clip_id}: mel {mel.shape} and mel_loss {mel_loss.shape} differ")
    if num_frames == 0 or audio.shape[0] % num_frames:
        raise ValueError(f"{clip_id}: {audio.shape[0]} samples do not split into {num_frames} frames")
    example = tf.train.Example(features=tf.train.Features(feature={
        "id": _bytes(clip_id.encode("utf-8")),
        "audio": _bytes(encode_audio(audio, audio_encoding)),
        "mel": _bytes(np.ascontiguousarray(mel, dtype="<f4").tobytes()),
        "mel_loss": _bytes(np.ascontiguousarray(mel_loss, dtype="<f4").tobytes()),
        "num_frames": tf.train.Feature(int64_list=tf.train.Int64List(value=[num_frames])),
    }))
    # Deterministic: map fields in a fixed order, so every runner and process writes byte-identical shards.
    return example.SerializeToString(deterministic=True)


def parse(serialized: tf.Tensor, num_mels: int, audio_encoding: str = "int16") -> dict[str, tf.Tensor]:
    """Parses one serialised record (graph-safe, for tf.data.map).

    Returns id (string), audio (float32 [num_samples] in [-1, 1]), mel and mel_loss (float32 [num_frames,
    num_mels]) and num_frames (int32).
    """
    if audio_encoding not in AUDIO_ENCODINGS:
        raise ValueError(f"unknown audio_encoding {audio_encoding!r}; expected one of {AUDIO_ENCODINGS}")
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    if audio_encoding == "int16":
        audio = tf.cast(tf.io.decode_raw(parsed["audio"], tf.int16, little_endian=True), tf.float32) / 32767.0
    else:
        audio = tf.io.decode_raw(parsed["audio"], tf.float32, little_endian=True)
    mel = tf.reshape(tf.io.decode_raw(parsed["mel"], tf.float32, little_endian=True), [-1, num_mels])
    mel_loss = tf.reshape(tf.io.decode_raw(parsed["mel_loss"], tf.float32, little_endian=True), [-1, num_mels])
    return {
        "id": parsed["id"],
        "audio": audio,
        "mel": mel,
        "mel_loss": mel_loss,
        "num_frames": tf.cast(parsed["num_frames"], tf.int32),
    }


def parse_numpy(serialized: bytes, num_mels: int, audio_encoding: str = "int16") -> dict[str, np.ndarray]:
    """The same as :func:`parse`, eagerly, to numpy (tests, tools)."""
    return {k: v.numpy() for k, v in parse(tf.constant(serialized), num_mels, audio_encoding).items()}
