"""The one base class of user-facing errors: a one-line message and the exit status of its kind.

Every error a user can act on (a bad config key, a missing file, a refused option) subclasses ``UserError``;
the CLI wrapper (core/cli.py) prints it in one line, ``error: <message>`` (``run_preprocess.py: error: <message>``
for the Beam job), and exits with ``exit_status``, never a traceback.
Ctrl-C (or a SIGTERM the trainer turns into KeyboardInterrupt) exits with ``INTERRUPTED_STATUS``.
"""

from __future__ import annotations

# 128 + SIGINT: what a shell reports for a job stopped by Ctrl-C.
INTERRUPTED_STATUS = 130


class UserError(Exception):
    """An error the user can act on. ``str(error)`` is one line; ``exit_status`` is 2 (bad input or usage, as
    argparse) unless a subclass says otherwise."""

    exit_status = 2
