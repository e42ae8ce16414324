"""The TFRecord schema: the one contract between the Beam writer, the tf.data reader and outside tools.

Each record is a ``tf.train.Example`` with
  - ``id``         bytes   the clip's file stem
  - ``audio``      bytes   little-endian int16 PCM (sample = round(x * 32767)) or float32 LE, see the manifest's
                           ``audio_encoding``; always ``num_frames * hop_size`` samples
  - ``mel``        bytes   float32 LE, row-major [num_frames, num_mels]: the model input (or a teacher-forced mel)
  - ``mel_loss``   bytes   float32 LE, row-major [num_frames, num_mels]: the mel for the L1 loss (fmax_for_loss)
  - ``num_frames`` int64

The writer encodes the Example's protobuf wire format itself (:func:`to_example`), so that Beam workers never
import TensorFlow (~6 s and ~500 MB per worker); its bytes are those of
``tf.train.Example.SerializeToString(deterministic=True)``. The readers, :func:`parse` (a whole record) and
:func:`parse_and_crop` (the trainer's random segment, decoding only its bytes), are TensorFlow's own, imported
when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from core.config import LOG_FLOOR_VALUE

if TYPE_CHECKING:
    import tensorflow as tf

SCHEMA_VERSION = 1
AUDIO_ENCODINGS = ("int16", "float32")
# NOTE: the order of the serialised feature map is that of deterministic serialisation by protobuf's upb backend
# (python protobuf >= 4, TensorFlow's): names sorted, except that a name is written after the longer names it is a
# prefix of ("mel_loss" before "mel"). Shards written before the hand-written encoder have this order.
FEATURE_NAMES = ("audio", "id", "mel_loss", "mel", "num_frames")
INT16_SCALE = 32767.0  # int16 audio: sample = round(x * INT16_SCALE)


def feature_spec() -> dict[str, tf.io.FixedLenFeature]:
    """``tf.io.parse_single_example``'s spec of the features (imports TensorFlow)."""
    import tensorflow as tf

    return {
        "id": tf.io.FixedLenFeature([], tf.string),
        "audio": tf.io.FixedLenFeature([], tf.string),
        "mel": tf.io.FixedLenFeature([], tf.string),
        "mel_loss": tf.io.FixedLenFeature([], tf.string),
        "num_frames": tf.io.FixedLenFeature([], tf.int64),
    }


def encode_audio(audio: np.ndarray, audio_encoding: str) -> bytes:
    """Audio [num_samples] float in [-1, 1] to the record's bytes."""
    if audio_encoding == "int16":
        scaled = np.asarray(audio) * INT16_SCALE
        np.rint(scaled, out=scaled)  # np.round's rounding (half to even), in place: one temporary in all
        return np.clip(scaled, -32768, 32767, out=scaled).astype("<i2").tobytes()
    if audio_encoding == "float32":
        return np.asarray(audio, dtype="<f4").tobytes()
    raise ValueError(f"unknown audio_encoding {audio_encoding!r}; expected one of {AUDIO_ENCODINGS}")


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, length: int) -> bytes:
    """The key and length of a length-delimited protobuf field (wire type 2)."""
    return _varint(field << 3 | 2) + _varint(length)


def _feature_entry(name: str, kind: int, payload: bytes | memoryview) -> list[bytes | memoryview]:
    """One entry of ``Features.feature`` (a map<string, Feature>) as pieces to join; the payload is not copied.

    ``kind`` is the Feature's field: 1 ``bytes_list`` (``payload`` is its one value) or 3 ``int64_list``
    (``payload`` is its packed varints). Every message is (key, length, content), so the headers go inside out.
    """
    value_list = _key(1, len(payload))  # BytesList / Int64List: value (field 1)
    feature = _key(kind, len(value_list) + len(payload))  # Feature: the list
    name_bytes = name.encode("ascii")
    entry = _key(1, len(name_bytes)) + name_bytes + _key(2, len(feature) + len(value_list) + len(payload))
    size = len(entry) + len(feature) + len(value_list) + len(payload)  # the map entry: key (1), value (2)
    return [_key(1, size), entry, feature, value_list, payload]


def _float32_bytes(array: np.ndarray) -> memoryview:
    """float32 LE row-major bytes of ``array`` without a copy when it already is one."""
    return memoryview(np.ascontiguousarray(array, dtype="<f4")).cast("B")


def to_example(clip_id: str, audio: np.ndarray, mel: np.ndarray, mel_loss: np.ndarray,
               audio_encoding: str = "int16") -> bytes:
    """Serialises one clip. audio [num_frames * hop_size], mel and mel_loss [num_frames, num_mels].

    The bytes equal ``tf.train.Example.SerializeToString(deterministic=True)`` of the same features (map entries
    in the order of :data:`FEATURE_NAMES`), so every runner and process writes byte-identical shards.
    """
    num_frames = mel.shape[0]
    if mel_loss.shape != mel.shape:
        raise ValueError(f"{clip_id}: mel {mel.shape} and mel_loss {mel_loss.shape} differ")
    if num_frames == 0 or audio.shape[0] % num_frames:
        raise ValueError(f"{clip_id}: {audio.shape[0]} samples do not split into {num_frames} frames")
    parts = (_feature_entry("audio", 1, encode_audio(audio, audio_encoding))
             + _feature_entry("id", 1, clip_id.encode("utf-8"))
             + _feature_entry("mel_loss", 1, _float32_bytes(mel_loss))
             + _feature_entry("mel", 1, _float32_bytes(mel))
             + _feature_entry("num_frames", 3, _varint(num_frames)))
    return b"".join([_key(1, sum(len(part) for part in parts))] + parts)  # Example{features: Features{...}}


