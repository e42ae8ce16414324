"""Storage faults in the Beam job, injected by a test filesystem (tests/faulty_fs.py): a read the storage fails is
read again and the job loses nothing; one that keeps failing fails the job in one line, with no manifest; only a
problem of the clip itself (a missing file) is a rejection. On DirectRunner and on the Dask runner."""

import errno
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
from apache_beam.io.filesystem import BeamIOError

from conftest import DEMO_TRAIN, DEMO_VAL, DEMO_WAVS, REPO_ROOT, read_filelist_ids
from core.manifest import MANIFEST_NAME
from core.storage import MISSING, NOT_A_FILE, STORAGE_FAULT, read_failure
from pipeline import clips
from pipeline.clips import ClipError, StorageError, read_input, read_teacher_mel
from pipeline.job_errors import JobError, job_error
from pipeline.options import OptionsError, PreprocessOptions
from pipeline.runner import run
from test_dask import _distributed
from tests import faulty_fs  # NOTE: only under this name; see tests/faulty_fs.py

DIRECT = ["--runner", "DirectRunner"]
LINES = 5  # lines of the filelists below: 3 train clips and one that does not exist, 1 val clip
READ_FAILURES = 2  # each clip's first reads that fail in the transient case


class _HttpError(Exception):
    """An object-store client's error: it carries the HTTP status in ``code``."""

    def __init__(self, code):
        super().__init__(f"HTTP {code}")
        self.code = code


@pytest.mark.parametrize("error,kind", [
    (FileNotFoundError(errno.ENOENT, "No such file or directory"), MISSING),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory"), MISSING),
    (BeamIOError("Open failed", {"gs://b/a.wav": FileNotFoundError(errno.ENOENT, "gone")}), MISSING),
    (_HttpError(404), MISSING),
    (IsADirectoryError(errno.EISDIR, "Is a directory"), NOT_A_FILE),
    (PermissionError(errno.EACCES, "Permission denied"), STORAGE_FAULT),
    (OSError(errno.ENOSPC, "No space left on device"), STORAGE_FAULT),
    (OSError(errno.EIO, "Input/output error"), STORAGE_FAULT),
    (TimeoutError(), STORAGE_FAULT),
    (BeamIOError("Open failed", {"gs://b/a.wav": ConnectionResetError(errno.ECONNRESET, "reset")}), STORAGE_FAULT),
    (_HttpError(403), STORAGE_FAULT), (_HttpError(429), STORAGE_FAULT), (_HttpError(503), STORAGE_FAULT),
    (ValueError("a client's own error"), None), (BeamIOError("Open failed"), None),
])
def test_read_failure_says_missing_not_a_file_or_storage_fault(error, kind):
    assert read_failure(error) == kind
    try:  # the same error as the cause of another
        raise RuntimeError("wrapper") from error
    except RuntimeError as wrapped:
        assert read_failure(wrapped) == kind


@pytest.fixture
def faults(tmp_path, monkeypatch):
    """A function that sets the faults of faulty:// (in this process and in the workers it starts later)."""
    config = tmp_path / "faults.json"
    monkeypatch.setenv(faulty_fs.ENV, str(config))

    def set_faults(**fields):
        """Sets ``faulty_fs.Faults(**fields)``, counted from zero; returns their state dir for faulty_fs.injected."""
        state = str(tmp_path / f"fault_state_{len(states)}")
        states.append(state)
        faulty_fs.Faults(state_dir=state, **fields).save(config)
        return state

    states = []
    return set_faults


