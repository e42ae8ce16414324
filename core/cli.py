"""What every run_*.py shares: flags derived from an options dataclass, misspelled flags refused, one wrapper
that turns a UserError into one line on stderr and its exit status, and a quiet console (``quiet_console``).

An options field is a flag when its metadata holds help text (``option(default, help=...)``); the flag is
``--<field name>``, its default the field's, its type the field's annotation. A ``bool`` field is a flag that
takes the original's spellings (``--fine_tuning True``) as well as the bare flag (``boolean_flag``). A field typed
``X | tuple[X, ...]`` is a flag that may be given several times (``--data_dir A --data_dir B``): once gives an
``X``, several a tuple. A field typed ``tuple[X, ...]`` takes one comma-separated value (``--mixture_weights
0.7,0.3``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
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
        flag_type = _without_none(hints[field.name])
        if flag_type is bool:
            if default is not False:
                raise TypeError(f"{options_class.__name__}.{field.name}: a boolean flag must default to False")
            boolean_flag(parser, field.name, field.metadata[HELP])
            continue
        kwargs: dict[str, Any] = {"help": field.metadata[HELP]}
        item_type = _repeated_type(flag_type)
        if item_type is not None:
            if default is not field.default:
                raise TypeError(f"{options_class.__name__}.{field.name}: a repeatable flag's default is the field's")
            # NOTE: "append" would add to a default list: None stands for the field's default (options_from_args).
            kwargs["action"] = "append"
            flag_type, default = item_type, (default if default is dataclasses.MISSING else None)
        elif typing.get_origin(flag_type) is tuple:
            flag_type = comma_list(typing.get_args(flag_type)[0])
        if flag_type is not str:
            kwargs["type"] = flag_type
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        if CHOICES in field.metadata:
            kwargs["choices"] = field.metadata[CHOICES]
        parser.add_argument(f"--{field.name}", **kwargs)


TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "y", "on"), ("false", "0", "no", "n", "off")


def boolean(text: str) -> bool:
    """A flag's boolean value in any case: true/false, 1/0, yes/no, on/off."""
    word = text.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise argparse.ArgumentTypeError(f"expected true/false, 1/0 or yes/no, got {text!r}")


def boolean_flag(parser: argparse.ArgumentParser, name: str, help: str, add=None) -> None:
    """``--<name>`` (true), ``--<name> True`` / ``False`` / ``1`` / ``0`` / ``yes`` / ``no``; false when absent.

    NOTE: the original declares ``--fine_tuning`` with ``type=bool``, which reads "False" as true; its README's
    ``--fine_tuning True`` is accepted here, and "False" means false. ``add``: the parser's add_argument to use.
    """
    (add or parser.add_argument)(f"--{name}", nargs="?", const=True, default=False, type=boolean, metavar="BOOL",
                                 help=f"{help} (bare flag: true; or true/false, 1/0, yes/no)")


def comma_list(item_type: Callable[[str], Any]) -> Callable[[str], tuple]:
    """The argparse type of a comma-separated flag value: ``"0.7,0.3"`` -> ``(0.7, 0.3)``."""
    def parse(text: str) -> tuple:
        try:
            return tuple(item_type(item.strip()) for item in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item_type.__name__} values, got "
                                             f"{text!r}") from None

    parse.__name__ = f"{item_type.__name__} list"  # argparse names the type in its error
    return parse


def options_from_args(options_class: type, args: argparse.Namespace, **fields: Any) -> Any:
    """``options_class`` made from the parsed flags of its flag fields, plus ``fields`` (those that are not flags).
    A repeatable flag given once is its one value, given several times a tuple, not given the field's default."""
    hints = typing.get_type_hints(options_class)
    values = {}
    for field in flag_fields(options_class):
        value = getattr(args, field.name)
        if _repeated_type(_without_none(hints[field.name])) is not None:
            if value is None:
                continue  # the field's default
            value = value[0] if len(value) == 1 else tuple(value)
        values[field.name] = value
    return options_class(**values, **fields)


