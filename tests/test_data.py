"""The streaming input: crops on the frame grid, padding of short clips, determinism, sharding."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from model import data
from core.config import LOG_FLOOR_VALUE
from tests.train_helpers import debug_config, tone_shards, write_shards

CFG = debug_config()
HOP, F, NUM_MELS = CFG.audio.hop_size, CFG.frames_per_segment, CFG.audio.num_mels


def indexed_clips(lengths):
    """Clips whose values encode (clip, position): audio[n] = 1000 * (k + 1) * hop + n, mel[t] = 1000 * (k + 1) + t."""
    clips, mels = [], []
    for k, frames in enumerate(lengths):
        base = 1000 * (k + 1)
        clips.append((base * HOP + np.arange(frames * HOP)).astype(np.float32))
        mel = np.repeat((base + np.arange(frames, dtype=np.float32))[:, None], NUM_MELS, axis=1)
        mels.append((mel, -mel))
    return clips, mels


@pytest.fixture(scope="module")
def indexed_dir(tmp_path_factory):
    lengths = [F + 9, F + 30, F, 2 * F + 5, 5, F + 1, 3 * F, F + 17]
    clips, mels = indexed_clips(lengths)
    path = tmp_path_factory.mktemp("indexed")
    manifest = write_shards(path, CFG, {"train": clips, "val": clips[:2]}, num_shards={"train": 3},
                            audio_encoding="float32", mels={"train": mels, "val": mels[:2]})
    return str(path), manifest, lengths


def batches(path, manifest, seed, epoch, **kwargs):
    ds = data.train_dataset(path, manifest, CFG, seed, epoch, batch_size=2, **kwargs)
    return [{k: v.numpy() for k, v in b.items()} for b in ds]


def test_crop_alignment_over_many_seeds(indexed_dir):
    path, manifest, lengths = indexed_dir
    starts = {k: set() for k in range(len(lengths))}
    for seed in range(40):
        for batch in batches(path, manifest, seed, epoch=seed % 3):
            for mel, mel_loss, audio in zip(batch["mel"], batch["mel_loss"], batch["audio"]):
                k, s = int(mel[0, 0]) // 1000 - 1, int(mel[0, 0]) % 1000
                frames = min(lengths[k], F)
                base = 1000 * (k + 1)
                np.testing.assert_array_equal(mel[:frames, 0], base + s + np.arange(frames))
                np.testing.assert_array_equal(mel_loss[:frames], -mel[:frames])
                # The audio crop is exactly the samples of the cropped frames.
                np.testing.assert_array_equal(audio[:frames * HOP], base * HOP + s * HOP + np.arange(frames * HOP))
                assert 0 <= s <= max(lengths[k] - F, 0)
                starts[k].add(s)
    # Starts are drawn over the whole range [0, T - F], both ends included.
    assert starts[1] and min(starts[1]) <= 3 and max(starts[1]) >= 27
    assert starts[2] == {0}


def test_int16_crop_is_the_decoded_clip_sliced(tmp_path):
    # Only the segment's bytes are decoded: the crop equals slicing the fully decoded int16 clip, short clip too.
    rng = np.random.default_rng(0)
    lengths = [F + 23, 3]
    clips = [rng.uniform(-0.9, 0.9, frames * HOP).astype(np.float32) for frames in lengths]
    _, mels = indexed_clips(lengths)
    manifest = write_shards(tmp_path, CFG, {"train": clips}, mels={"train": mels})
    assert manifest.audio_encoding == "int16"
    decoded = [np.round(clip * 32767) / 32767 for clip in clips]
    seen = set()
    for seed in range(6):
        (batch,) = batches(tmp_path, manifest, seed, 0)
        for mel, audio in zip(batch["mel"], batch["audio"]):
            k, s = int(mel[0, 0]) // 1000 - 1, int(mel[0, 0]) % 1000
            frames = min(lengths[k], F)
            np.testing.assert_allclose(audio[:frames * HOP], decoded[k][s * HOP:(s + frames) * HOP], atol=1e-7)
            assert np.all(audio[frames * HOP:] == 0)
            seen.add(k)
    assert seen == {0, 1}


def test_short_clip_is_padded_with_silence(indexed_dir):
    path, manifest, lengths = indexed_dir
    short = lengths.index(5)
    seen = 0
    for batch in batches(path, manifest, seed=3, epoch=0):
        for mel, mel_loss, audio in zip(batch["mel"], batch["mel_loss"], batch["audio"]):
            if int(mel[0, 0]) // 1000 - 1 != short:
                continue
            seen += 1
            np.testing.assert_array_equal(mel[:5, 0], 1000 * (short + 1) + np.arange(5))
            np.testing.assert_allclose(mel[5:], LOG_FLOOR_VALUE)
            np.testing.assert_allclose(mel_loss[5:], LOG_FLOOR_VALUE)
            assert np.all(audio[5 * HOP:] == 0) and audio.shape == (F * HOP,)
    assert seen == 1


def test_order_is_a_function_of_seed_and_epoch(indexed_dir):
    path, manifest, _ = indexed_dir
    first, again = batches(path, manifest, 7, 1), batches(path, manifest, 7, 1)
    assert len(first) == manifest.splits["train"].num_examples // 2
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other_epoch = batches(path, manifest, 7, 2)
    assert any(not np.array_equal(a["mel"], b["mel"]) for a, b in zip(first, other_epoch))
    # Resuming mid-epoch: skipping consumed batches gives the rest of the same epoch.
    rest = batches(path, manifest, 7, 1, skip_batches=2)
    assert len(rest) == len(first) - 2
    for a, b in zip(first[2:], rest):
        np.testing.assert_array_equal(a["audio"], b["audio"])


def test_two_input_pipelines_see_the_same_global_batches(indexed_dir):
    path, manifest, _ = indexed_dir
    whole = [b["mel"] for b in batches(path, manifest, 5, 0)]
    parts = [[b["mel"] for b in data.train_dataset(path, manifest, CFG, 5, 0, batch_size=1, num_shards=2,
                                                    shard_index=i).as_numpy_iterator()] for i in range(2)]
    for step, mel in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([parts[0][step], parts[1][step]]), mel)


def test_validation_yields_whole_clips(tmp_path):
    manifest = tone_shards(tmp_path, CFG, num_train=2, num_val=3, frames=(10, 30))
    clips = list(data.validation_dataset(str(tmp_path), manifest, CFG))
    assert len(clips) == 3
    for clip in clips:
        frames = int(clip["num_frames"][0])
        assert clip["mel"].shape == (1, frames, NUM_MELS)
        assert clip["audio"].shape == (1, frames * HOP)
    assert data.steps_per_epoch(manifest, 2) == 1


def test_missing_manifest_is_a_one_line_error(tmp_path):
    with pytest.raises(data.DataError, match="manifest.json: not found") as err:
        data.load_manifest(str(tmp_path))
    assert "\n" not in str(err.value)


# Devices are fixed when TensorFlow starts: two logical CPUs need a process of their own.
TWO_REPLICAS = """
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from model import data
from tests.conftest import TEST_SEED
from tests.train_helpers import debug_config
keras.utils.set_random_seed(TEST_SEED)  # NOTE: tf.data's seeded shuffles also depend on the global seed
path, out = sys.argv[1:]
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
dist = data.distributed_train_dataset(strategy, path, data.load_manifest(path), debug_config(batch_size=2), 4, 0)
steps = {}
for step, batch in enumerate(dist):
    for key, value in batch.items():
        parts = [p.numpy() for p in strategy.experimental_local_results(value)]
        assert len(parts) == 2 and all(len(p) == 1 for p in parts), [p.shape for p in parts]
        steps[f"{key}/{step}"] = np.concatenate(parts)