def test_read_input_retries_with_a_bounded_backoff(faults, tmp_path, monkeypatch):
    delays = []
    monkeypatch.setattr(clips, "time", types.SimpleNamespace(sleep=delays.append))  # clips' own time module only
    wav = os.path.join(DEMO_WAVS, read_filelist_ids(DEMO_TRAIN)[0] + ".wav")
    expected = open(wav, "rb").read()
    state = faults(read_failures=3)
    assert read_input(faulty_fs.uri(wav), "missing_file", "unreadable", retries=3) == expected
    assert faulty_fs.injected(state) == 3 and delays == [0.1, 0.2, 0.4]
    faults(read_failures=faulty_fs.ALWAYS, read_error="EACCES")
    with pytest.raises(StorageError) as error:
        read_input(faulty_fs.uri(wav), "missing_file", "unreadable", retries=6)
    assert str(error.value) == (f"{faulty_fs.uri(wav)}: cannot read: PermissionError: [Errno 13] Permission denied: "
                                f"'{wav}' (7 attempts)")
    assert error.value.exit_status == 1
    assert delays[3:] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]  # bounded
    # Problems of the file itself are rejections, at once.
    for path, reason in ((tmp_path / "nope.wav", "missing_file"), (tmp_path, "unreadable")):
        delays.clear()
        with pytest.raises(ClipError) as rejected:
            read_input(str(path), "missing_file", "unreadable", retries=3)
        assert rejected.value.reason == reason and delays == []
    # Teacher mels are read the same way.
    np.save(tmp_path / "a.npy", np.zeros((5, 80), np.float32))
    faults(read_failures=1, match="*.npy")
    with pytest.raises(StorageError, match="a.npy: cannot read: TimeoutError"):
        read_teacher_mel(faulty_fs.uri(tmp_path), "a", 80, retries=0)
    assert read_teacher_mel(faulty_fs.uri(tmp_path), "a", 80, retries=0).shape == (5, 80)
    with pytest.raises(OptionsError, match="read_retries must be >= 0"):
        PreprocessOptions(filelists={}, audio_root=".", output_dir=".", read_retries=-1)


def test_job_error_finds_the_step_error_in_each_runner_form():
    message = "gs://b/a.wav: cannot read: TimeoutError: timed out (5 attempts)"
    step = " [while running 'ProcessClips/ParDo(ProcessClip)']"
    dask_form = StorageError(message + step)  # the step's error itself, pickled back from the worker
    direct_form = RuntimeError(f"Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
                               f"pipeline.clips.StorageError: {message}{step}\n")
    for error in (dask_form, direct_form):
        assert (str(job_error(error)), job_error(error).exit_status) == (message, 1)
    bug = RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
                       "ZeroDivisionError: division by zero [while running 'WriteManifest']\n")
    assert str(job_error(bug)) == "the Beam job failed: ZeroDivisionError: division by zero"
    assert str(job_error(ValueError("bad"))) == "the Beam job failed: ValueError: bad"


@pytest.fixture(scope="module")
def filelists(tmp_path_factory):
    """3 train clips of the demo corpus and one that does not exist; 1 val clip."""
    directory = tmp_path_factory.mktemp("filelists")
    train, val = directory / "train.txt", directory / "val.txt"
    train.write_text("".join(f"{i}|text\n" for i in read_filelist_ids(DEMO_TRAIN)[:3] + ["missing_clip"]))
    val.write_text("".join(f"{i}|text\n" for i in read_filelist_ids(DEMO_VAL)[:1]))
    return {"train": str(train), "val": str(val)}


def _options(filelists, out, **overrides):
    """The job on the filelists' clips through faulty://; 1 of 4 train lines is rejected (the missing clip)."""
    return PreprocessOptions(filelists=filelists, audio_root=faulty_fs.uri(DEMO_WAVS), output_dir=str(out),
                             num_shards=2, max_rejected_fraction=0.5, **overrides)


def _outputs(out):
    return {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))}


@pytest.fixture(scope="module")
def fault_free(v1_config, filelists, tmp_path_factory):
    """A run without faults (through faulty:// too, so every file compares byte for byte); its output files."""
    assert faulty_fs.ENV not in os.environ
    out = tmp_path_factory.mktemp("fault_free")
    run(v1_config, _options(filelists, out), DIRECT)
    return _outputs(out)


