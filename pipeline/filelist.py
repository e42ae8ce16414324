"""Filelists: ``path|text...`` lines naming the clips of a split.

Two conventions of the original are accepted: a bare stem (``LJ001-0001|text|text``, as in its
``filelists/training.txt``), which gets ``.wav``, and a path with its extension
(``./LJSpeech-1.1/wavs/LJ050-0234.wav|text``), used as it is. Paths are relative to the audio root unless they are
absolute or a URI. A clip's id is its file stem; records are keyed by id, so a second line with the same id is
rejected (``duplicate_id``).
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Mapping

from apache_beam.io.filesystems import FileSystems

from pipeline.paths import check_filesystem, first_line


class FilelistError(ValueError):
    """A filelist that cannot be read; the message is one line naming the file."""


@dataclasses.dataclass(frozen=True)
class ClipEntry:
    """One filelist line: its split, the clip id, the audio path to read and where it came from."""

    split: str
    clip_id: str
    path: str
    source: str  # "filelist:line_number", for messages


def rejection(split: str, path: str, reason: str, detail: str) -> dict[str, str]:
    """A rejected input line as it appears in rejected.jsonl."""
    return {"path": path, "split": split, "reason": reason, "detail": detail}


def audio_path(audio_root: str, listed: str) -> str:
    """The audio file a filelist path names: ``.wav`` added to a bare stem, joined to ``audio_root``."""
    if not posixpath.splitext(posixpath.basename(listed))[1]:
        listed += ".wav"
    if "://" in listed or posixpath.isabs(listed):
        return listed
    return FileSystems.join(audio_root, posixpath.normpath(listed))


def read_lines(path: str) -> list[str]:
    """The lines of a local or Beam-filesystem text file; FilelistError if it cannot be read."""
    check_filesystem(path, "filelist")
    try:
        with FileSystems.open(path) as f:
            text = f.read().decode("utf-8")
    except Exception as e:  # Beam raises BeamIOError, OSError or filesystem-specific errors.
        why = "not found" if not FileSystems.exists(path) else first_line(e)
        raise FilelistError(f"{path}: cannot read filelist ({why})") from None
    return text.splitlines()


def read_filelists(filelists: Mapping[str, str], audio_root: str
                   ) -> tuple[list[ClipEntry], list[dict[str, str]], dict[str, int]]:
    """Reads every split's filelist.

    Returns (entries to process, rejections found here (duplicate ids), number of non-blank lines per split).
    Splits are read in the order given, so the *later* of two lines with the same id is the one rejected.
    """
    entries, rejected, num_lines = [], [], {}
    seen: dict[str, str] = {}
    for split, filelist in filelists.items():
        num_lines[split] = 0
        for number, line in enumerate(read_lines(filelist), start=1):
            if not line.strip():
                continue
            num_lines[split] += 1
            listed = line.split("|", 1)[0].strip()
            path = audio_path(audio_root, listed)
            clip_id = posixpath.splitext(posixpath.basename(path))[0]
            source = f"{filelist}:{number}"
            if clip_id in seen:
                rejected.append(rejection(split, path, "duplicate_id", f"{source}: id {clip_id} already listed at "
                                          f"{seen[clip_id]}"))
                continue
            seen[clip_id] = source
            entries.append(ClipEntry(split, clip_id, path, source))
    return entries, rejected, num_lines
