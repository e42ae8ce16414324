"""What every run_*.py shares: flags derived from an options dataclass, misspelled flags refused, and one wrapper
that turns a UserError into one line on stderr and its exit status.

An options field is a flag when its metadata holds help text (``option(default, help=...)``); the flag is
``--<field name>``, its default the field's, its type the field's annotation (``bool`` is ``store_true``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import types
import typing
from typing import Any, Callable, Iterable, Mapping, Sequence

from core.errors import INTERRUPTED_STATUS, UserError

HELP, CHOICES = "help", "choices"  # the metadata keys of an options field that is a flag


def option(default: Any = dataclasses.MISSING, *, help: str, choices: Sequence[str] | None = None) -> Any:
    """A dataclass field that is also a command-line flag, with its help text (and choices, checked by argparse)."""
    metadata = {HELP: help} if choices is None else {HELP: help, CHOICES: tuple(choices)}
    return dataclasses.field(default=default, metadata=metadata)


def flag_fields(options_class: type) -> list[dataclasses.Field]:
    """The fields of ``options_class`` that are flags, in their order."""
    return [field for field in dataclasses.fields(options_class) if HELP in field.metadata]


def add_option_flags(parser: argparse.ArgumentParser, options_class: type,
                     defaults: Mapping[str, Any] | None = None) -> None:
    """Adds one flag per flag field of ``options_class``. ``defaults`` gives the command line's default for a
    field that has none in the class (else the flag is required)."""
    hints = typing.get_type_hints(options_class)
    for field in flag_fields(options_class):
        default = (defaults or {}).get(field.name, field.default)
        kwargs: dict[str, Any] = {"help": field.metadata[HELP]}
        flag_type = _without_none(hints[field.name])
        if flag_type is bool:
            if default is not False:
                raise TypeError(f"{options_class.__name__}.{field.name}: a store_true flag must default to False")
            kwargs["action"] = "store_true"
        else:
            if flag_type is not str:
                kwargs["type"] = flag_type
            if default is dataclasses.MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = default
            if CHOICES in field.metadata:
                kwargs["choices"] = field.metadata[CHOICES]
        parser.add_argument(f"--{field.name}", **kwargs)


def options_from_args(options_class: type, args: argparse.Namespace, **fields: Any) -> Any:
    """``options_class`` made from the parsed flags of its flag fields, plus ``fields`` (those that are not flags)."""
    return options_class(**{field.name: getattr(args, field.name) for field in flag_fields(options_class)}, **fields)


def _without_none(hint: Any) -> Any:
    """``int`` for ``int | None`` (and ``Optional[int]``); the hint itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser that also keeps the names of its long flags (``flag_names``, without ``--``; ``--help``
    left out), for ``parse_known_flags``. Only flags added with its own ``add_argument`` are kept (not those of an
    argument group)."""

    def __init__(self, *args, **kwargs):
        self.flag_names: list[str] = []  # before argparse's __init__, which adds --help through add_argument
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.flag_names += [o[2:] for o in action.option_strings if o.startswith("--") and o != "--help"]
        return action

    def parse_known_flags(self, argv: Sequence[str] | None, passes: Iterable[str]) -> tuple[argparse.Namespace,
                                                                                              list[str]]:
        """``parse_known_args``, but an unknown flag that looks like one of ours misspelled exits 2 with one line
        (not argparse's usage and error). ``passes``: names of the flags another parser takes (Beam's)."""
        args, rest = self.parse_known_args(argv)
        misspelled = misspelled_flag(self.flag_names, rest, set(passes))
        if misspelled:
            self.exit(2, f"{self.prog}: error: {misspelled}\n")
        return args, rest


def misspelled_flag(ours: Sequence[str], unknown: Iterable[str], passes: set[str]) -> str | None:
    """A one-line error for the first flag of ``unknown`` that looks like one of ``ours`` misspelled
    (``--audio-root``, ``--trian_filelist``), else None. Flags named in ``passes`` are not checked.

    NOTE: Beam only warns "Discarding unparseable args" for a flag it does not know, and the job would run on our
    defaults. Flags Beam knows pass through; others are not checked (runners register their own).
    """
    for arg in unknown:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0]
        if name in passes:
            continue
        match = [name.replace("-", "_")] if name.replace("-", "_") in ours else \
            difflib.get_close_matches(name, ours, n=1, cutoff=0.8)
        if match:
            return f"unknown flag --{name} (did you mean --{match[0]}?)"
    return None


def run(body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None, *, prog: str | None = None,
        interrupted: str | None = None) -> int:
    """``body(argv)``'s exit status; a UserError is one line ``<prog>: error: <message>`` on stderr (``error:
    <message>`` without ``prog``) and its ``exit_status``, never a traceback.

    KeyboardInterrupt: with ``interrupted``, that line on stderr and INTERRUPTED_STATUS; without it, Python's own
    handling (a traceback; the process ends by SIGINT).
    """
    try:
        return body(argv)
    except UserError as e:
        print(f"{prog}: error: {e}" if prog else f"error: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(interrupted, file=sys.stderr)
        return INTERRUPTED_STATUS