def parse(serialized: tf.Tensor, num_mels: int, audio_encoding: str = "int16") -> dict[str, tf.Tensor]:
    """Parses one serialised record (graph-safe, for tf.data.map).

    Returns id (string), audio (float32 [num_samples] in [-1, 1]), mel and mel_loss (float32 [num_frames,
    num_mels]) and num_frames (int32).
    """
    import tensorflow as tf

    sample_dtype = _sample_dtype(audio_encoding)
    parsed = tf.io.parse_single_example(serialized, feature_spec())
    return {
        "id": parsed["id"],
        "audio": _audio(tf.io.decode_raw(parsed["audio"], sample_dtype, little_endian=True)),
        "mel": _rows(parsed["mel"], num_mels),
        "mel_loss": _rows(parsed["mel_loss"], num_mels),
        "num_frames": tf.cast(parsed["num_frames"], tf.int32),
    }


def parse_and_crop(serialized: tf.Tensor, key: tf.Tensor, num_mels: int, audio_encoding: str,
                   frames_per_segment: int, hop_size: int) -> dict[str, tf.Tensor]:
    """A random segment of one serialised record, on the frame grid (graph-safe, for tf.data.map).

    The start frame s is uniform in [0, T - F] (F = frames_per_segment) from the stateless ``key`` (int32/64
    [2]); returns mel and mel_loss [F, num_mels] = rows s..s+F and audio [F * hop_size] = samples
    s * hop .. (s + F) * hop. Only the segment's bytes are decoded, not the whole clip. A clip shorter than F
    frames is padded at the end: audio with zeros, mels with log(1e-5). NOTE: the original zero-pads the mels
    of short clips, i.e. pads with a loud log-magnitude of 0 (its issue #50, buzzing); log(1e-5) is what
    silence looks like.
    """
    import tensorflow as tf

    sample_dtype = _sample_dtype(audio_encoding)
    spec = feature_spec()
    parsed = tf.io.parse_single_example(serialized, {k: spec[k] for k in ("audio", "mel", "mel_loss", "num_frames")})
    num_frames = tf.cast(parsed["num_frames"], tf.int32)
    max_start = tf.maximum(num_frames - frames_per_segment, 0)
    start = tf.random.stateless_uniform([], seed=key, minval=0, maxval=max_start + 1, dtype=tf.int32)
    frames = tf.minimum(frames_per_segment, num_frames - start)

    def segment(name: str, frame_bytes: int) -> tf.Tensor:  # frames start .. start + frames of a feature
        return tf.strings.substr(parsed[name], start * frame_bytes, frames * frame_bytes)

    missing = frames_per_segment - frames
    cropped = {name: tf.pad(_rows(segment(name, num_mels * 4), num_mels), [[0, missing], [0, 0]],
                            constant_values=LOG_FLOOR_VALUE) for name in ("mel", "mel_loss")}
    audio = tf.io.decode_raw(segment("audio", sample_dtype.size * hop_size), sample_dtype, little_endian=True)
    cropped["audio"] = tf.pad(_audio(audio), [[0, missing * hop_size]])
    return {
        "mel": tf.ensure_shape(cropped["mel"], [frames_per_segment, num_mels]),
        "mel_loss": tf.ensure_shape(cropped["mel_loss"], [frames_per_segment, num_mels]),
        "audio": tf.ensure_shape(cropped["audio"], [frames_per_segment * hop_size]),
    }


def _sample_dtype(audio_encoding: str) -> tf.DType:
    """The record's audio samples' dtype; ValueError for an unknown encoding."""
    import tensorflow as tf

    if audio_encoding not in AUDIO_ENCODINGS:
        raise ValueError(f"unknown audio_encoding {audio_encoding!r}; expected one of {AUDIO_ENCODINGS}")
    return tf.int16 if audio_encoding == "int16" else tf.float32


def _audio(samples: tf.Tensor) -> tf.Tensor:
    """Decoded samples (int16 or float32) as float32 in [-1, 1]."""
    import tensorflow as tf

    return tf.cast(samples, tf.float32) / INT16_SCALE if samples.dtype == tf.int16 else samples


def _rows(data: tf.Tensor, num_mels: int) -> tf.Tensor:
    """float32 LE row-major bytes as [frames, num_mels]."""
    import tensorflow as tf

    return tf.reshape(tf.io.decode_raw(data, tf.float32, little_endian=True), [-1, num_mels])


def parse_numpy(serialized: bytes, num_mels: int, audio_encoding: str = "int16") -> dict[str, np.ndarray]:
    """The same as :func:`parse`, eagerly, to numpy (tests, tools)."""
    import tensorflow as tf

    return {k: v.numpy() for k, v in parse(tf.constant(serialized), num_mels, audio_encoding).items()}
