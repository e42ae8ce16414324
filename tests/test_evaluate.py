"""run_evaluate.py on the demo corpus: a directory of generated wavs with every odd case (missing, unreadable,
another rate, lengths off, silence), a command-line run, and a checkpoint's copy synthesis."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import run_evaluate
import run_inference
from conftest import DEMO_VAL, DEMO_WAVS, REPO_ROOT, write_audio
from core.audio import load_audio, resample
from core.metrics import METRICS

SR, HOP = 22050, 256  # configs/v1.json, the default config of a generated directory
IDS = ["LJ001-0001", "LJ001-0002", "LJ001-0003", "LJ001-0004", "LJ001-0005", "LJ001-0006", "LJ001-0007",
       "LJ001-0008"]


def reference(clip_id: str, sampling_rate: int = SR) -> np.ndarray:
    """A demo clip as training loads it (the default --reference_level)."""
    with open(os.path.join(DEMO_WAVS, f"{clip_id}.wav"), "rb") as f:
        return load_audio(f.read(), sampling_rate, normalise=True)


def filelist(tmp_path, ids) -> str:
    path = tmp_path / "list.txt"
    path.write_text("".join(f"{i}|some text\n" for i in ids), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory):
    """Generated files for IDS: exact (as run_inference names them), at 16 kHz, missing, unreadable, 300 samples
    short (over a hop), half as long, silent, and exact again under <id>.wav."""
    d = tmp_path_factory.mktemp("generated")
    exact = {i: reference(i) for i in IDS}
    write_audio(d / f"{IDS[0]}_generated.wav", exact[IDS[0]], SR, subtype="FLOAT")
    write_audio(d / f"{IDS[1]}.wav", resample(exact[IDS[1]], SR, 16000), 16000, subtype="FLOAT")
    (d / f"{IDS[3]}_generated.wav").write_bytes(b"RIFF....WAVE not really")
    write_audio(d / f"{IDS[4]}_generated.wav", exact[IDS[4]][:-300], SR, subtype="FLOAT")
    write_audio(d / f"{IDS[5]}_generated.wav", exact[IDS[5]][: exact[IDS[5]].size // 2], SR, subtype="FLOAT")
    write_audio(d / f"{IDS[6]}_generated.wav", np.zeros_like(exact[IDS[6]]), SR)
    write_audio(d / f"{IDS[7]}.wav", exact[IDS[7]], SR, subtype="FLOAT")
    return str(d)


def read_outputs(out_dir) -> tuple[dict, dict[str, dict[str, str]]]:
    with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    with open(os.path.join(out_dir, "clips.csv"), encoding="utf-8") as f:
        rows = {row["clip"]: row for row in csv.DictReader(f)}
    return summary, rows


def test_a_generated_directory_scores_each_clip_and_says_what_is_odd(tmp_path, odd_dir, caplog, capsys):
    caplog.set_level(logging.INFO)
    out = str(tmp_path / "out")
    status = run_evaluate.main(["--filelist", filelist(tmp_path, IDS), "--audio_root", DEMO_WAVS,
                                "--generated_dir", odd_dir, "--output_dir", out])
    assert status == 0
    summary, rows = read_outputs(out)
    scored = [IDS[0], IDS[1], IDS[4], IDS[6], IDS[7]]
    assert list(rows) == scored and summary["num_clips"] == 5
    failed = {f["clip"]: f["reason"] for f in summary["failed"]}
    assert set(failed) == {IDS[2], IDS[3], IDS[5]}
    assert "no generated file" in failed[IDS[2]] and f"{IDS[2]}_generated.wav or " in failed[IDS[2]]
    assert "cannot decode audio" in failed[IDS[3]]
    assert "more than 4 apart" in failed[IDS[5]]
    # Exact copies (float WAV) are perfect; one resampled to 16 kHz and back is close; one trimmed too.
    for clip in (IDS[0], IDS[7], IDS[4]):
        assert float(rows[clip]["mel_l1"]) < 1e-5 and float(rows[clip]["pesq"]) > 4.4
        assert float(rows[clip]["vuv_f1"]) == 1.0
    assert float(rows[IDS[1]]["pesq"]) > 4.0 and float(rows[IDS[1]]["vuv_f1"]) > 0.9
    assert rows[IDS[6]]["pesq"] == "" and float(rows[IDS[6]]["vuv_f1"]) == 0.0  # silence: PESQ undefined
    assert summary["pesq"]["mean"] == pytest.approx(np.mean([float(rows[c]["pesq"]) for c in scored if c != IDS[6]]))
    assert set(summary) == set(METRICS) | {"num_clips", "failed"}
    lines = [r.getMessage() for r in caplog.records]
    assert all("\n" not in line for line in lines)
    for clip, words in ((IDS[1], "is at 16000 Hz; resampled to 22050 Hz"), (IDS[4], "(-1.2 frames); both trimmed"),
                        (IDS[6], "NaN for pesq (generated audio is silent)"), (IDS[3], "cannot decode audio")):
        assert any(line.startswith(f"{clip}: ") and words in line for line in lines), (clip, words)
    table = capsys.readouterr().out
    assert "5 clips scored, 3 failed" in table and table.count("\n") == len(METRICS) + 2


def test_the_command_line_prints_the_table(tmp_path, odd_dir):
    command = [sys.executable, os.path.join(REPO_ROOT, "run_evaluate.py"), "--audio_root", DEMO_WAVS,
               "--generated_dir", odd_dir, "--filelist", filelist(tmp_path, IDS[:2]), "--output_dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["metric", "mean", "±", "ci95", "clips"] and lines[-1] == "2 clips scored, 0 failed"
    assert lines[3].split()[:2] == ["pesq", f"{read_outputs(tmp_path)[0]['pesq']['mean']:.4f}"]


def test_nothing_scored_exits_1_and_still_writes_the_summary(tmp_path, odd_dir, capsys):
    status = run_evaluate.main(["--filelist", filelist(tmp_path, IDS[2:4]), "--audio_root", DEMO_WAVS,
                                "--generated_dir", odd_dir, "--output_dir", str(tmp_path)])
    assert status == 1
    assert capsys.readouterr().err == "error: no clip could be scored (2 failed; see above)\n"
    summary, rows = read_outputs(tmp_path)
    assert summary["num_clips"] == 0 and rows == {} and summary["pesq"] == {"mean": None, "ci95": None}
    assert [f["clip"] for f in summary["failed"]] == IDS[2:4]


def test_bad_options_are_one_line(tmp_path, odd_dir, capsys):
    args = ["--filelist", filelist(tmp_path, IDS), "--audio_root", DEMO_WAVS, "--output_dir", str(tmp_path)]
    assert run_evaluate.main(args) == 2
    assert capsys.readouterr().err == "error: give exactly one of --checkpoint and --generated_dir\n"
    assert run_evaluate.main(args + ["--generated_dir", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: not a directory" in capsys.readouterr().err
    assert run_evaluate.main(args + ["--generated_dir", odd_dir, "--precision", "bfloat16"]) == 2
    assert capsys.readouterr().err == "error: --precision applies to --checkpoint's copy synthesis only\n"


def test_a_checkpoints_copy_synthesis_scores_as_its_written_outputs(tmp_path, tiny_checkpoint, caplog):
    """--checkpoint against run_inference.py's outputs of the same checkpoint scored with --generated_dir."""
    caplog.set_level(logging.INFO)
    ids = [line.split("|")[0] for line in open(DEMO_VAL, encoding="utf-8").read().splitlines()[:2]]
    listed = filelist(tmp_path, ids)
    assert run_evaluate.main(["--filelist", listed, "--audio_root", DEMO_WAVS, "--checkpoint", tiny_checkpoint,
                              "--output_dir", str(tmp_path / "ckpt")]) == 0
    assert any(r.getMessage() == f"{ids[0]}: reference {os.path.join(DEMO_WAVS, ids[0] + '.wav')} is at 22050 Hz; "
               f"resampled to 8000 Hz" for r in caplog.records)
    generated = str(tmp_path / "generated")
    assert run_inference.main(["--checkpoint", tiny_checkpoint, "--input_wavs_dir", DEMO_WAVS, "--input_filelist",
                               listed, "--output_dir", generated]) == 0
    assert run_evaluate.main(["--filelist", listed, "--audio_root", DEMO_WAVS, "--generated_dir", generated,
                              "--config", os.path.join(tiny_checkpoint, "config.json"),
                              "--output_dir", str(tmp_path / "files")]) == 0
    (summary, rows), (_, written) = read_outputs(tmp_path / "ckpt"), read_outputs(tmp_path / "files")
    assert summary["num_clips"] == 2 and list(rows) == ids
    for clip in ids:
        for name in ("mel_l1", "mrstft", "periodicity"):  # the written files are 16-bit
            assert float(rows[clip][name]) == pytest.approx(float(written[clip][name]), rel=0.02, abs=1e-3), name
        assert math.isfinite(float(rows[clip]["mel_l1"])) and float(rows[clip]["mel_l1"]) > 0.1  # untrained
    with sf.SoundFile(os.path.join(generated, f"{ids[0]}_generated.wav")) as f:
        assert f.samplerate == 8000
    # The same copy synthesis in bfloat16: other audio (each metric moved), scored near the float32 one.
    assert run_evaluate.main(["--filelist", listed, "--audio_root", DEMO_WAVS, "--checkpoint", tiny_checkpoint,
                              "--precision", "bfloat16", "--output_dir", str(tmp_path / "bf16")]) == 0
    low, _ = read_outputs(tmp_path / "bf16")
    for name in ("mel_l1", "mrstft"):
        assert low[name]["mean"] != summary[name]["mean"], name
        assert low[name]["mean"] == pytest.approx(summary[name]["mean"], rel=0.05), name
