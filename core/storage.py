"""Storage IO for both sides: read a file's bytes, write a small text file whole, test that a path exists, probe a
directory for writing, and say what went wrong in one line; on local paths and on URIs (gs://, s3://, hdfs://, ...).

Local paths go through ``os`` and need neither Beam nor TensorFlow (but for the model side's write probe, see
``_TensorFlowIO.write_probe``). A URI goes through the backend the caller names, imported when a URI first needs
it:
  - ``BEAM_IO``: Beam's FileSystems, for the Beam job, whose workers never import TensorFlow (gs:// needs
    apache-beam's [gcp] extra, s3:// its [aws] one);
  - ``TF_IO``: tf.io.gfile, for the model side, which never imports Beam (TensorFlow's wheel reads gs:// as it is).
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import uuid

from core.errors import UserError

_URI = re.compile(r"[a-zA-Z][-a-zA-Z0-9+.]*://")  # Beam's FileSystems.URI_SCHEMA_PATTERN


class PathError(UserError):
    """A path the job cannot read or write; the message is one line naming it."""


class OutputError(PathError):
    """An output directory of the model side (checkpoints, exports, vocoded audio) that cannot be written; one
    line naming it."""


def is_uri(path: str) -> bool:
    """Whether ``path`` names a filesystem by its scheme (``gs://b/x``) rather than a local path."""
    return _URI.match(path.strip()) is not None


def first_line(error: BaseException, innermost: bool = True, max_chars: int | None = None,
               with_type: bool = True) -> str:
    """``error``'s message on one line: ``Type: first line`` (``no message`` for an empty one), or with
    ``with_type`` False the first line alone (the type's name for an empty one).

    ``innermost`` reads the innermost cause or context instead (what failed, not the wrapper of a library);
    ``max_chars`` cuts the line.
    """
    while innermost and (error.__cause__ is not None or error.__context__ is not None):
        error = error.__cause__ or error.__context__
    lines = str(error).strip().splitlines()
    text = lines[0][:max_chars] if lines else ""
    if not with_type:
        return text or type(error).__name__
    return f"{type(error).__name__}: {text or 'no message'}"


class _BeamIO:
    """URIs through Beam's FileSystems, with the options the job gave ``FileSystems.set_options``."""

    @staticmethod
    def _filesystems():
        from apache_beam.io.filesystems import CompressionTypes, FileSystems

        return FileSystems, CompressionTypes.UNCOMPRESSED

    @staticmethod
    def check(path: str, what: str) -> None:
        """PathError (one line) if Beam cannot use ``path``'s filesystem here (:func:`check_filesystem`)."""
        check_filesystem(path, what)

    def join(self, uri: str, *names: str) -> str:
        return self._filesystems()[0].join(uri, *names)

    def exists(self, uri: str) -> bool:
        return self._filesystems()[0].exists(uri)

    def read(self, uri: str) -> bytes:
        filesystems, raw = self._filesystems()
        with filesystems.open(uri, compression_type=raw) as f:
            return f.read()

    def write(self, uri: str, data: bytes) -> None:
        filesystems, raw = self._filesystems()
        with filesystems.create(uri, compression_type=raw) as f:
            f.write(data)

    def write_probe(self, directory: str, name: str) -> None:
        """Writes and deletes the empty file ``name`` in ``directory`` (made first if local)."""
        if not is_uri(directory):  # what Beam's LocalFileSystem does, without importing Beam
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, name), "wb"):
                pass
            os.remove(os.path.join(directory, name))
            return
        probe = self.join(directory, name)
        self.write(probe, b"")
        self._filesystems()[0].delete([probe])

    @staticmethod
    def write_error(directory: str, what: str, error: BaseException) -> PathError:
        return PathError(f"{directory}: cannot write to this {what}: {first_line(error)}")