def test_transient_read_faults_lose_nothing_on_direct_runner(v1_config, filelists, faults, fault_free, tmp_path):
    state = faults(read_failures=READ_FAILURES)
    manifest = run(v1_config, _options(filelists, tmp_path / "out", read_retries=READ_FAILURES), DIRECT)
    assert faulty_fs.injected(state) == LINES * READ_FAILURES  # every file read failed twice, the missing one too
    assert (manifest.splits["train"].num_examples, manifest.splits["val"].num_examples) == (3, 1)
    assert manifest.splits["train"].num_rejected == 1  # the missing file: still a rejection
    assert _outputs(tmp_path / "out") == fault_free


def _cli(*args):
    """run_preprocess.py with the faulty:// filesystem imported."""
    code = "import sys, tests.faulty_fs, run_preprocess; sys.exit(run_preprocess.main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)


def test_persistent_read_fault_fails_the_job_in_one_line(filelists, faults, tmp_path):
    state = faults(read_failures=faulty_fs.ALWAYS, match="*/LJ001-0002.wav")
    out = tmp_path / "out"
    result = _cli("--train_filelist", filelists["train"], "--val_filelist", filelists["val"], "--audio_root",
                  faulty_fs.uri(DEMO_WAVS), "--output_dir", str(out), "--read_retries", "1", *DIRECT)
    wav = os.path.join(DEMO_WAVS, "LJ001-0002.wav")
    assert result.returncode == 1, result.stderr[-3000:]
    assert faulty_fs.injected(state) == 2  # read once, then once again (--read_retries 1)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if "error:" in line] == [
        f"run_preprocess.py: error: {faulty_fs.uri(wav)}: cannot read: TimeoutError: [Errno 110] Connection timed "
        f"out: '{wav}' (2 attempts)"]
    assert not os.path.exists(out / MANIFEST_NAME)


def test_full_disk_on_a_spill_write_fails_the_job_in_one_line(v1_config, filelists, faults, tmp_path):
    state = faults(write_error="ENOSPC", match="*/_tmp/*.tfrecord")
    out = tmp_path / "out"
    with pytest.raises(JobError) as error:
        run(v1_config, _options(filelists, faulty_fs.uri(out)), DIRECT)
    assert faulty_fs.injected(state) >= 1
    assert error.value.exit_status == 1
    spill = re.escape(f"{out}/_tmp/") + r"[0-9a-f]{32}\.tfrecord"
    assert re.fullmatch(f"faulty://{spill}: cannot write: OSError: \\[Errno 28\\] No space left on device: '{spill}'",
                        str(error.value)), str(error.value)
    assert not os.path.exists(out / MANIFEST_NAME)


def test_dask_runner_survives_transient_read_faults_and_fails_on_persistent_ones(v1_config, filelists, faults,
                                                                                 fault_free, tmp_path):
    distributed = _distributed()
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            faulty_fs.import_on_dask_workers(client)
        dask = ["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner", "--dask_client_address",
                cluster.scheduler_address]
        state = faults(read_failures=READ_FAILURES)
        run(v1_config, _options(filelists, tmp_path / "transient", read_retries=READ_FAILURES), dask)
        assert faulty_fs.injected(state) == LINES * READ_FAILURES
        assert _outputs(tmp_path / "transient") == fault_free
        state = faults(read_failures=faulty_fs.ALWAYS, match="*/LJ001-0001.wav")
        with pytest.raises(JobError) as error:
            run(v1_config, _options(filelists, tmp_path / "persistent", read_retries=1), dask)
        assert faulty_fs.injected(state) == 2
    wav = os.path.join(DEMO_WAVS, "LJ001-0001.wav")
    assert str(error.value) == f"{faulty_fs.uri(wav)}: cannot read: TimeoutError: [Errno 110] Connection timed " \
                               f"out: '{wav}' (2 attempts)"
    assert not os.path.exists(tmp_path / "persistent" / MANIFEST_NAME)
