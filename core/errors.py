"""The one base class of user-facing errors: a one-line message and the exit status of its kind.

Every error a user can act on (a bad config key, a missing file, a refused option) subclasses ``UserError``;
the CLI wrapper prints ``<prog>: error: <message>`` and exits with ``exit_status``, never a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can act on. ``str(error)`` is one line; ``exit_status`` is 2 (bad input or usage, as
    argparse) unless a subclass says otherwise."""

    exit_status = 2