class _TensorFlowIO:
    """URIs through tf.io.gfile."""

    @staticmethod
    def _tf():
        import tensorflow as tf

        return tf

    @staticmethod
    def check(path: str, what: str) -> None:
        """Nothing to check before use: tf.io.gfile's own errors name the path when it is read."""

    def join(self, uri: str, *names: str) -> str:
        return posixpath.join(uri, *names)

    def exists(self, uri: str) -> bool:
        return self._tf().io.gfile.exists(uri)

    def read(self, uri: str) -> bytes:
        tf = self._tf()
        try:
            with tf.io.gfile.GFile(uri, "rb") as f:
                return f.read()
        except tf.errors.NotFoundError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), uri) from None

    def write(self, uri: str, data: bytes) -> None:
        with self._tf().io.gfile.GFile(uri, "wb") as f:
            f.write(data)

    def write_probe(self, directory: str, name: str) -> None:
        """Makes ``directory`` and writes and deletes the empty file ``name`` in it.

        NOTE: local paths too go through tf.io.gfile here: the model side writes its outputs (checkpoints,
        SavedModels) with TensorFlow, so the probe tries that writer, and its messages are TensorFlow's.
        """
        gfile = self._tf().io.gfile
        probe = os.path.join(directory, name)
        gfile.makedirs(directory)
        with gfile.GFile(probe, "w") as f:
            f.write("")
        gfile.remove(probe)

    def write_error(self, directory: str, what: str, error: BaseException) -> OutputError:
        tf = self._tf()
        why = error.message if isinstance(error, tf.errors.OpError) else f"{getattr(error, 'strerror', None) or error}"
        return OutputError(f"{directory}: cannot write to this {what} ({why})")


BEAM_IO = _BeamIO()
TF_IO = _TensorFlowIO()
Backend = _BeamIO | _TensorFlowIO


def join(directory: str, *names: str, io: Backend) -> str:
    """``directory/name/...``: os.path.join for a local path, the backend's join for a URI."""
    return io.join(directory, *names) if is_uri(directory) else os.path.join(directory, *names)


def exists(path: str, io: Backend) -> bool:
    """Whether a file or directory ``path`` exists."""
    return io.exists(path) if is_uri(path) else os.path.exists(path)


def read_bytes(path: str, io: Backend) -> bytes:
    """The bytes of the file ``path``, as they are (no decompression). Raises OSError locally (FileNotFoundError
    when it does not exist, with TF_IO too) or the backend's own errors."""
    if is_uri(path):
        return io.read(path)
    with open(path, "rb") as f:
        return f.read()


