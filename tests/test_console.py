"""What a user sees: each run_*.py prints only our lines (no TensorFlow start-up noise unless --verbose), training
draws one progress bar for the whole run with the original's `Steps : N` lines on stdout, the original's boolean
flag spellings are accepted, and TensorBoard holds the resolved config and the learning and step rates."""

import dataclasses
import glob
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

import run_preprocess
import run_train
from conftest import REPO_ROOT, write_audio
from core import cli
from model.options import TrainOptions
from pipeline.options import PreprocessOptions
from tests.train_helpers import config_file, debug_config, tone_shards

CFG = debug_config(segment_size=256, batch_size=1, mpd_periods=[2], learning_rate=0.001)
STEPS = 8  # 3 clips of batch 1: 3 steps per epoch, so the run spans 3 epochs
# What TensorFlow writes on its own: C++ log lines (I/W/E + MMDD), absl's, oneDNN's, CUDA's, its Python warnings.
NOISE = re.compile(r"^[IWEF]\d{4} |oneDNN|cuInit|absl|Sharding callback|WARNING:tensorflow|cudart")


def run_script(script, *args, env=None):
    environment = {k: v for k, v in os.environ.items() if k != cli.LOG_LEVEL_VARIABLE}
    proc = subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600, env={**environment, **(env or {})})
    return proc


def noise(stderr: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]", stderr) if NOISE.search(line)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real run_train.py of 8 steps (a validation at 0 and 5, summaries every 2 steps) and its output."""
    root = tmp_path_factory.mktemp("console")
    tone_shards(root / "data", CFG, num_train=3, num_val=1, frames=(6, 12))
    proc = run_script("run_train.py", "--config", config_file(root, CFG), "--data_dir", root / "data",
                      "--checkpoint_path", root / "ckpt", "--training_steps", STEPS, "--stdout_interval", 3,
                      "--validation_interval", 5, "--checkpoint_interval", 4, "--summary_interval", 2,
                      "--fine_tuning", "False")
    assert proc.returncode == 0, proc.stderr
    return root, proc


def test_training_prints_only_our_lines(trained):
    _, proc = trained
    assert noise(proc.stderr) == []
    lines = [line for line in proc.stderr.splitlines() if "|" not in line and line.strip()]
    assert any(line.startswith("training ") and "from step 0 to 8" in line for line in lines), lines
    assert lines[-1].startswith("done: step 8, 8 steps in "), lines


def test_training_draws_one_bar_over_the_run_and_steps_lines_on_stdout(trained):
    _, proc = trained
    bars = [segment for segment in re.split(r"[\r\n]", proc.stderr) if re.search(r"\d+/\d+ \[", segment)]
    counts = [tuple(map(int, re.search(r"(\d+)/(\d+) \[", bar).groups())) for bar in bars]
    assert {total for _, total in counts} == {STEPS}, bars  # the whole run's steps, not an epoch's
    done = [n for n, _ in counts]
    assert done == sorted(done) and done[-1] == STEPS and done.count(STEPS) <= 2, bars  # one bar, never redrawn
    assert "epoch 3" in bars[-1] and re.search(r"step/s|s/step", bars[-1]) and "gen " in bars[-1] \
        and "mel " in bars[-1], bars[-1]
    assert proc.stderr.count("\n") - proc.stderr.count("|") < 10  # no line per epoch
    stdout = proc.stdout.splitlines()
    expected = ["Steps : 0,", "validation at step 0: mel error ", "Steps : 3,", "validation at step 5: mel error ",
                "Steps : 6,"]
    assert len(stdout) == len(expected) and all(map(str.startswith, stdout, expected)), stdout
    assert re.fullmatch(r"Steps : 3, Gen Loss Total : \d+\.\d{3}, Mel-Spec\. Error : \d+\.\d{3}, s/b : \d+\.\d{3}",
                        stdout[2])


