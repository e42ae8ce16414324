"""The Beam-free core: what its modules import, and its storage helper on local paths."""

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from core.filelist import input_name, listed_paths, read_lines
from core.melfile import MelFileError, load_mel_file
from core.storage import (BEAM_IO, TF_IO, OutputError, PathError, check_directory, check_writable, exists,
                          first_line, join, read_bytes, write_whole)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imported(modules: str, names: tuple[str, ...]) -> list[bool]:
    """Whether each of ``names`` is in sys.modules after importing ``modules`` in a fresh Python."""
    code = f"import {modules}; import sys; print([n in sys.modules for n in {names!r}])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return eval(out.stdout.strip().splitlines()[-1])


def test_model_side_never_imports_beam():
    modules = ("core.config, core.audio, core.mel, core.records, core.manifest, core.filelist, core.melfile, "
               "core.storage, model.data, model.inference, model.evaluate")
    assert _imported(modules, ("apache_beam",)) == [False]


def test_core_imports_neither_beam_nor_tensorflow():
    modules = ("core.filelist, core.storage, core.records, core.melfile, core.audio, core.mel, core.manifest, "
               "core.config, core.metrics")
    assert _imported(modules, ("apache_beam", "tensorflow")) == [False, False]


@pytest.mark.parametrize("io", [BEAM_IO, TF_IO])
def test_local_paths_are_read_with_os(tmp_path, io):
    (tmp_path / "a.bin").write_bytes(b"\x00\xffbytes")
    assert read_bytes(str(tmp_path / "a.bin"), io=io) == b"\x00\xffbytes"
    assert exists(str(tmp_path / "a.bin"), io=io) and not exists(str(tmp_path / "b.bin"), io=io)
    assert join(str(tmp_path), "x", "y.txt", io=io) == os.path.join(str(tmp_path), "x", "y.txt")
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "b.bin"), io=io)


def test_uris_are_joined_by_their_backend():
    assert join("gs://bucket/data/", "a.wav", io=TF_IO) == "gs://bucket/data/a.wav"


def durable_writes(monkeypatch, directory) -> list[tuple[str, list[str]]]:
    """What each os.fsync call syncs ("file" or "directory"), with ``directory``'s listing at that moment."""
    synced, real = [], os.fsync

    def spy(fd):
        kind = "directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, sorted(os.listdir(directory))))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return synced


def test_write_whole_syncs_the_data_then_the_rename(tmp_path, monkeypatch):
    """Survives a power loss: the data reaches the disk before the rename, the rename (a change of the directory)
    is synced after it; the old file or the new one, never an empty or missing one."""
    (tmp_path / "config.json").write_text("old")
    synced = durable_writes(monkeypatch, tmp_path)
    write_whole(str(tmp_path / "config.json"), "new", io=TF_IO)
    assert [kind for kind, _ in synced] == ["file", "directory"]
    assert len(synced[0][1]) == 2 and synced[1][1] == ["config.json"]  # the temporary file beside it, then renamed
    assert (tmp_path / "config.json").read_text() == "new"


def test_write_probe_makes_the_directory_and_leaves_nothing(tmp_path):
    for io in (BEAM_IO, TF_IO):
        target = tmp_path / type(io).__name__ / "out"
        assert check_writable(str(target), "output directory", io=io) == str(target)
        assert target.is_dir() and os.listdir(target) == []


def test_write_probe_under_a_file_is_one_line_in_each_callers_words(tmp_path):
    (tmp_path / "a_file").write_text("")
    blocked = str(tmp_path / "a_file" / "out")
    with pytest.raises(PathError) as job:
        check_writable(blocked)
    assert str(job.value) == f"{blocked}: cannot write to this output directory: NotADirectoryError: [Errno 20] " \
                             f"Not a directory: '{blocked}'"
    with pytest.raises(OutputError) as model:
        check_writable(blocked, "checkpoint directory", io=TF_IO)
    assert str(model.value).startswith(f"{blocked}: cannot write to this checkpoint directory (")
    assert "not a directory" in str(model.value) and "\n" not in str(model.value)


def test_check_directory_names_what_is_wrong(tmp_path):
    (tmp_path / "a_file").write_text("")
    check_directory(str(tmp_path), "audio root")
    check_directory("gs://bucket/prefix", "audio root")  # object stores have no directories to check
    with pytest.raises(PathError, match="a_file: audio root is not a directory$"):
        check_directory(str(tmp_path / "a_file"), "audio root")
    with pytest.raises(PathError, match="nope: audio root not found$"):
        check_directory(str(tmp_path / "nope"), "audio root")


def test_first_line():
    try:
        try:
            raise OSError("inner\nmore")
        except OSError as e:
            raise ValueError("outer") from e
    except ValueError as e:
        error = e
    assert first_line(error) == "OSError: inner"
    assert first_line(error, innermost=False) == "ValueError: outer"
    assert first_line(ValueError("x" * 300), max_chars=200) == "ValueError: " + "x" * 200
    assert first_line(AssertionError()) == "AssertionError: no message"
    assert first_line(AssertionError(), with_type=False) == "AssertionError"
    assert first_line(ValueError(" why \nmore"), with_type=False) == "why "


def test_filelist_lines_for_inference(tmp_path):
    filelist = tmp_path / "list.txt"
    filelist.write_bytes(b"\xef\xbb\xbfa|text\r\n\r\n|no path\r\nb\xff|x\r\n")
    assert read_lines(str(filelist), io=TF_IO) == ["a|text", "", "|no path", "b\udcff|x"]
    assert [(s.rsplit(":", 1)[1], p) for s, _, p in listed_paths(str(filelist), io=TF_IO)] == \
        [("1", None), ("3", "line has no path"), ("4", "path is not valid UTF-8")]
    assert input_name("wavs/LJ001-0001.wav", (".npy",)) == "LJ001-0001.npy"
    assert input_name("spk.v2_01", (".npy",)) == "spk.v2_01.npy"
    assert input_name("x/a.flac", (".wav", ".flac")) == "a.flac"


def test_mel_file_layouts_and_refusals(tmp_path):
    mel = np.random.default_rng(0).normal(-6, 1, (3, 5)).astype(np.float32)  # (num_mels, T)

    def npy(array):
        path = tmp_path / "m.npy"
        np.save(path, array)
        return path.read_bytes()

    for stored in (mel, mel[None], mel.T, mel.T[None]):
        np.testing.assert_array_equal(load_mel_file(npy(stored), 3), mel.T)
    for stored, why in ((mel[None, None], "shape [1, 1, 3, 5] is not a mel"), (mel.astype(int), "dtype int64"),
                        (mel[:2], "shape [2, 5] has no axis of num_mels = 3"), (mel[:, :0], "empty mel")):
        with pytest.raises(MelFileError, match=r"^" + why.replace("[", r"\[").replace("]", r"\]")):
            load_mel_file(npy(stored), 3)
