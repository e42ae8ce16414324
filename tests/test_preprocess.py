"""The Beam job end to end on DirectRunner, read back with tf.data and core/records.parse alone."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import DEMO_TRAIN, DEMO_VAL, DEMO_WAVS, REPO_ROOT, chirp_with_noise, read_filelist_ids, write_audio
from core.filelist import audio_path, read_filelists
from core.manifest import MANIFEST_NAME, REJECTED_NAME
from core.mel import MelExtractor, mel_spectrogram
from core.storage import PathError
from pipeline.options import PreprocessOptions
from pipeline.runner import local_defaults, run
from pipeline.tfrecord_io import SPILL_DIR
from pipeline.transforms import num_shards_for, shard_of
from core.records import parse, to_example
from core.melfile import TeacherMelError, teacher_mel_layout

DIRECT = ["--runner", "DirectRunner"]
SR = 22050
HOP = 256
# int16 storage moves samples by up to 1/65534 (noise of ~3e-4 in an STFT magnitude); compared in the linear
# mel domain, where that noise is additive, the stored mel is the recomputed one within these.
INT16_LINEAR_MEL_ATOL = 2e-3
INT16_LINEAR_MEL_RTOL = 1e-3
EXACT_MEL_TOL = 1e-5  # float32 audio: the stored mel is the mel of the stored audio


def run_job(v1_config, out, filelists, audio_root=DEMO_WAVS, beam_args=DIRECT, **options):
    return run(v1_config, PreprocessOptions(filelists=filelists, audio_root=audio_root,
                                            output_dir=str(out), **options), list(beam_args))


def read_records(out, manifest, split):
    """Every record of a split, via tf.data and records.parse only."""
    files = [os.path.join(str(out), name) for name in manifest.splits[split].shards]
    num_mels = manifest.audio["num_mels"]
    dataset = tf.data.TFRecordDataset(files).map(lambda s: parse(s, num_mels, manifest.audio_encoding))
    return [{k: (v.decode() if k == "id" else v) for k, v in r.items()} for r in dataset.as_numpy_iterator()]


def shard_bytes(out):
    return {name: open(os.path.join(str(out), name), "rb").read()
            for name in sorted(os.listdir(str(out))) if name.endswith(".tfrecord")}


def rejected_lines(out):
    with open(os.path.join(str(out), REJECTED_NAME), encoding="utf-8") as f:
        return [json.loads(line) for line in f.read().splitlines()]


def write_filelist(path, lines):
    path.write_text("".join(f"{line}|some text\n" for line in lines))
    return str(path)


@pytest.fixture(scope="module")
def demo_run(v1_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    manifest = run_job(v1_config, out, {"train": DEMO_TRAIN, "val": DEMO_VAL}, num_shards=2)
    return out, manifest


def test_demo_corpus_end_to_end(v1_config, demo_run):
    out, manifest = demo_run
    cfg = v1_config.audio
    extractor = MelExtractor(cfg)
    names = sorted(os.listdir(str(out)))  # shards are named by their content (pipeline/commit.py)
    assert names[:3] == ["config.json", MANIFEST_NAME, REJECTED_NAME]
    assert [re.sub(r"-[0-9a-f]{12}\.tfrecord$", "", name) for name in names[3:]] == [
        f"{split}-0000{i}-of-00002" for split in ("train", "val") for i in (0, 1)]
    assert rejected_lines(out) == []
    assert manifest.audio_encoding == "int16" and not manifest.teacher_forced
    assert manifest.mismatch(cfg) is None
    for split, filelist in (("train", DEMO_TRAIN), ("val", DEMO_VAL)):
        records = read_records(out, manifest, split)
        summary = manifest.splits[split]
        assert sorted(r["id"] for r in records) == sorted(read_filelist_ids(filelist))
        assert summary.num_lines == summary.num_examples == len(records) and summary.num_rejected == 0
        assert summary.total_frames == sum(int(r["num_frames"]) for r in records)
        assert summary.total_seconds == pytest.approx(sum(r["audio"].size for r in records) / SR)
        assert summary.frame_trims == 0
        for r in records:
            frames = int(r["num_frames"])
            assert r["audio"].shape == (frames * HOP,)
            assert r["mel"].shape == r["mel_loss"].shape == (frames, cfg.num_mels)
            # training mode: peak-normalised to 0.95 before int16 storage
            assert np.max(np.abs(r["audio"])) == pytest.approx(0.95, abs=1e-4)
            mel, mel_loss = extractor(r["audio"])
            for stored, recomputed in ((r["mel"], mel), (r["mel_loss"], mel_loss)):
                np.testing.assert_allclose(np.exp(stored), np.exp(recomputed), atol=INT16_LINEAR_MEL_ATOL,
                                           rtol=INT16_LINEAR_MEL_RTOL)
    with open(os.path.join(str(out), "config.json"), encoding="utf-8") as f:
        assert json.load(f) == dict(v1_config.raw)


def _shard_ids(path):
    return [tf.train.Example.FromString(rec).features.feature["id"].bytes_list.value[0].decode()
            for rec in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]


def test_shards_follow_crc32_of_id(demo_run):
    out, manifest = demo_run
    for split, filelist in (("train", DEMO_TRAIN), ("val", DEMO_VAL)):
        seen = []
        for shard, name in enumerate(manifest.splits[split].shards):
            in_shard = _shard_ids(os.path.join(str(out), name))
            assert in_shard == sorted(in_shard)  # sorted by id inside a shard
            assert in_shard and all(shard_of(i, 2) == shard for i in in_shard)
            seen += in_shard
        assert sorted(seen) == sorted(read_filelist_ids(filelist))


@pytest.mark.parametrize("mode,workers", [("in_memory", 1), ("multi_processing", 2)])
def test_other_running_modes_write_the_same_shards(v1_config, demo_run, tmp_path, mode, workers):
    out, manifest = demo_run  # DirectRunner's default here: multi_threading, one thread per core
    beam_args = DIRECT + ["--direct_running_mode", mode, "--direct_num_workers", str(workers)]
    again = run_job(v1_config, tmp_path, {"train": DEMO_TRAIN, "val": DEMO_VAL}, beam_args=beam_args, num_shards=2)
    assert shard_bytes(tmp_path) == shard_bytes(out)
    assert again == manifest


def test_shards_are_what_tensorflow_writes(demo_run, tmp_path):
    """Records and TFRecord framing are written without TensorFlow; TensorFlow's writer gives the same bytes."""
    out, manifest = demo_run
    for name in manifest.splits["train"].shards + manifest.splits["val"].shards:
        path = os.path.join(str(out), name)
        records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())  # checks both CRCs of every record
        with tf.io.TFRecordWriter(str(tmp_path / name)) as writer:
            for record in records:
                example = tf.train.Example.FromString(record)
                writer.write(example.SerializeToString(deterministic=True))
        assert (tmp_path / name).read_bytes() == open(path, "rb").read()


