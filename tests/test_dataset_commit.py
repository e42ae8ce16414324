"""A dataset is committed as a whole (pipeline/commit.py): kill -9 and Ctrl-C of a real run_preprocess.py at
named points, reruns into a directory of another dataset, the rejection guard, and the trainer's shard checks.

Kill points are deterministic: HIFIGAN_TEST_KILL_AT=<point>:<n>:<signal> makes the job signal itself the n-th
time it reaches the point (pipeline.commit.kill_point), on one worker thread. Tiny config, eight numpy clips.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, chirp_with_noise, write_audio
from core.config import load_config
from core.manifest import MANIFEST_NAME, REJECTED_NAME
from model import data
from pipeline import commit as commit_lib
from pipeline.commit import KILL_AT_ENV, CommitError, DatasetError
from pipeline.job_errors import JobError
from pipeline.options import PreprocessOptions
from pipeline.runner import run
from pipeline.tfrecord_io import write_text
from tests.test_core import durable_writes

DEBUG = os.path.join(REPO_ROOT, "configs", "debug.json")
SR = 8000
TRAIN_IDS = [f"clip{k}" for k in range(6)]
VAL_IDS = ["val0", "val1"]
INTERRUPTED = "run_preprocess.py: interrupted; "


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Eight 0.2-0.3 s clips, the filelists, the debug config and one of another fingerprint (more mels)."""
    root = tmp_path_factory.mktemp("corpus")
    for k, clip_id in enumerate(TRAIN_IDS + VAL_IDS):
        write_audio(root / "wavs" / f"{clip_id}.wav", chirp_with_noise(0.2 + 0.02 * k, SR, seed=k), SR)
    for split, ids in (("train", TRAIN_IDS), ("val", VAL_IDS)):
        (root / f"{split}.txt").write_text("".join(f"{clip_id}|text\n" for clip_id in ids))
    with open(DEBUG, encoding="utf-8") as f:
        other = json.load(f)
    other["num_mels"] = 24
    (root / "other.json").write_text(json.dumps(other))
    return root


def command(corpus, out, *flags, config=DEBUG, train="train.txt", audio_root="wavs"):
    return [sys.executable, "run_preprocess.py", "--config", str(config), "--train_filelist", str(corpus / train),
            "--val_filelist", str(corpus / "val.txt"), "--audio_root", str(corpus / audio_root),
            "--output_dir", str(out), "--num_shards", "2", "--runner", "DirectRunner", "--direct_num_workers", "1",
            *flags]


def preprocess(corpus, out, *flags, kill_at=None, **kwargs):
    env = {k: v for k, v in os.environ.items() if k != KILL_AT_ENV}
    if kill_at:
        env[KILL_AT_ENV] = kill_at
    return subprocess.run(command(corpus, out, *flags, **kwargs), cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def files(out) -> dict[str, bytes]:
    """Every file under ``out`` (temporary files and the spill directory included), by relative path."""
    found = {}
    for directory, _, names in os.walk(out):
        for name in names:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, out)] = open(path, "rb").read()
    return found


def assert_consistent(out, num_mels=20):
    """What the trainer checks before it reads: manifest.json, and every shard it lists with its size and CRC."""
    manifest = data.load_manifest(str(out))
    assert manifest.audio["num_mels"] == num_mels
    data.verify_shards(str(out), manifest)
    return manifest


def assert_one_line(result, status, words):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert words in lines[-1], lines[-1]
    assert not [line for line in lines if " ERROR " in line or line.startswith("  File")]


@pytest.fixture(scope="module")
def expected(corpus, tmp_path_factory):
    """The files of an uninterrupted run into an empty directory."""
    out = tmp_path_factory.mktemp("expected")
    result = preprocess(corpus, out)
    assert result.returncode == 0, result.stderr[-3000:]
    return files(out)


def run_in_process(corpus, out, train="train.txt", val="val.txt", audio_root="wavs", **options):
    """The job of ``command`` without a process of its own (for runs that are not killed)."""
    options = PreprocessOptions(**{"num_shards": 2, **options}, audio_root=str(corpus / audio_root),
                                filelists={"train": str(corpus / train), "val": str(corpus / val)},
                                output_dir=str(out))
    return run(load_config(DEBUG), options, ["--runner", "DirectRunner", "--direct_num_workers", "1"])


@pytest.fixture(scope="module")
def three_shards(corpus, tmp_path_factory):
    """A committed dataset of the same kind as ``expected``, in three shards per split (other names)."""
    out = tmp_path_factory.mktemp("three")
    run_in_process(corpus, out, num_shards=3)
    return out


def copy_of(expected, out):
    out.mkdir()
    for name, content in expected.items():
        (out / name).write_bytes(content)
    return out


