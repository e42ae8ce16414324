"""The job's files: TFRecord framing, the pass-1 spill files, files staged locally for any Beam filesystem.

The job never imports TensorFlow: records are encoded by ``core.records.to_example`` and framed here (TFRecord:
length, masked CRC-32C of the length, payload, masked CRC-32C of the payload), so a Beam worker process starts
~6 s sooner and holds ~220 MB instead of ~800 MB. All files go through Beam's FileSystems (local paths, gs://, ...),
and each appears whole or not at all (:class:`StagedFile`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import uuid

import google_crc32c
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem

from core.storage import replace_durably

SPILL_DIR = "_tmp"
COPY_CHUNK = 16 * 2**20
FRAME_OVERHEAD = 16  # bytes a TFRecord frame adds to its payload: length (8), its CRC (4), the payload's CRC (4)

RAW = CompressionTypes.UNCOMPRESSED


TMP_MARK = ".tmp-"  # a file being written is named <final name>.tmp-<uuid> beside it (local filesystems)


def write_text(directory: str, name: str, text: str) -> str:
    """Writes ``text`` as UTF-8 to ``<directory>/<name>`` on any Beam filesystem, whole or not at all (see
    :class:`StagedFile`); returns its path."""
    staged = StagedFile(directory, name, durable=True)
    try:
        staged.file.write(text.encode("utf-8"))
        return staged.ship(name)
    finally:
        staged.discard()


class StagedFile:
    """A local file being written (``file``), put whole at ``<directory>/<name>`` on any Beam filesystem by
    ``ship(name)``: a reader of that path sees the old file or the new one, never part of one.

    On a local filesystem it is written beside its destination under ``<stem>.tmp-<uuid>`` and renamed; elsewhere
    (gs://, ...) it is a local scratch file copied in one object create, which object stores make visible only
    once complete. ``durable``: fsync'd before the rename and the rename fsync'd (files a manifest will name, and
    the manifest; not spill files).
    """

    def __init__(self, directory: str, stem: str, durable: bool = False):
        self.directory = directory
        self.durable = durable
        self.is_local = isinstance(FileSystems.get_filesystem(directory), LocalFileSystem)
        if self.is_local:
            os.makedirs(directory, exist_ok=True)
            self.path = os.path.join(directory, f"{stem}{TMP_MARK}{uuid.uuid4().hex}")
        else:
            fd, self.path = tempfile.mkstemp(prefix=f"{stem}.", suffix=".staged")
            os.close(fd)
        self.file = open(self.path, "wb")

    def ship(self, name: str) -> str:
        """Closes the file and puts it at ``<directory>/<name>`` (replacing a file of that name); returns that path."""
        destination = FileSystems.join(self.directory, name)
        if self.durable:
            self.file.flush()
            os.fsync(self.file.fileno())
        self.file.close()
        if self.is_local and self.durable:
            replace_durably(self.path, destination)
        elif self.is_local:
            os.replace(self.path, destination)
        else:
            with open(self.path, "rb") as src, FileSystems.create(destination, compression_type=RAW) as dst:
                shutil.copyfileobj(src, dst, COPY_CHUNK)
            os.remove(self.path)
        return destination

    def discard(self) -> None:
        """Removes what is left of an unfinished file (a no-op once shipped)."""
        self.file.close()
        if os.path.exists(self.path):
            os.remove(self.path)


class Digest:
    """Size, CRC-32C and SHA-256 of the bytes given to ``update``, in order."""

    def __init__(self):
        self.num_bytes = 0
        self.crc = google_crc32c.Checksum()
        self.sha = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self.num_bytes += len(data)
        self.crc.update(data)
        self.sha.update(data)

    @property
    def crc32c(self) -> str:
        return self.crc.hexdigest().decode("ascii")

    @property
    def sha256(self) -> str:
        return self.sha.hexdigest()


def masked_crc32c(data: bytes) -> bytes:
    """TFRecord's masked CRC-32C of ``data``, 4 bytes little-endian."""
    crc = google_crc32c.value(data)
    return struct.pack("<I", ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF)


class SpillFile:
    """A TFRecord file of pass-1 records, ``<spill_dir>/<uuid>.tfrecord`` once closed."""

    def __init__(self, spill_dir: str):
        self.name = f"{uuid.uuid4().hex}.tfrecord"
        self.path = FileSystems.join(spill_dir, self.name)
        self.staged = StagedFile(spill_dir, self.name)
        self.file = self.staged.file
        self.size = 0

    def write(self, record: bytes) -> int:
        """Appends one record framed as TFRecord (8 + 4 + len + 4 bytes); returns the frame's offset."""
        offset = self.size
        length = struct.pack("<Q", len(record))
        self.file.write(length + masked_crc32c(length))
        self.file.write(record)
        self.file.write(masked_crc32c(record))
        self.size += len(record) + FRAME_OVERHEAD
        return offset

    def close(self, ship: bool = True) -> None:
        """Closes the file and ships it to its path (``ship``) or discards it (a failed bundle)."""
        if ship:
            self.staged.ship(self.name)
        else:
            self.staged.discard()


def read_frame(f, offset: int, length: int) -> bytes:
    """The TFRecord frame (length, its CRC, ``length`` bytes of payload, their CRC) at ``offset`` of a spill file."""
    f.seek(offset)
    frame = f.read(length + FRAME_OVERHEAD)
    if len(frame) != length + FRAME_OVERHEAD or struct.unpack_from("<Q", frame)[0] != length:
        raise IOError(f"spill record at offset {offset} is not the {length}-byte record that was written there")
    return frame