@pytest.mark.parametrize("clip_id,frames,audio_encoding", [
    ("LJ001-0001", 300, "int16"),  # 2-byte varints for num_frames, 3-byte lengths
    ("", 1, "float32"),  # an empty id and one frame
    ("naïve-ünïcode" * 12, 2100, "float32"),  # a non-ASCII id of 2-byte length; 4-byte lengths (> 2 MiB audio)
])
def test_to_example_is_tensorflows_serialisation(v1_config, clip_id, frames, audio_encoding):
    num_mels = v1_config.audio.num_mels
    rng = np.random.default_rng(frames)
    audio = np.clip(rng.normal(0, 0.4, frames * HOP), -1.1, 1.1).astype(np.float32)  # a few samples clip in int16
    mel = rng.normal(-5, 2, (frames, num_mels)).astype(np.float32)
    mel_loss = rng.normal(-5, 2, (frames, num_mels)).astype(np.float32)
    record = to_example(clip_id, audio, mel, mel_loss, audio_encoding)
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2") if audio_encoding == "int16" else audio
    features = {"id": clip_id.encode("utf-8"), "audio": pcm.tobytes(), "mel": mel.tobytes(),
                "mel_loss": mel_loss.tobytes()}
    example = tf.train.Example(features=tf.train.Features(feature={
        **{k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v])) for k, v in features.items()},
        "num_frames": tf.train.Feature(int64_list=tf.train.Int64List(value=[frames]))}))
    assert record == example.SerializeToString(deterministic=True)
    parsed = next(tf.data.Dataset.from_tensors(record).map(lambda s: parse(s, num_mels, audio_encoding))
                  .as_numpy_iterator())
    assert parsed["id"].decode("utf-8") == clip_id and parsed["num_frames"] == frames
    np.testing.assert_array_equal(parsed["mel"], mel)
    np.testing.assert_array_equal(parsed["mel_loss"], mel_loss)
    expected_audio = pcm.astype(np.float32) / 32767.0 if audio_encoding == "int16" else audio
    np.testing.assert_array_equal(parsed["audio"], expected_audio)