np.savez(out, **steps)
"""


def test_distributed_dataset_over_two_replicas_matches_every_global_batch(indexed_dir, tmp_path):
    path, manifest, _ = indexed_dir
    out = tmp_path / "replicas.npz"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", TWO_REPLICAS, path, str(out)], cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = batches(path, manifest, 4, 0)
    with np.load(out) as got:
        assert len(got.files) == len(plain) * len(plain[0])
        for step, batch in enumerate(plain):  # replica 0's clip then replica 1's: the same global batch
            for key, value in batch.items():
                np.testing.assert_array_equal(got[f"{key}/{step}"], value, err_msg=f"{key} at step {step}")


def test_missing_shard_is_a_one_line_error(tmp_path):
    manifest = tone_shards(tmp_path, CFG, num_train=4, num_val=1, num_shards={"train": 2})
    data.check_shards_exist(str(tmp_path), manifest)
    (tmp_path / "train-00000-of-00002.tfrecord").unlink()
    (tmp_path / "val-00000-of-00001.tfrecord").unlink()
    with pytest.raises(data.DataError, match=f"^{tmp_path}: shard train-00000-of-00002.tfrecord \\(and 1 more\\) "
                                             "listed in manifest.json does not exist$"):
        data.check_shards_exist(str(tmp_path), manifest)


def test_unreadable_shards_are_one_line_errors_naming_the_data_dir(tmp_path):
    manifest = tone_shards(tmp_path, CFG, num_train=4, num_val=1)
    shard = tmp_path / "train-00000-of-00001.tfrecord"
    raw = bytearray(shard.read_bytes())
    raw[12:20] = b"\xff" * 8  # the first record's data: its checksum no longer matches
    shard.write_bytes(bytes(raw))
    read = lambda: list(data.checked_read(data.train_dataset(str(tmp_path), manifest, CFG, 0, 0), str(tmp_path),  # noqa
                                          manifest))
    with pytest.raises(data.DataError, match=f"^{tmp_path}: cannot read a shard \\(DataLossError: corrupted record "
                                             "at 12\\); run run_preprocess.py again") as err:
        read()
    assert "\n" not in str(err.value)
    val = tmp_path / "val-00000-of-00001.tfrecord"
    val.write_bytes(val.read_bytes()[:-100])
    with pytest.raises(data.DataError, match=f"^{tmp_path}: cannot read a shard \\(DataLossError: truncated record"):
        list(data.checked_read(data.validation_dataset(str(tmp_path), manifest, CFG), str(tmp_path), manifest))
    shard.unlink()  # gone after the manifest was checked: TensorFlow's message names it
    with pytest.raises(data.DataError, match=f"^{tmp_path}: cannot read shard train-00000-of-00001.tfrecord "
                                             "\\(NotFoundError: .*No such file or directory\\)"):
        read()


def test_too_few_clips_for_a_batch_names_the_data_dir(tmp_path):
    manifest = tone_shards(tmp_path, CFG, num_train=1, num_val=1)
    with pytest.raises(data.DataError, match=f"^{tmp_path}: the train split has 1 clips, fewer than one batch of 2$"):
        data.steps_per_epoch(manifest, 2, str(tmp_path))
    with pytest.raises(data.DataError, match=f"^{tmp_path}: the train split has 1 clips"):
        data.distributed_train_dataset(tf.distribute.get_strategy(), str(tmp_path), manifest, CFG, 0, 0)
