"""A failed job in one line: what ``p.run()`` and ``wait_until_finish()`` raise, turned into a UserError.

A step fails with a UserError of ours (``pipeline.clips.StorageError``: a file the storage failed to read or
write, with the cause); each runner hands it back in its own form: the error itself (Dask), a RuntimeError whose
text is the worker's traceback (DirectRunner), a text of tracebacks (Dataflow). :func:`failures_as_one_line` finds
it in any of them, and keeps Beam's copies of its traceback off the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys

from core.errors import UserError
from core.storage import first_line

# Beam's loggers of a failed bundle, in this process for DirectRunner's in-memory and multi-threaded modes.
BUNDLE_FAILURE_LOGGERS = ("apache_beam.runners.common", "apache_beam.runners.worker.sdk_worker")
TRACEBACK = "Traceback (most recent call last)"
_ERROR_LINE = re.compile(r"^(?:\w+\.)*\w+: .+$", re.MULTILINE)  # "module.Type: message" in a traceback's text
_STEP_ANNOTATION = re.compile(r"( \[while running '[^']*'\])+$")  # what Beam appends to a step's error


class JobError(UserError):
    """A job that failed while running; one line: a step's own UserError (a file the storage failed to read, named
    with the cause) with that error's exit status, or the last error of a failed step (status 1)."""

    def __init__(self, message: str, exit_status: int = 1):
        super().__init__(message)
        self.exit_status = exit_status


def _user_error_classes(base: type = UserError) -> dict[str, type]:
    """Every UserError subclass imported so far, by class name."""
    classes = {}
    for cls in base.__subclasses__():
        classes[cls.__name__] = cls
        classes.update(_user_error_classes(cls))
    return classes


def user_error_in(error: BaseException) -> tuple[str, int] | None:
    """The message and exit status of the first UserError a failed job's error holds (the error, its causes, or a
    line ``<module>.<UserError subclass>: <message>`` of the worker tracebacks in their text); None if none."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for e in chain:
        if isinstance(e, UserError):
            return _STEP_ANNOTATION.sub("", str(e).strip()), e.exit_status
    classes = _user_error_classes()
    pattern = re.compile(rf"^\s*(?:[\w.]+\.)?({'|'.join(map(re.escape, classes))}): (.+)$", re.MULTILINE)
    for e in chain:
        match = pattern.search(str(e))
        if match:
            return _STEP_ANNOTATION.sub("", match.group(2).strip()), classes[match.group(1)].exit_status
    return None


def job_error(error: Exception) -> JobError:
    """The one-line JobError of a job that raised ``error``: its UserError if it holds one, else its last error."""
    found = user_error_in(error)
    if found:
        return JobError(*found)
    # NOTE: DirectRunner raises a RuntimeError whose text is the worker's traceback: its last "Type: message" says.
    lines = _ERROR_LINE.findall(str(error)) if TRACEBACK in str(error) else []
    return JobError(f"the Beam job failed: {_STEP_ANNOTATION.sub('', lines[-1] if lines else first_line(error))}")


def _not_a_user_error_record(record: logging.LogRecord) -> bool:
    """A logging filter: False for Beam's log of a bundle that failed with a UserError (its traceback)."""
    error = record.exc_info[1] if record.exc_info else None
    return user_error_in(error or Exception(record.getMessage())) is None


class _UserErrorTracebacksDropped:
    """sys.stderr while a job runs, less the tracebacks of a UserError: Beam's SDK worker prints a failed bundle's
    traceback there (besides logging it), from its own threads."""

    def __init__(self, stream):
        self.stream = stream
        self.dropped = False

    def write(self, text: str) -> int:
        was_dropped, self.dropped = self.dropped, False
        if text.startswith(TRACEBACK) and user_error_in(Exception(text)):
            self.dropped = True
        elif not (was_dropped and text == "\n"):  # print()'s newline after a dropped traceback
            self.stream.write(text)
        return len(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def failures_as_one_line():
    """Around a job's ``p.run()`` and ``wait_until_finish()``: a failure leaves as :class:`JobError`, one line.

    A step that failed with a UserError gives that error's line and exit status, and Beam's copies of its traceback
    (logged, printed) are dropped; any other failure gives its last error's line, and Beam's traceback stays on
    stderr for the bug report. KeyboardInterrupt passes.
    """
    loggers = [logging.getLogger(name) for name in BUNDLE_FAILURE_LOGGERS]
    for logger in loggers:
        logger.addFilter(_not_a_user_error_record)
    try:
        with contextlib.redirect_stderr(_UserErrorTracebacksDropped(sys.stderr)):
            yield
    except Exception as e:  # a failed bundle, re-raised by the runner in its own form
        raise job_error(e) from None
    finally:
        for logger in loggers:
            logger.removeFilter(_not_a_user_error_record)