def test_the_job_does_not_import_tensorflow(tmp_path):
    """Beam workers start without TensorFlow: the whole job runs in a process that never imports it."""
    ids = read_filelist_ids(DEMO_TRAIN)
    train, val = write_filelist(tmp_path / "train.txt", ids[:2]), write_filelist(tmp_path / "val.txt", ids[2:3])
    code = ("import sys; from core.config import load_config; from pipeline.options import PreprocessOptions; "
            "from pipeline.runner import run; "
            f"m = run(load_config('configs/v1.json'), PreprocessOptions("
            f"filelists={{'train': {train!r}, 'val': {val!r}}}, audio_root={DEMO_WAVS!r}, "
            f"output_dir={str(tmp_path / 'out')!r}), ['--runner', 'DirectRunner']); "
            "print(m.splits['train'].num_examples, m.splits['val'].num_examples, 'tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-3:] == ["2", "1", "False"]


def test_direct_runner_defaults_to_one_thread_per_core():
    cores = str(len(os.sched_getaffinity(0)))
    assert local_defaults([]) == ["--direct_running_mode", "multi_threading", "--direct_num_workers", cores]
    assert local_defaults(DIRECT) == DIRECT + ["--direct_running_mode", "multi_threading", "--direct_num_workers",
                                               cores]
    assert local_defaults(["--runner=DirectRunner", "--direct_num_workers=3"]) == [
        "--runner=DirectRunner", "--direct_num_workers=3", "--direct_running_mode", "multi_threading"]
    for explicit in (DIRECT + ["--direct_running_mode", "in_memory"], ["--direct_running_mode=multi_processing"],
                     ["--runner", "DataflowRunner", "--project", "p"],
                     ["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner"]):
        assert local_defaults(explicit) == explicit


def test_shard_of_an_id_does_not_depend_on_other_ids(v1_config, demo_run, tmp_path):
    out, manifest = demo_run
    ids = read_filelist_ids(DEMO_TRAIN)[::3]
    subset = write_filelist(tmp_path / "subset.txt", ids)
    empty = write_filelist(tmp_path / "empty.txt", [])
    results = []
    for attempt in ("a", "b"):
        manifest_sub = run_job(v1_config, tmp_path / attempt, {"train": subset, "val": empty}, num_shards=2)
        results.append(shard_bytes(tmp_path / attempt))
        assert manifest_sub.splits["val"].shards == [] and manifest_sub.splits["val"].num_lines == 0
    assert results[0] == results[1]  # same input twice: byte-identical shards
    def records_by_id(directory, names):
        return {i: (shard, rec) for shard, name in enumerate(names) for i, rec in zip(
            _shard_ids(os.path.join(str(directory), name)),
            tf.data.TFRecordDataset(os.path.join(str(directory), name)).as_numpy_iterator())}

    full = records_by_id(out, manifest.splits["train"].shards)
    subset_records = records_by_id(tmp_path / "b", manifest_sub.splits["train"].shards)
    assert sorted(subset_records) == sorted(ids)
    for clip_id, (shard, record) in subset_records.items():
        assert full[clip_id] == (shard, record)  # same shard, same bytes


def test_every_rejection_reason_is_reported_and_reconciled(v1_config, tmp_path):
    root = tmp_path / "audio"
    good = chirp_with_noise(1.0, SR)
    write_audio(root / "good_a.wav", good, SR)
    write_audio(root / "good_b.flac", good[::-1].copy(), SR, format="FLAC")
    write_audio(root / "dup.wav", good, SR)
    write_audio(root / "silent.wav", np.zeros(SR, np.float32), SR)
    write_audio(root / "empty.wav", np.zeros(0, np.float32), SR)
    write_audio(root / "short.wav", good[:300], SR)
    write_audio(root / "long.wav", chirp_with_noise(2.5, SR), SR)
    write_audio(root / "nan.wav", np.where(np.arange(SR) == 100, np.nan, good[:SR]).astype(np.float32), SR, "FLOAT")
    (root / "garbage.wav").write_bytes(b"this is not audio" * 10)
    write_audio(root / "x.y.z.wav", good, SR)  # a dotted stem gets .wav too
    write_audio(root / "val_ok.wav", good, SR)  # a split that writes no clip is an error (tests/test_dataset_commit.py)
    # A byte-order mark, a transcript that is not UTF-8 (latin-1) and a path that is not: only that line is lost.
    train = tmp_path / "train.txt"
    train.write_bytes(b"\xef\xbb\xbf" + b"".join(f"{line}|some text\n".encode() for line in [
        "good_a", "good_b.flac", "dup", "missing", "garbage", "silent", "", "empty", "short", "long"])
        + b"x.y.z|caf\xe9\nbad\xffname|text\n")
    train = str(train)
    val = write_filelist(tmp_path / "val.txt", [str(root / "nan.wav"), "./dup.wav", "val_ok"])
    out = tmp_path / "out"
    manifest = run_job(v1_config, out, {"train": train, "val": val}, audio_root=str(root), max_seconds=2.0,
                       max_rejected_fraction=1.0)
    rejected = rejected_lines(out)
    reasons = {(r["split"], os.path.basename(r["path"])): r["reason"] for r in rejected}
    assert reasons == {
        ("train", "missing.wav"): "missing_file", ("train", "garbage.wav"): "unreadable",
        ("train", "silent.wav"): "silent", ("train", "empty.wav"): "empty", ("train", "short.wav"): "empty",
        ("train", "long.wav"): "too_long", ("val", "nan.wav"): "non_finite", ("val", "dup.wav"): "duplicate_id",
        ("train", ""): "missing_file", ("train", "bad\ufffdname.wav"): "unreadable",
    }
    assert rejected == sorted(rejected, key=lambda r: (r["split"], r["path"], r["reason"], r["detail"]))
    assert all(set(r) == {"path", "split", "reason", "detail"} and r["detail"] for r in rejected)
    detail = {os.path.basename(r["path"]): r["detail"] for r in rejected}
    assert "train.txt:3" in detail["dup.wav"]
    assert detail[""].endswith("train.txt:7: line has no path")
    assert detail["bad\ufffdname.wav"].endswith("train.txt:12: path is not valid UTF-8")
    assert detail["garbage.wav"].endswith("train.txt:5: cannot decode audio (Format not recognised)")
    train_summary, val_summary = manifest.splits["train"], manifest.splits["val"]
    assert (train_summary.num_lines, train_summary.num_examples, train_summary.num_rejected) == (12, 4, 8)
    assert (val_summary.num_lines, val_summary.num_examples, val_summary.num_rejected) == (3, 1, 2)
    assert train_summary.rejected_reasons == {"empty": 2, "missing_file": 2, "unreadable": 2, "silent": 1,
                                              "too_long": 1}
    assert sorted(r["id"] for r in read_records(out, manifest, "train")) == ["dup", "good_a", "good_b", "x.y.z"]
    assert not os.path.exists(out / SPILL_DIR)


def _teacher_case(root, mel_dir, clip_id, seconds, seed):
    audio = chirp_with_noise(seconds, SR, seed=seed, amplitude=0.3)
    write_audio(root / f"{clip_id}.wav", audio, SR, "FLOAT")
    return audio


def test_fine_tune_mode_with_teacher_mels(v1_config, tmp_path):
    cfg = v1_config.audio
    root, mel_dir = tmp_path / "audio", tmp_path / "mels"
    mel_dir.mkdir()
    frames_of = {}
    cases = {  # id: (frame-count offset of the teacher mel, its layout)
        "nm_t": (0, "nm_t"), "one_nm_t": (0, "one_nm_t"), "t_nm": (0, "t_nm"), "plus_one": (1, "nm_t"),
        "minus_two": (-2, "t_nm"), "plus_three": (3, "nm_t"), "nan": (0, "nm_t"), "wrong_mels": (0, "t_79"),
        "missing": None, "garbage": None, "spk.v2": (0, "nm_t"), "complex": (0, "complex"), "int32": (0, "int32"),
    }
    teachers = {}
    for seed, (clip_id, case) in enumerate(cases.items()):
        audio = _teacher_case(root, mel_dir, clip_id, 0.5 + 0.05 * seed, seed)
        frames_of[clip_id] = cfg.num_frames(audio.size)
        if case is None:
            continue
        offset, layout = case
        rng = np.random.default_rng(seed)
        teacher = rng.normal(-5, 2, (frames_of[clip_id] + offset, cfg.num_mels)).astype(np.float32)
        if clip_id == "nan":
            teacher[3, 4] = np.nan
        teachers[clip_id] = teacher
        stored = {"nm_t": teacher.T, "one_nm_t": teacher.T[None], "t_nm": teacher,
                  "t_79": teacher[:, :79], "complex": teacher.T, "int32": teacher.T}[layout]
        dtype = {"t_nm": np.float64, "complex": np.complex64, "int32": np.int32}.get(layout, np.float32)
        np.save(mel_dir / f"{clip_id}.npy", stored.astype(dtype))
    # a square teacher mel (num_mels frames) is read in the original's (num_mels, T) layout
    square_audio = _teacher_case(root, mel_dir, "square", cfg.num_mels * HOP / SR, 99)
    teachers["square"] = np.random.default_rng(99).normal(-5, 2, (cfg.num_mels, cfg.num_mels)).astype(np.float32)
    np.save(mel_dir / "square.npy", teachers["square"].T)
    frames_of["square"] = cfg.num_frames(square_audio.size)
    (mel_dir / "garbage.npy").write_bytes(b"not numpy")
    train = write_filelist(tmp_path / "train.txt", list(cases) + ["square"])
    val = write_filelist(tmp_path / "val.txt", [])
    out = tmp_path / "out"
    manifest = run_job(v1_config, out, {"train": train, "val": val}, audio_root=str(root),
                       base_mels_path=str(mel_dir), audio_encoding="float32", max_rejected_fraction=1.0)
    reasons = {os.path.basename(r["path"]): r["reason"] for r in rejected_lines(out)}
    assert reasons == {"plus_three.wav": "teacher_mel_mismatch", "nan.wav": "teacher_mel_non_finite",
                       "wrong_mels.wav": "teacher_mel_shape", "missing.wav": "teacher_mel_missing",
                       "garbage.wav": "teacher_mel_unreadable", "complex.wav": "teacher_mel_unreadable",
                       "int32.wav": "teacher_mel_unreadable"}
    details = {os.path.basename(r["path"]): r["detail"] for r in rejected_lines(out)}
    assert details["complex.wav"].endswith("complex.npy: cannot read teacher mel (dtype complex64 is not floating "
                                           "point)")
    assert "dtype int32 is not floating point" in details["int32.wav"]
    summary = manifest.splits["train"]
    assert manifest.teacher_forced and manifest.audio_encoding == "float32"
    assert (summary.num_lines, summary.num_examples, summary.num_rejected, summary.frame_trims) == (14, 7, 7, 2)
    records = {r["id"]: r for r in read_records(out, manifest, "train")}
    # a dotted id finds its teacher mel <id>.npy
    assert sorted(records) == ["minus_two", "nm_t", "one_nm_t", "plus_one", "spk.v2", "square", "t_nm"]
    for clip_id, r in records.items():
        frames = min(frames_of[clip_id], teachers[clip_id].shape[0])
        assert int(r["num_frames"]) == frames and r["audio"].shape == (frames * HOP,)
        np.testing.assert_array_equal(r["mel"], teachers[clip_id][:frames])
        # fine-tune mode: the audio is not normalised; float32 storage keeps it exactly
        source = chirp_with_noise(0.5 + 0.05 * list(cases).index(clip_id), SR, seed=list(cases).index(clip_id),
                                  amplitude=0.3) if clip_id != "square" else square_audio
        np.testing.assert_array_equal(r["audio"], source[:frames * HOP])
        np.testing.assert_allclose(r["mel_loss"], mel_spectrogram(r["audio"], cfg, for_loss=True), atol=EXACT_MEL_TOL)


def test_teacher_mel_layouts():
    mel = np.arange(12, dtype=np.float64).reshape(4, 3)  # [T=4, num_mels=3]
    for stored in (mel, mel.T, mel.T[None]):
        out = teacher_mel_layout(stored, 3)
        assert out.dtype == np.float32 and out.shape == (4, 3)
        np.testing.assert_array_equal(out, mel)
    with pytest.raises(TeacherMelError) as err:
        teacher_mel_layout(np.zeros((4, 5)), 3)
    assert err.value.reason == "teacher_mel_shape"


def test_filelist_conventions(tmp_path):
    assert audio_path("root", "LJ001-0001") == os.path.join("root", "LJ001-0001.wav")
    assert audio_path("root", "./LJSpeech-1.1/wavs/LJ050-0234.wav") == os.path.join(
        "root", "LJSpeech-1.1", "wavs", "LJ050-0234.wav")
    assert audio_path("root", "/abs/clip.flac") == "/abs/clip.flac"
    assert audio_path("root", "gs://bucket/clip") == "gs://bucket/clip.wav"
    # only audio extensions are extensions: dotted stems get .wav, ids keep their dots
    assert audio_path("root", "x.y.z") == os.path.join("root", "x.y.z.wav")
    assert audio_path("root", "spk.v2") == os.path.join("root", "spk.v2.wav")
    assert audio_path("root", "a/clip.FLAC") == os.path.join("root", "a", "clip.FLAC")
    listed = tmp_path / "dotted.txt"
    listed.write_text("x.y.z|t\na/LJ001-0001.wav|t\nspk.v2|t\nb/c.d.Wav|t\n")
    assert [e.clip_id for e in read_filelists({"train": str(listed)}, "root")[0]] == [
        "x.y.z", "LJ001-0001", "spk.v2", "c.d"]
    original = os.path.join(REPO_ROOT, "filelists", "ljs_audio_text_val.txt")
    entries, rejected, lines = read_filelists({"val": original}, "data")
    assert lines == {"val": 100} and len(entries) == 100 and rejected == []
    assert entries[0].clip_id == "LJ016-0288" and entries[0].path.endswith("LJSpeech-1.1/wavs/LJ016-0288.wav")


def test_shard_counts():
    assert num_shards_for(0, 0, None) == 0
    assert num_shards_for(0, 0, 4) == 0
    assert num_shards_for(3, 10 ** 10, None) == 3  # never more shards than records
    assert num_shards_for(100, 10 ** 6, None) == 1
    assert num_shards_for(13100, 9 * 2 ** 30, None, target_bytes=150 * 2 ** 20) == 62
    assert num_shards_for(5, 10, 2) == 2 and num_shards_for(1, 10, 2) == 1


def test_absolute_paths_need_no_audio_root(v1_config, tmp_path):
    """A missing local audio root is an error only when a line is relative to it."""
    ids = read_filelist_ids(DEMO_TRAIN)[:2]
    train = write_filelist(tmp_path / "train.txt", [os.path.join(DEMO_WAVS, f"{i}.wav") for i in ids])
    val = write_filelist(tmp_path / "val.txt", [])
    manifest = run_job(v1_config, tmp_path / "out", {"train": train, "val": val}, audio_root=str(tmp_path / "nope"))
    assert manifest.splits["train"].num_examples == 2
    relative = write_filelist(tmp_path / "relative.txt", ids[:1])
    with pytest.raises(PathError, match="nope: audio root not found"):
        run_job(v1_config, tmp_path / "out2", {"train": relative, "val": val}, audio_root=str(tmp_path / "nope"))


def _cli(*args):
    return subprocess.run([sys.executable, "run_preprocess.py", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)


def test_cli_one_line_errors(tmp_path):
    missing = _cli("--train_filelist", str(tmp_path / "nope.txt"), "--output_dir", str(tmp_path / "out"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"resblock": "1"}))
    bad_config = _cli("--config", str(bad), "--output_dir", str(tmp_path / "out"))
    # Paths the job could not write or read: found before it starts, not as a worker's traceback.
    (tmp_path / "a_file").write_text("")
    under_a_file = _cli("--output_dir", str(tmp_path / "a_file" / "out"))
    unknown_scheme = _cli("--output_dir", "nosuchfs://bucket/out")
    remote_filelist = _cli("--train_filelist", "nosuchfs://bucket/train.txt", "--output_dir", str(tmp_path / "out"))
    # A missing local input directory would reject every line and exit 0; a runner Beam does not know.
    no_audio_root = _cli("--audio_root", str(tmp_path / "no_wavs"), "--output_dir", str(tmp_path / "out"))
    no_mels = _cli("--base_mels_path", str(tmp_path / "a_file"), "--output_dir", str(tmp_path / "out"))
    bogus_runner = _cli("--runner", "BogusRunner", "--output_dir", str(tmp_path / "out"))
    # Misspelled flags of ours would go to Beam, which drops them, and the job would run on the defaults.
    dashed = _cli("--audio-root", str(tmp_path), "--output_dir", str(tmp_path / "out"))
    typo = _cli("--trian_filelist", "x.txt", "--output_dir", str(tmp_path / "out"))
    for result, words in ((missing, "nope.txt: cannot read filelist"), (bad_config, "bad.json: config key"),
                          (under_a_file, "a_file/out: cannot write to this output directory: NotADirectoryError"),
                          (unknown_scheme, "nosuchfs://bucket/out: Beam cannot use the output directory's filesystem"),
                          (remote_filelist, "nosuchfs://bucket/train.txt: Beam cannot use the filelist's filesystem"),
                          (no_audio_root, "no_wavs: audio root not found"),
                          (no_mels, "a_file: teacher mel directory is not a directory"),
                          (bogus_runner, "cannot use Beam runner BogusRunner: Unexpected pipeline runner"),
                          (dashed, "unknown flag --audio-root (did you mean --audio_root?)"),
                          (typo, "unknown flag --trian_filelist (did you mean --train_filelist?)")):
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("run_preprocess.py: error: ")
        assert words in result.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "out")


