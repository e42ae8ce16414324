"""A Beam filesystem for fault tests: ``faulty://<local path>`` is the local file ``<local path>``, and its reads
and writes fail as the JSON file named by the environment variable ``FAULTY_FS`` says (:class:`Faults`). The file
is read at every operation, so a test changes the faults of running worker processes by rewriting it.

Beam finds a FileSystem subclass once its module is imported, so a job's workers must import this module too:
:func:`import_on_dask_workers` does it on a Dask cluster. Import it as ``tests.faulty_fs`` only (a second import
under another name would register the scheme twice, which Beam refuses).

Each injected fault is a file under ``Faults.state_dir``, created atomically: the first k reads of a file fail
and the next succeed, whichever worker processes or threads read it, and :func:`injected` counts the faults.
"""

from __future__ import annotations

import dataclasses
import errno
import fnmatch
import hashlib
import io
import json
import os

from apache_beam.io.filesystem import FileMetadata, FileSystem, MatchResult
from apache_beam.io.localfilesystem import LocalFileSystem

SCHEME = "faulty"
PREFIX = f"{SCHEME}://"
ENV = "FAULTY_FS"
ALWAYS = -1


@dataclasses.dataclass(frozen=True)
class Faults:
    """What fails: the first ``read_failures`` reads of each file matching ``match`` (ALWAYS: every read) raise
    OSError(``read_error``); creating a file matching ``match`` raises OSError(``write_error``), if given."""

    state_dir: str
    read_failures: int = 0
    read_error: str = "ETIMEDOUT"
    write_error: str | None = None
    match: str = "*"

    def save(self, path) -> str:
        """Writes these faults to ``path`` (the file ``FAULTY_FS`` names), atomically; returns the path."""
        with open(f"{path}.tmp", "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(self), f)
        os.replace(f"{path}.tmp", path)
        return str(path)


def uri(local_path) -> str:
    """The faulty:// URI of a local path."""
    return PREFIX + os.path.abspath(str(local_path))


def injected(state_dir) -> int:
    """How many faults were injected so far (failed reads and refused writes) under ``state_dir``."""
    return len(os.listdir(state_dir)) if os.path.isdir(state_dir) else 0


def import_on_dask_workers(client) -> None:
    """Imports this module on every worker of a dask.distributed client, so Beam there finds the scheme."""
    import importlib

    client.run(importlib.import_module, __name__)


def _faults() -> Faults:
    """The faults of the file ``FAULTY_FS`` names; none without one."""
    path = os.environ.get(ENV)
    if not path or not os.path.exists(path):
        return Faults(state_dir="")
    with open(path, encoding="utf-8") as f:
        return Faults(**json.load(f))


def _os_error(name: str, path: str) -> OSError:
    code = getattr(errno, name)
    return OSError(code, os.strerror(code), path)


def _record_fault(faults: Faults, path: str, limit: int | None = None) -> bool:
    """Records one more fault on ``path`` (a new file under the state dir) unless it has had ``limit`` already;
    whether it was recorded. Exclusive creation makes the count exact across threads and processes."""
    os.makedirs(faults.state_dir, exist_ok=True)
    key = hashlib.sha1(path.encode("utf-8")).hexdigest()
    count = 1
    while limit is None or count <= limit:
        try:
            os.close(os.open(os.path.join(faults.state_dir, f"{key}-{count}"), os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            count += 1
    return False


class _FailingRead(io.BytesIO):
    """An open file whose reads raise ``error`` (what a reset connection or a timed-out read looks like)."""

    def __init__(self, error: OSError):
        super().__init__()
        self.error = error

    def read(self, size=-1):
        raise self.error


class FaultyFileSystem(FileSystem):
    """``faulty://<local path>``: the local filesystem with the faults of ``FAULTY_FS``."""

    def __init__(self, pipeline_options):
        super().__init__(pipeline_options)
        self.local = LocalFileSystem(pipeline_options)

    @classmethod
    def scheme(cls):
        return SCHEME

    @staticmethod
    def _local(path: str) -> str:
        return path[len(PREFIX):] if path.startswith(PREFIX) else path

    def join(self, basepath, *paths):
        return PREFIX + os.path.join(self._local(basepath), *paths)

    def split(self, path):
        head, tail = os.path.split(self._local(path))
        return PREFIX + head, tail

    def mkdirs(self, path):
        self.local.mkdirs(self._local(path))

    def has_dirs(self):
        return True

    def _list(self, dir_or_prefix):
        for metadata in self.local._list(self._local(dir_or_prefix)):
            yield FileMetadata(PREFIX + metadata.path, metadata.size_in_bytes, metadata.last_updated_in_seconds)

    def match(self, patterns, limits=None):
        return [MatchResult(PREFIX + result.pattern, [FileMetadata(PREFIX + m.path, m.size_in_bytes,
                                                                   m.last_updated_in_seconds)
                                                      for m in result.metadata_list])
                for result in self.local.match([self._local(p) for p in patterns], limits)]

    def create(self, path, mime_type="application/octet-stream", compression_type=None):
        faults = _faults()
        if faults.write_error and fnmatch.fnmatch(self._local(path), faults.match):
            _record_fault(faults, path)
            raise _os_error(faults.write_error, self._local(path))
        return self.local.create(self._local(path), mime_type, *([compression_type] if compression_type else []))

    def open(self, path, mime_type="application/octet-stream", compression_type=None):
        local = self._local(path)
        faults = _faults()
        if faults.read_failures and fnmatch.fnmatch(local, faults.match) and _record_fault(
                faults, path, None if faults.read_failures == ALWAYS else faults.read_failures):
            return _FailingRead(_os_error(faults.read_error, local))
        return self.local.open(local, mime_type, *([compression_type] if compression_type else []))

    def copy(self, source_file_names, destination_file_names):
        self.local.copy([self._local(p) for p in source_file_names], [self._local(p) for p in destination_file_names])

    def rename(self, source_file_names, destination_file_names):
        self.local.rename([self._local(p) for p in source_file_names],
                          [self._local(p) for p in destination_file_names])

    def exists(self, path):
        return self.local.exists(self._local(path))

    def size(self, path):
        return self.local.size(self._local(path))

    def last_updated(self, path):
        return self.local.last_updated(self._local(path))

    def checksum(self, path):
        return self.local.checksum(self._local(path))

    def metadata(self, path):
        metadata = self.local.metadata(self._local(path))
        return FileMetadata(path, metadata.size_in_bytes, metadata.last_updated_in_seconds)

    def delete(self, paths):
        self.local.delete([self._local(p) for p in paths])
