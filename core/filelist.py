"""Filelists: ``path|text...`` lines naming the clips of a split.

Two conventions of the original are accepted: a bare stem (``LJ001-0001|text|text``, as in its
``filelists/training.txt``), which gets ``.wav``, and a path with its extension
(``./LJSpeech-1.1/wavs/LJ050-0234.wav|text``), used as it is. Only the audio extensions of
``core.audio.AUDIO_EXTENSIONS`` count as extensions: any other entry, dotted or not (``spk.v2_0001``,
``x.y.z``), is a stem that gets ``.wav``. Paths are relative to the audio root unless they are absolute or a URI.
A clip's id is its file name without the audio extension (``x.y.z``, ``LJ001-0001``); records and teacher mels
(``<id>.npy``) are keyed by id, so a second line with the same id is rejected (``duplicate_id``).

Filelists are UTF-8; a leading byte-order mark is ignored. Only a line's path is used, so a line whose text is
not valid UTF-8 is still read; one whose path is not is rejected (``unreadable``).
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Iterator, Mapping

from core.audio import AUDIO_EXTENSIONS
from core.errors import UserError
from core.storage import BEAM_IO, Backend, exists, first_line, join, read_bytes


class FilelistError(UserError):
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


def audio_path(audio_root: str, listed: str, io: Backend = BEAM_IO) -> str:
    """The audio file a filelist path names: ``.wav`` added unless it ends in an audio extension, joined to
    ``audio_root`` (a URI root with ``io``'s join)."""
    if posixpath.splitext(listed)[1].lower() not in AUDIO_EXTENSIONS:
        listed += ".wav"
    if "://" in listed or posixpath.isabs(listed):
        return listed
    return join(audio_root, posixpath.normpath(listed), io=io)


def input_name(listed: str, extensions: tuple[str, ...]) -> str:
    """The file name, in a flat directory of inputs with ``extensions`` (audio files or ``.npy`` mels), of the
    clip a filelist path names: its own name if it has one of them, else its clip id plus the first.

    ``wavs/LJ001-0001.wav`` names ``LJ001-0001.npy`` among mels; a stem, dotted or not (``LJ001-0001``,
    ``spk.v2_01``), gets the extension as in :func:`audio_path`.
    """
    name = posixpath.basename(listed)
    stem, ext = posixpath.splitext(name)
    if ext.lower() in extensions:
        return name
    if ext.lower() in AUDIO_EXTENSIONS + (".npy",):
        return stem + extensions[0]
    return name + extensions[0]


def clip_id_of(path: str) -> str:
    """A clip's id: the file name of its ``audio_path`` without the audio extension."""
    return posixpath.splitext(posixpath.basename(path))[0]


def read_lines(path: str, io: Backend = BEAM_IO) -> list[str]:
    """The lines of a UTF-8 text file (a local path, or a URI read with ``io``), less a leading byte-order mark;
    FilelistError if it cannot be read.

    Bytes that are not valid UTF-8 are kept as lone surrogates (``errors="surrogateescape"``), so one bad line
    does not stop the others; ``is_utf8`` tells such a string apart.
    """
    io.check(path, "filelist")
    try:
        data = read_bytes(path, io=io)
    except Exception as e:  # OSError locally; BeamIOError, OpError or filesystem-specific errors elsewhere
        why = "not found" if not exists(path, io=io) else first_line(e)
        raise FilelistError(f"{path}: cannot read filelist ({why})") from None
    return data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff").splitlines()


def listed_paths(path: str, io: Backend = BEAM_IO) -> Iterator[tuple[str, str, str | None]]:
    """(source ``filelist:line``, the line's path, why it is unusable or None) for each non-blank line of the
    filelist ``path``: a line without a path, or one whose path is not valid UTF-8 (see :func:`printable`)."""
    for number, line in enumerate(read_lines(path, io), start=1):
        if not line.strip():
            continue
        listed = line.split("|", 1)[0].strip()
        problem = "line has no path" if not listed else None if is_utf8(listed) else "path is not valid UTF-8"
        yield f"{path}:{number}", listed, problem


def is_utf8(text: str) -> bool:
    """False for a string of ``read_lines`` that holds bytes that were not valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """A string of ``read_lines`` with its undecodable bytes as U+FFFD, for messages and rejected.jsonl."""
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


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
        for source, listed, problem in listed_paths(filelist):
            num_lines[split] += 1
            if not listed:
                # NOTE: not audio_path's "<root>/.wav": a file of that name is no clip of this line.
                rejected.append(rejection(split, "", "missing_file", f"{source}: {problem}"))
                continue
            if problem:
                rejected.append(rejection(split, audio_path(audio_root, printable(listed)), "unreadable",
                                          f"{source}: {problem}"))
                continue
            path = audio_path(audio_root, listed)
            clip_id = clip_id_of(path)
            if clip_id in seen:
                rejected.append(rejection(split, path, "duplicate_id", f"{source}: id {clip_id} already listed at "
                                          f"{seen[clip_id]}"))
                continue
            seen[clip_id] = source
            entries.append(ClipEntry(split, clip_id, path, source))
    return entries, rejected, num_lines
