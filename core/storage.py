"""Where the job reads and writes: one-line errors, before the job starts, for a path Beam cannot use here."""

from __future__ import annotations

import os
import uuid

from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem
from core.errors import UserError


class PathError(UserError):
    """A path the job cannot read or write; the message is one line naming it."""


def check_filesystem(path: str, what: str) -> None:
    """PathError (one line) if Beam cannot use ``path``'s filesystem in this Python: no filesystem for its
    scheme, or one whose client library or credentials are missing (gs:// without apache-beam's [gcp] extra,
    s3:// without boto3, hdfs:// without hdfs). Looks the path up once, as the job would, with the options given
    to ``FileSystems.set_options`` (the job's)."""
    try:
        FileSystems.exists(path)
    except Exception as e:  # ValueError, BeamIOError, ImportError, AssertionError, auth errors: Beam's and its clients'
        scheme = path.split("://", 1)[0] if "://" in path else "local"
        why = first_line(e)
        extra = {"gs": "gcp", "s3": "aws", "hdfs": "hadoop", "azfs": "azure"}.get(scheme)
        hint = f" (pip install 'apache-beam[{extra}]')" if extra and "pip install" not in why else ""
        raise PathError(f"{path}: Beam cannot use the {what}'s filesystem ({scheme}) here: {why}{hint}") from None


def check_directory(path: str, what: str) -> None:
    """PathError (one line) if ``path`` is a local path that is not an existing directory.

    NOTE: only local paths: object stores (gs://, s3://) have no directories, and FileSystems.exists() of a prefix
    is False there even when files lie under it.
    """
    if isinstance(FileSystems.get_filesystem(path), LocalFileSystem) and not os.path.isdir(path):
        raise PathError(f"{path}: {what} is not a directory" if os.path.exists(path) else f"{path}: {what} not found")


def first_line(error: BaseException) -> str:
    """The innermost cause's message, on one line."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def check_writable(directory: str, what: str = "output directory") -> None:
    """PathError (one line) unless a file can be written in ``directory`` (made if local and missing): a path
    under a file, no permission, a read-only bucket. Writes and deletes one empty probe file."""
    probe = FileSystems.join(directory, f".write-probe-{uuid.uuid4().hex}")
    try:
        if isinstance(FileSystems.get_filesystem(directory), LocalFileSystem):
            os.makedirs(directory, exist_ok=True)
        with FileSystems.create(probe) as f:
            f.write(b"")
        FileSystems.delete([probe])
    except Exception as e:  # OSError locally; BeamIOError or the client's own errors elsewhere
        raise PathError(f"{directory}: cannot write to this {what}: {first_line(e)}") from None