def write_whole(path: str, text: str, io: Backend) -> None:
    """Writes ``text`` (UTF-8) to ``path`` whole or not at all, and durably: a local file through a temporary one
    beside it, fsync'd, renamed over it, and the rename fsync'd (:func:`replace_durably`); a URI in one upload
    through the backend (an object store's object appears whole). For small files written in one piece (configs,
    summaries); the Beam job's outputs use pipeline.tfrecord_io.StagedFile."""
    if is_uri(path):
        io.write(path, text.encode("utf-8"))
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def replace_durably(source: str, destination: str) -> None:
    """``os.replace`` whose outcome survives a crash or power loss: the directory is fsync'd after the rename
    (a rename is a change of the directory, which the file's own fsync does not persist). The caller fsyncs the
    file's data first. Local paths only."""
    os.replace(source, destination)
    fd = os.open(os.path.dirname(os.path.abspath(destination)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(directory: str, what: str = "output directory", io: Backend = BEAM_IO) -> str:
    """Returns ``directory`` once a file could be written in it (made if missing, where the backend makes
    directories): writes and deletes one empty probe file. Otherwise a one-line error naming it: a path under
    a file, no permission, a read-only bucket. ``BEAM_IO`` raises PathError (``...: <Type>: <why>``),
    ``TF_IO`` OutputError (``... (<why>)``), as the job's and the model's messages always read."""
    try:
        io.write_probe(directory, f".write-probe-{uuid.uuid4().hex}")
    except Exception as e:  # OSError locally; BeamIOError, OpError or the client's own errors elsewhere
        raise io.write_error(directory, what, e) from None
    return directory


def existing_output(path: str, io: Backend = TF_IO) -> str | None:
    """What lies at ``path`` that a new output would replace or mix with ("a file", "a non-empty directory";
    "something" for a URI that exists), or None when nothing does or it is an empty directory. The one check
    behind every command that refuses to write over what is there (run_convert, run_export)."""
    if is_uri(path):
        return "something" if io.exists(path) else None
    if os.path.isdir(path):
        return "a non-empty directory" if os.listdir(path) else None
    return "a file" if os.path.lexists(path) else None


def check_filesystem(path: str, what: str) -> None:
    """PathError (one line) if Beam cannot use ``path``'s filesystem in this Python: no filesystem for its
    scheme, or one whose client library or credentials are missing (gs:// without apache-beam's [gcp] extra,
    s3:// without boto3, hdfs:// without hdfs). Looks the path up once, as the job would, with the options given
    to ``FileSystems.set_options`` (the job's). A local path has nothing to check.
    """
    if not is_uri(path):
        return
    try:
        BEAM_IO.exists(path)
    except Exception as e:  # ValueError, BeamIOError, ImportError, AssertionError, auth errors: Beam's and its clients'
        scheme = path.split("://", 1)[0]
        why = first_line(e)
        extra = {"gs": "gcp", "s3": "aws", "hdfs": "hadoop", "azfs": "azure"}.get(scheme)
        hint = f" (pip install 'apache-beam[{extra}]')" if extra and "pip install" not in why else ""
        raise PathError(f"{path}: Beam cannot use the {what}'s filesystem ({scheme}) here: {why}{hint}") from None


def check_directory(path: str, what: str) -> None:
    """PathError (one line) if ``path`` is a local path that is not an existing directory.

    NOTE: only local paths: object stores (gs://, s3://) have no directories, and FileSystems.exists() of a prefix
    is False there even when files lie under it.
    """
    if not is_uri(path) and not os.path.isdir(path):
        raise PathError(f"{path}: {what} is not a directory" if os.path.exists(path) else f"{path}: {what} not found")


# What a failed read says about the file (read_failure): it does not exist; it is no file that can be read (a
# directory, a name too long); or the storage failed (permission, auth, network, timeout, full disk, server error).
MISSING, NOT_A_FILE, STORAGE_FAULT = "missing", "not_a_file", "storage_fault"
_ERRNO_KINDS = {errno.ENOENT: MISSING, errno.ENOTDIR: MISSING, errno.EISDIR: NOT_A_FILE,
                errno.ENAMETOOLONG: NOT_A_FILE, errno.ELOOP: NOT_A_FILE}
_NOT_FOUND_TYPES = ("NotFound", "NoSuchKey", "NoSuchBucket", "ResourceNotFoundError")  # gcs, s3, azure clients


def _http_status(error: BaseException) -> int | None:
    """The HTTP status an object-store client's error carries (``code``, ``status_code``, its response's), if any."""
    for owner in (error, getattr(error, "response", None)):
        for name in ("code", "status_code", "status"):
            value = getattr(owner, name, None)
            if isinstance(value, int) and 100 <= value < 600:
                return value
    return None


def _kind_of(error: BaseException) -> str | None:
    if isinstance(error, OSError) and error.errno is not None:
        return _ERRNO_KINDS.get(error.errno, STORAGE_FAULT)
    if isinstance(error, (PermissionError, TimeoutError, ConnectionError)):
        return STORAGE_FAULT
    status = _http_status(error)
    if status in (404, 410) or type(error).__name__ in _NOT_FOUND_TYPES:
        return MISSING
    if status in (401, 403, 408, 429) or (status or 0) >= 500:
        return STORAGE_FAULT
    return None


def read_failure(error: BaseException) -> str | None:
    """MISSING, NOT_A_FILE or STORAGE_FAULT for an error raised reading a file, or None when it does not say (the
    caller then asks whether the file exists).

    Looks through wrappers: the error's cause and context and the per-path errors of Beam's BeamIOError
    (``exception_details``), outermost first; the first that says decides. Any OS error other than "no such file",
    "not a directory", "is a directory", "name too long" and "symlink loop" is a fault of the storage.
    """
    pending, seen = [error], set()
    while pending:
        error = pending.pop(0)
        if id(error) in seen:
            continue
        seen.add(id(error))
        kind = _kind_of(error)
        if kind is not None:
            return kind
        details = getattr(error, "exception_details", None)
        pending += [e for e in (details.values() if isinstance(details, dict) else ()) if isinstance(e, BaseException)]
        pending += [e for e in (error.__cause__, error.__context__) if e is not None]
    return None