def test_tensorboard_holds_the_config_and_the_learning_and_step_rates(trained):
    root, _ = trained
    scalars, texts = {}, {}
    for event_file in glob.glob(str(root / "ckpt" / "logs" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "text":
                    texts[value.tag] = (event.step, tf.make_ndarray(value.tensor).item().decode())
                else:
                    scalars.setdefault(value.tag, []).append(event.step)
    assert texts["config"][0] == 0 and '"upsample_initial_channel": 16' in texts["config"][1]
    assert texts["options"][0] == 0 and '"training_steps": 8' in texts["options"][1]
    assert scalars["training/learning_rate"] == [0, 2, 4, 6]
    assert scalars["training/steps_per_second"] == [2, 4, 6]  # a rate needs two summaries


def test_inference_prints_only_our_lines_and_verbose_shows_tensorflow(trained, tmp_path):
    root, _ = trained
    import numpy as np
    write_audio(tmp_path / "wavs" / "a.wav", np.sin(np.arange(1600) / 5).astype(np.float32) * 0.3, 8000)
    proc = run_script("run_inference.py", "--checkpoint", root / "ckpt", "--input_wavs_dir", tmp_path / "wavs",
                      "--output_dir", tmp_path / "out", "--jit_compile", "no")
    assert proc.returncode == 0 and noise(proc.stderr) == [], proc.stderr
    assert proc.stdout.splitlines() == [f"wrote 1 files to {tmp_path / 'out'}; 0 failed"]
    proc = run_script("run_export.py", "--help", "--verbose")  # imports TensorFlow (--help of the rest do not)
    assert proc.returncode == 0
    assert any(line.startswith("I0000 ") for line in noise(proc.stderr)), proc.stderr  # --verbose: TF's own lines


def test_preprocess_and_help_print_only_our_lines(tmp_path):
    proc = run_script("run_preprocess.py", "--runner", "DirectRunner", "--config", "configs/debug.json",
                      "--output_dir", tmp_path / "shards")
    assert proc.returncode == 0 and noise(proc.stderr) == [], proc.stderr
    assert proc.stdout.startswith(f"Wrote and committed {tmp_path / 'shards'}")
    for script in ("run_train.py", "run_preprocess.py", "run_export.py", "run_inference.py", "run_convert.py"):
        proc = run_script(script, "--help")
        assert proc.returncode == 0 and proc.stderr == "" and proc.stdout.startswith("usage: "), (script, proc.stderr)
        assert "--verbose [BOOL]" in proc.stdout


def test_a_bad_beam_flag_value_is_one_line(capsys):
    assert run_preprocess.main(["--direct_num_workers", "abc"]) == 2
    assert capsys.readouterr().err == \
        "run_preprocess.py: error: argument --direct_num_workers: invalid int value: 'abc'\n"


# --- flags -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("words, expected", [([], False), (["--{}"], True),
                                             *[(["--{}", w], True) for w in ("True", "true", "1", "yes", "YES")],
                                             *[(["--{}", w], False) for w in ("False", "false", "0", "no", "No")],
                                             (["--{}=True"], True), (["--{}=false"], False)])
def test_boolean_flags_take_the_original_spellings(words, expected):
    parser = run_train.make_parser()
    names = [field.name for field in dataclasses.fields(TrainOptions) if field.name in parser.flag_names
             and field.type in (bool, "bool")]
    assert {"fine_tuning", "keep_schedule", "jit_compile"} <= set(names)
    for name in names:
        args = parser.parse_args(["--data_dir", "d", *(w.format(name) for w in words)])
        assert getattr(cli.options_from_args(TrainOptions, args), name) is expected, (name, words)
    pre = run_preprocess.make_parser()
    for field in dataclasses.fields(PreprocessOptions):
        if field.type in (bool, "bool") and field.name in pre.flag_names:
            assert getattr(pre.parse_args([w.format(field.name) for w in words]), field.name) is expected


def test_a_bad_boolean_value_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_train.make_parser().parse_args(["--data_dir", "d", "--fine_tuning", "maybe"])
    assert exit_.value.code == 2
    assert "argument --fine_tuning: expected true/false, 1/0 or yes/no, got 'maybe'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, verbose", [([], False), (["--verbose"], True), (["--verbose", "--x"], True),
                                           (["--verbose", "0"], False), (["--verbose=no"], False),
                                           (["--verbose", "yes"], True), (["--verbose=1"], True)])
def test_verbose_is_read_before_parsing(argv, verbose, monkeypatch):
    assert cli._verbose(argv) is verbose
    monkeypatch.setenv(cli.LOG_LEVEL_VARIABLE, "0")  # the user's own setting wins: nothing is changed
    assert cli.quiet_console(argv) is False and os.environ[cli.LOG_LEVEL_VARIABLE] == "0"


def test_start_up_lines_are_filtered_and_the_rest_kept(capfd):
    with pytest.raises(ZeroDivisionError):
        with cli.lines_filtered(cli.START_UP_NOISE):
            os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                        b"I0000 00:00:1.2 3 port.cc:153] oneDNN custom operations are on.\n"
                        b"E0000 00:00:1.2 3 x.cc:1] a real error\n"
                        b"W0000 00:00:1.2 3 cudart_stub.cc:31] Could not find cuda drivers\n")
            print("ours", file=sys.stderr)
            1 / 0
    # (pytest's sys.stderr is not fd 2 here: "ours" reaches it first)
    assert sorted(capfd.readouterr().err.splitlines()) == ["E0000 00:00:1.2 3 x.cc:1] a real error", "ours"]