def test_an_uninterrupted_run_commits_content_addressed_shards(expected):
    shards = sorted(name for name in expected if name.endswith(".tfrecord"))
    assert [name[:-len("-0123456789ab.tfrecord")] for name in shards] == [
        "train-00000-of-00002", "train-00001-of-00002", "val-00000-of-00002", "val-00001-of-00002"]
    assert sorted(expected) == sorted(shards + ["config.json", MANIFEST_NAME, REJECTED_NAME])
    manifest = json.loads(expected[MANIFEST_NAME])
    for split in manifest["splits"].values():
        for name in split["shards"]:
            assert split["shard_files"][name]["num_bytes"] == len(expected[name])


# (where the job starts, the kill point): before the shard renames, during them, after them with the manifest
# written but not renamed, and committed but not yet cleaned up. (Killed with the pending manifest written: in
# test_another_config_killed_before_its_commit_leaves_the_old_dataset.)
KILLS = [("empty", "shard_written:1:SIGKILL"), ("three_shards", "shard_renamed:2:SIGINT"),
         ("three_shards", "committing:1:SIGINT"), ("three_shards", "committed:1:SIGKILL")]


@pytest.mark.parametrize("start, kill_at", KILLS)
def test_killed_then_rerun_gives_byte_identical_output(corpus, expected, three_shards, tmp_path, start, kill_at):
    out = tmp_path / "out"
    if start == "three_shards":
        shutil.copytree(three_shards, out)
    killed = preprocess(corpus, out, kill_at=kill_at)
    if kill_at.endswith("SIGKILL"):
        assert killed.returncode == -9, killed.stderr[-3000:]
    else:
        assert_one_line(killed, 130, INTERRUPTED + f"{out} keeps its last committed dataset")
    # A reader sees the old complete dataset or the new one, never a mix; none at all before the first commit.
    if start == "empty":
        assert not (out / MANIFEST_NAME).exists()
    else:
        manifest = assert_consistent(out)
        committed = kill_at.startswith("committed")
        assert len(manifest.splits["train"].shards) == (2 if committed else 3)
    rerun = preprocess(corpus, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert files(out) == expected  # the same names and bytes; no stale shard, no temporary file, no _tmp/
    assert_consistent(out)


def test_another_config_killed_before_its_commit_leaves_the_old_dataset(corpus, expected, tmp_path):
    out = copy_of(expected, tmp_path / "out")
    other = corpus / "other.json"
    refused = preprocess(corpus, out, config=other)
    assert_one_line(refused, 2, f"{out} holds a dataset of another audio fingerprint (num_mels 20 there, 24 here); "
                                "pass --overwrite to replace it or choose another --output_dir")
    with pytest.raises(DatasetError, match="^.* holds a dataset of another audio encoding \\(int16 there, float32 "
                                           "here\\); pass --overwrite"):
        run_in_process(corpus, out, audio_encoding="float32")
    assert files(out) == expected  # refused before the job started
    killed = preprocess(corpus, out, "--overwrite", config=other, kill_at="pending_written:1:SIGKILL")
    assert killed.returncode == -9
    left = files(out)
    assert len([name for name in left if name.endswith(".tfrecord")]) == 8  # the new shards lie beside the old
    assert left[MANIFEST_NAME] == expected[MANIFEST_NAME]
    assert assert_consistent(out).mismatch(load_config(DEBUG).audio) is None  # the trainer reads the old dataset
    done = preprocess(corpus, out, "--overwrite", config=other)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = assert_consistent(out, num_mels=24)  # and the old shards are gone
    shards = {name for name in files(out) if name.endswith(".tfrecord")}
    assert shards == {name for split in manifest.splits.values() for name in split.shards}
    assert len(shards - set(expected)) == 3  # one val shard holds no clip, in both datasets: the same (empty) file


def test_a_job_that_rejects_too_much_commits_nothing(corpus, expected, tmp_path):
    (corpus / "some_missing.txt").write_text((corpus / "train.txt").read_text() + "nope1|t\nnope2|t\n")
    guarded = preprocess(corpus, tmp_path / "new", train="some_missing.txt")
    assert_one_line(guarded, 2, "split train: 2 of 8 lines rejected (25.0%, more than --max_rejected_fraction 0.1): "
                                f"missing_file 2; see {tmp_path / 'new'}/rejected.jsonl; the dataset was not committed")
    assert sorted(os.listdir(tmp_path / "new")) == [REJECTED_NAME]  # no shard, no pending manifest, no _tmp/
    assert len((tmp_path / "new" / REJECTED_NAME).read_text().splitlines()) == 2
    allowed = run_in_process(corpus, tmp_path / "new", train="some_missing.txt", max_rejected_fraction=0.25)
    assert allowed.splits["train"].rejected_reasons == {"missing_file": 2}
    # A wrong --audio_root rejects every line: rejected.jsonl is written, the old dataset stays.
    out = copy_of(expected, tmp_path / "out")
    (corpus / "empty_dir").mkdir(exist_ok=True)
    with pytest.raises(DatasetError, match=f"^split train: 6 of 6 lines rejected \\(100.0%, no clip written\\): "
                                           f"missing_file 6; see {out}/rejected.jsonl; the dataset was not committed$"):
        run_in_process(corpus, out, audio_root="empty_dir")
    left = files(out)
    assert len(left.pop(REJECTED_NAME).splitlines()) == 8
    assert left == {name: content for name, content in expected.items() if name != REJECTED_NAME}


def test_a_split_that_writes_no_clip_is_an_error_whatever_the_fraction(corpus, tmp_path):
    (corpus / "header_only.txt").write_text("wav|text\n")
    with pytest.raises(DatasetError, match=r"^split train: 1 of 1 lines rejected \(100.0%, no clip written\): "
                                           r"missing_file 1; see .*rejected.jsonl; the dataset was not committed$"):
        run_in_process(corpus, tmp_path / "out", train="header_only.txt", max_rejected_fraction=1.0)
    assert sorted(os.listdir(tmp_path / "out")) == [REJECTED_NAME]
    (corpus / "empty.txt").write_text("")
    with pytest.raises(DatasetError, match="^.*out: the job wrote no clip: its filelists hold no line; the dataset "
                                           "was not committed$"):
        run_in_process(corpus, tmp_path / "out", train="empty.txt", val="empty.txt")


def test_a_failing_commit_or_last_step_is_one_line_and_keeps_the_old_dataset(corpus, expected, tmp_path,
                                                                             monkeypatch):
    out = copy_of(expected, tmp_path / "out")
    ship = commit_lib.StagedFile.ship

    def full_disk(self, name):
        if name == MANIFEST_NAME:
            raise OSError(28, "No space left on device")
        return ship(self, name)

    monkeypatch.setattr(commit_lib.StagedFile, "ship", full_disk)
    with pytest.raises(CommitError, match=f"^{out}/manifest.json: cannot commit the dataset \\(OSError: \\[Errno 28\\] "
                                          "No space left on device\\); the previous one, if any, is unchanged$"):
        run_in_process(corpus, out, num_shards=3)
    assert CommitError.exit_status == 1
    assert files(out) == expected  # the job's shards and spill files deleted, the dataset as it was
    monkeypatch.setattr(commit_lib.StagedFile, "ship", ship)

    def failing_write(directory, name, text):
        raise OSError(5, f"Input/output error: {name}")

    monkeypatch.setattr("pipeline.transforms.write_text", failing_write)  # the job's last step
    with pytest.raises(JobError) as err:
        run_in_process(corpus, out, num_shards=3)
    assert "\n" not in str(err.value) and "Input/output error" in str(err.value)
    assert files(out) == expected  # the job's shards and spill files deleted, the dataset as it was


def test_the_trainer_refuses_a_shard_the_manifest_did_not_commit(expected, tmp_path, caplog):
    for name, content in expected.items():
        (tmp_path / name).write_bytes(content)
    manifest = assert_consistent(tmp_path)
    first, second = manifest.splits["train"].shards
    raw = bytearray((tmp_path / first).read_bytes())
    raw[100] ^= 1  # same size, other bytes
    (tmp_path / first).write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match=f"^{tmp_path}: shard {first} has CRC-32C [0-9a-f]{{8}}, but "
                                             f"manifest.json recorded [0-9a-f]{{8}}; run run_preprocess.py again$"):
        data.verify_shards(str(tmp_path), manifest)
    (tmp_path / second).write_bytes(expected[second][:-1])
    with pytest.raises(data.DataError, match=f"^{tmp_path}: shard {first} has CRC-32C .* \\(and 1 more\\); "):
        data.verify_shards(str(tmp_path), manifest)
    (tmp_path / first).write_bytes(expected[first])
    size = len(expected[second])
    with pytest.raises(data.DataError, match=f"^{tmp_path}: shard {second} is {size - 1} bytes, but manifest.json "
                                             f"recorded {size}; run run_preprocess.py again$"):
        data.verify_shards(str(tmp_path), manifest)
    # A manifest of an older job lists bare names: it still loads, and its shards are read unverified.
    raw_manifest = json.loads(expected[MANIFEST_NAME])
    for split in raw_manifest["splits"].values():
        del split["shard_files"], split["rejected_reasons"]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(raw_manifest))
    old = data.load_manifest(str(tmp_path))
    data.verify_shards(str(tmp_path), old)
    assert [r.getMessage() for r in caplog.records if "unverified" in r.getMessage()] == [
        f"{tmp_path}: manifest.json records no size or checksum for 4 shards (written by an older "
        "run_preprocess.py); they are read unverified"]


def test_the_commit_files_are_synced_with_their_rename(tmp_path, monkeypatch):
    """manifest.json (the commit point) and config.json survive a power loss once written: the data is synced
    before the rename, the rename after it."""
    synced = durable_writes(monkeypatch, tmp_path)
    write_text(str(tmp_path), MANIFEST_NAME, "{}\n")
    assert [kind for kind, _ in synced] == ["file", "directory"]
    assert synced[1][1] == [MANIFEST_NAME]

