"""The one CLI contract of the run_*.py scripts: a UserError is one line and its exit status, never a traceback;
each flag of an options dataclass is written once (in the dataclass) and the scripts' defaults are its; a flag of
ours misspelled is refused."""

import argparse
import dataclasses
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from core import cli
from core.errors import INTERRUPTED_STATUS, UserError
from model.options import TrainingError, TrainOptions
from pipeline.options import OptionsError, PreprocessOptions


class _Refused(UserError):
    exit_status = 3


@pytest.mark.parametrize("script, flag, prefix", [("run_preprocess.py", "--output_dir", "run_preprocess.py: error: "),
                                                  ("run_train.py", "--checkpoint_path", "error: ")])
def test_a_script_with_a_bad_config_path_says_so_in_one_line(tmp_path, script, flag, prefix):
    missing = tmp_path / "nope.json"
    args = ["--config", str(missing), flag, str(tmp_path / "out")]
    if script == "run_train.py":
        args += ["--data_dir", str(tmp_path)]
    result = subprocess.run([sys.executable, script, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == [f"{prefix}{missing}: cannot read config (No such file or directory)"]
    assert result.stderr.splitlines()[-1] == errors[0]
    assert not (tmp_path / "out").exists()


def test_run_maps_a_user_error_to_one_line_and_its_status(capsys):
    def refuse(argv):
        raise _Refused(f"cannot use {argv[0]}")

    assert cli.run(refuse, ["x.json"], prog="run_x.py") == 3
    assert capsys.readouterr() == ("", "run_x.py: error: cannot use x.json\n")
    assert cli.run(refuse, ["y.json"]) == 3
    assert capsys.readouterr().err == "error: cannot use y.json\n"

    def refuse_options(argv):
        TrainOptions(data_dir="d", max_to_keep=0)

    assert cli.run(refuse_options) == 2
    assert capsys.readouterr().err == "error: --max_to_keep must be an integer >= 1, got 0\n"
    assert cli.run(lambda argv: 0) == 0 and cli.run(lambda argv: 1) == 1


def test_run_leaves_bugs_and_argparse_exits_alone():
    """Only UserError is the user's: a bug keeps its traceback, argparse's own exit goes through."""
    def bug(argv):
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        cli.run(bug)
    with pytest.raises(SystemExit) as exit_:
        cli.run(lambda argv: argparse.ArgumentParser().parse_args(argv), ["--nope"])
    assert exit_.value.code == 2


def test_run_on_ctrl_c(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    assert cli.run(interrupted, interrupted="interrupted (checkpoint saved)") == INTERRUPTED_STATUS == 130
    assert capsys.readouterr().err == "interrupted (checkpoint saved)\n"
    with pytest.raises(KeyboardInterrupt):  # no message given: Python's own handling
        cli.run(interrupted)


def test_options_errors_are_user_errors():
    assert issubclass(TrainingError, UserError)
    assert issubclass(OptionsError, UserError) and issubclass(OptionsError, ValueError)
    with pytest.raises(OptionsError, match="^num_shards must be >= 1, got 0$"):
        PreprocessOptions(filelists={}, audio_root="a", output_dir="o", num_shards=0)


def _flags_of(parser: cli.ArgumentParser, options_class: type, not_flags: set[str]) -> None:
    """Each field of options_class but ``not_flags`` is exactly one flag of ``parser``, with the field's default
    (or, for a field without one, the command line's own default or required); help text from the field."""
    names = {field.name for field in dataclasses.fields(options_class)}
    assert {field.name for field in cli.flag_fields(options_class)} == names - not_flags
    for field in dataclasses.fields(options_class):
        assert parser.flag_names.count(field.name) == (field.name not in not_flags), field.name
        if field.name not in not_flags and field.default is not dataclasses.MISSING:
            assert parser.get_default(field.name) == field.default, field.name
    assert len(parser.flag_names) == len(set(parser.flag_names))


def test_run_train_flags_are_train_options():
    import run_train

    parser = run_train.make_parser()
    _flags_of(parser, TrainOptions, not_flags={"logged_clips", "progress_bar"})
    assert parser.flag_names[0] == "config"
    args = parser.parse_args(["--data_dir", "d"])
    assert cli.options_from_args(TrainOptions, args) == TrainOptions(data_dir="d")
    args = parser.parse_args(["--data_dir", "d", "--training_steps", "7", "--fine_tuning", "--mixed_precision",
                              "mixed_bfloat16", "--init_from", "c"])
    assert cli.options_from_args(TrainOptions, args) == TrainOptions(
        data_dir="d", training_steps=7, fine_tuning=True, mixed_precision="mixed_bfloat16", init_from="c")
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --data_dir is required: TrainOptions has no default for it


def test_run_preprocess_flags_are_preprocess_options():
    import run_preprocess

    parser = run_preprocess.make_parser()
    _flags_of(parser, PreprocessOptions, not_flags={"filelists"})
    assert parser.flag_names[:3] == ["config", "train_filelist", "val_filelist"]
    args, beam_args = run_preprocess.parse_args(["--max_seconds", "1.5", "--runner", "DirectRunner"])
    assert beam_args == ["--runner", "DirectRunner"]
    filelists = {"train": args.train_filelist, "val": args.val_filelist}
    assert cli.options_from_args(PreprocessOptions, args, filelists=filelists) == PreprocessOptions(
        filelists={"train": run_preprocess.DEMO_TRAIN, "val": run_preprocess.DEMO_VAL},
        audio_root=run_preprocess.DEMO_AUDIO_ROOT, output_dir="data/tfrecords", max_seconds=1.5)


def test_flags_follow_the_dataclass():
    """A default, type, choice or help text changed in the dataclass is the flag's."""
    @dataclasses.dataclass(frozen=True)
    class Options:
        name: str = cli.option(help="a name")
        count: int | None = cli.option(4, help="a count")
        scale: float = cli.option(0.5, help="a scale")
        mode: str = cli.option("b", choices=("a", "b"), help="a mode")
        fast: bool = cli.option(False, help="go fast")
        internal: int = 1

    parser = cli.ArgumentParser(prog="p")
    cli.add_option_flags(parser, Options)
    assert parser.flag_names == ["name", "count", "scale", "mode", "fast"]
    args = parser.parse_args(["--name", "n", "--count", "5", "--scale", "2"])
    assert cli.options_from_args(Options, args) == Options(name="n", count=5, scale=2.0)
    assert cli.options_from_args(Options, parser.parse_args(["--name", "n", "--fast", "--mode", "a"]),
                                 internal=2) == Options(name="n", fast=True, mode="a", internal=2)
    help_text = parser.format_help()
    assert "a count" in help_text and "{a,b}" in help_text and "--internal" not in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "n", "--mode", "c"])
    with_default = cli.ArgumentParser(prog="p")
    cli.add_option_flags(with_default, Options, defaults={"name": "dflt"})
    assert with_default.parse_args([]).name == "dflt"


def test_repeatable_and_comma_list_flags_follow_the_dataclass():
    """``X | tuple[X, ...]``: a flag given once is an X, several times a tuple, absent the field's default;
    ``tuple[X, ...]``: one comma-separated value."""
    @dataclasses.dataclass(frozen=True)
    class Options:
        path: str | tuple[str, ...] = cli.option(help="one or several paths")
        extra: int | tuple[int, ...] = cli.option(7, help="one or several numbers")
        weights: tuple[float, ...] | None = cli.option(None, help="comma-separated weights")

    parser = cli.ArgumentParser(prog="p")
    cli.add_option_flags(parser, Options)
    assert parser.flag_names == ["path", "extra", "weights"]
    parse = lambda *argv: cli.options_from_args(Options, parser.parse_args(argv))  # noqa: E731
    assert parse("--path", "a") == Options(path="a")
    assert parse("--path", "a", "--path", "b", "--extra", "1", "--extra", "2", "--weights", "0.5, 2") == \
        Options(path=("a", "b"), extra=(1, 2), weights=(0.5, 2.0))
    assert parse("--path", "a", "--extra", "3").extra == 3
    for bad in (["--extra", "1"], ["--path", "a", "--weights", "1,x"], ["--path", "a", "--extra", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_misspelled_flags_are_refused(capsys):
    import run_preprocess

    for flag, ours in (("--audio-root", "audio_root"), ("--trian_filelist", "train_filelist"),
                       ("--max_secnods", "max_seconds"), ("--output-dir=x", "output_dir")):
        with pytest.raises(SystemExit) as exit_:
            run_preprocess.parse_args([flag, "1"])
        assert exit_.value.code == 2
        name = flag.split("=")[0]
        assert capsys.readouterr().err == f"{run_preprocess.make_parser().prog}: error: unknown flag {name} " \
                                          f"(did you mean --{ours}?)\n"
    assert run_preprocess.parse_args(["--runner", "DirectRunner", "--zzz", "1"])[1] == ["--runner", "DirectRunner",
                                                                                      "--zzz", "1"]


def test_misspelled_flag_needs_no_beam():
    parser = cli.ArgumentParser(prog="p")
    parser.add_argument("--audio_root")
    assert parser.flag_names == ["audio_root"]
    assert cli.misspelled_flag(parser.flag_names, ["--audio-root", "x"], set()) == \
        "unknown flag --audio-root (did you mean --audio_root?)"
    assert cli.misspelled_flag(parser.flag_names, ["--audio_rot"], {"audio_rot"}) is None  # another parser's
    assert cli.misspelled_flag(parser.flag_names, ["--runner", "x", "audio-root"], set()) is None