def test_misspelled_flags_only(capsys):
    """Our flags misspelled are errors; Beam's own flags, and others no flag of ours resembles, pass through."""
    import run_preprocess

    beam_flags = ["--runner", "DirectRunner", "--direct_num_workers", "2", "--direct_running_mode", "in_memory",
                  "--project", "p", "--temp_location", "gs://b/tmp", "--dask_client_address", "tcp://h:8786",
                  "--flink_master", "localhost:8081", "--environment_type", "LOOPBACK", "--num_workers", "3",
                  "--region", "r", "--setup_file", "./setup.py", "--output_dir=x"]
    assert run_preprocess.parse_args(beam_flags)[1] == beam_flags[:-1]
    for flag in ("--val-filelist=v.txt", "--max_secnods", "--base_mel_path", "--audio_encodng"):
        with pytest.raises(SystemExit) as exit_:
            run_preprocess.parse_args([flag, "1"])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.count("\n") == 1


def test_cli_runs_and_prints_the_summary(tmp_path):
    train = write_filelist(tmp_path / "train.txt", read_filelist_ids(DEMO_TRAIN)[:2] + ["nope"])
    val = write_filelist(tmp_path / "val.txt", read_filelist_ids(DEMO_VAL)[:1])
    result = _cli("--train_filelist", train, "--val_filelist", val, "--output_dir", str(tmp_path / "out"),
                  "--runner", "DirectRunner", "--max_rejected_fraction", "0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train: 3 lines, 2 clips written, 1 rejected (missing_file 1)" in result.stdout
    assert "val: 1 lines, 1 clips written, 0 rejected" in result.stdout
    assert rejected_lines(tmp_path / "out")[0]["reason"] == "missing_file"
    assert "WARNING --audio_root is the demo's (demo/wavs)" in result.stderr  # own filelists, the demo's root
    assert not [name for name in os.listdir(tmp_path / "out") if "probe" in name]
