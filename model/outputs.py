"""Output directories of the run_* scripts: made, and checked writable, before the work starts."""

from __future__ import annotations

import os
import uuid

import tensorflow as tf
from core.errors import UserError


class OutputError(UserError):
    """An output path that cannot be written; the message is one line naming it."""


def writable_dir(path: str, what: str) -> str:
    """Makes ``path`` (any tf.io.gfile filesystem) and writes and deletes one empty probe file in it; returns
    ``path``. OutputError (one line) if it cannot: a path under a file, no permission, a read-only bucket."""
    probe = os.path.join(path, f".write-probe-{uuid.uuid4().hex}")
    try:
        tf.io.gfile.makedirs(path)
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("")
        tf.io.gfile.remove(probe)
    except (OSError, tf.errors.OpError) as e:
        why = e.message if isinstance(e, tf.errors.OpError) else f"{e.strerror or e}"
        raise OutputError(f"{path}: cannot write to this {what} ({why})") from None
    return path