def _without_none(hint: Any) -> Any:
    """``int`` for ``int | None`` (and ``Optional[int]``); the hint itself otherwise (``str | tuple[str, ...]``
    stays a union)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _repeated_type(hint: Any) -> Any:
    """``X`` for a hint ``X | tuple[X, ...]`` (a repeatable flag); None otherwise."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return None
    args = typing.get_args(hint)
    for arg in args:
        if typing.get_origin(arg) is tuple and typing.get_args(arg)[1:] == (Ellipsis,) and \
                set(args) == {typing.get_args(arg)[0], arg}:
            return typing.get_args(arg)[0]
    return None


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser that also keeps the names of its long flags (``flag_names``, without ``--``; ``--help``
    left out), for ``parse_known_flags``. Only flags added with its own ``add_argument`` are kept (not those of an
    argument group)."""

    def __init__(self, *args, **kwargs):
        self.flag_names: list[str] = []  # before argparse's __init__, which adds --help through add_argument
        super().__init__(*args, **kwargs)
        # --verbose is the wrapper's, as --help is argparse's: not in flag_names. quiet_console reads it.
        boolean_flag(self, VERBOSE, "show TensorFlow's own log lines (C++ INFO/WARNING, start-up messages)",
                     add=super().add_argument)

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


# --- a quiet console ---------------------------------------------------------------------------------------------

VERBOSE = "verbose"  # the flag every cli.ArgumentParser has
LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
# NOTE: measured with TF 2.21 on a CPU machine. TF_CPP_MIN_LOG_LEVEL 1 drops the C++ INFO lines written once
# TensorFlow has started (TFRecordDataset's buffer_size, cpu_feature_guard), 2 the WARNING ones, 3 the ERROR ones,
# among them two harmless start-up lines: "failed call to cuInit" (no GPU) and "oneDNN supports DT_STRING only on
# platforms with AVX-512". A real failure still reaches Python as an exception (one line through run(), else a
# traceback), and FATAL lines still print. No level removes what TensorFlow writes while its libraries load
# (absl's "before absl::InitializeLog()" warning, oneDNN's and cudart_stub's INFO lines, each twice): those are
# filtered out of fd 2 during `import tensorflow`, and any other line written then is kept.
QUIET_LEVEL = "3"
START_UP_NOISE = re.compile(r"[IW]\d{4} |WARNING: All log messages before absl::InitializeLog\(\)|"
                            r"To enable the following instructions: ")


def launch(main: Callable[[], int]) -> None:
    """A run_*.py's ``__main__`` block: the quiet console (before anything imports TensorFlow), then ``main()``'s
    exit status."""
    quiet_console()
    sys.exit(main())


def quiet_console(argv: Sequence[str] | None = None) -> bool:
    """Silences TensorFlow's own log lines, unless the user set TF_CPP_MIN_LOG_LEVEL or passed ``--verbose``
    (``argv``, default sys.argv[1:]); returns whether it did. A run_*.py calls it before anything imports
    TensorFlow (in its ``__main__`` block: importing the script, as the tests do, changes nothing)."""
    argv = sys.argv[1:] if argv is None else argv
    if LOG_LEVEL_VARIABLE in os.environ or _verbose(argv):
        return False
    os.environ[LOG_LEVEL_VARIABLE] = QUIET_LEVEL
    if "tensorflow" in sys.modules:
        _quiet_python_loggers()
    else:
        sys.meta_path.insert(0, _QuietImport())
    return True


def _verbose(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for ``--verbose`` (bare, ``--verbose yes``, ``--verbose=1``; not ``--verbose 0``)."""
    for i, arg in enumerate(argv):
        if arg == f"--{VERBOSE}":
            value = argv[i + 1] if i + 1 < len(argv) else ""
            return value.strip().lower() not in FALSE_WORDS
        if arg.startswith(f"--{VERBOSE}="):
            return arg.split("=", 1)[1].strip().lower() not in FALSE_WORDS
    return False


def _quiet_python_loggers() -> None:
    """TensorFlow's Python side: its deprecation notes (the ``tensorflow`` logger) and absl.logging's INFO lines
    ("Sharding callback duration" at each checkpoint save). After TensorFlow's import: absl makes its own logger
    class for the ``absl`` logger, which must not exist before."""
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.WARNING)


@contextlib.contextmanager
def lines_filtered(noise: re.Pattern):
    """What is written to fd 2 inside the block (by C++ code too), less the lines ``noise`` matches, written to
    stderr when the block ends (also when it raises)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                captured.seek(0)
                lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                sys.stderr.write("".join(line for line in lines if not noise.match(line)))
                sys.stderr.flush()
    finally:
        os.close(saved)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` (once) with a loader that imports it inside ``lines_filtered(START_UP_NOISE)``."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with lines_filtered(START_UP_NOISE):
            self.loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self.loader  # as if imported plainly
        _quiet_python_loggers()

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ... during the import
        return getattr(self.loader, name)
