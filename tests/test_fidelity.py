"""benchmarks/bench_fidelity.py's verdicts without running it (that needs torch and minutes): the config it accepts
and refuses, and the comparison and targets of fidelity_report on curves and clips whose answer is known."""

import json
import math

import numpy as np
import pytest

from benchmarks import bench_fidelity, fidelity_report
from core.metrics import METRICS


def _config(tmp_path, **overrides):
    with open("configs/demo.json", encoding="utf-8") as f:
        raw = {**json.load(f), **overrides}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    return str(path)


def test_the_config_gets_the_originals_full_discriminators(tmp_path):
    cfg = bench_fidelity.fidelity_config(_config(tmp_path), batch_size=3, segment_size=2048)
    assert cfg.discriminator.channel_divisor == 1  # demo.json has 8
    assert (cfg.training.batch_size, cfg.training.segment_size) == (3, 2048)
    assert json.loads(cfg.to_json())["discriminator_channel_divisor"] == 1


@pytest.mark.parametrize("key, value", [("lambda_mel", 44), ("weight_decay", 0.004), ("mpd_periods", [2, 3])])
def test_a_key_the_original_hard_codes_must_keep_its_value(tmp_path, key, value):
    with pytest.raises(bench_fidelity.FidelityError, match=f"'{key}' is .* but the original hard-codes"):
        bench_fidelity.fidelity_config(_config(tmp_path, **{key: value}), batch_size=2, segment_size=4096)


def _run(gen_loss, mel_l1):
    steps = len(gen_loss)
    losses = {key: np.asarray(gen_loss, np.float64) for key, _ in fidelity_report.CURVES}
    clips = {f"clip{i}": {**{m: 1.0 for m in METRICS}, "mel_l1": mel_l1 * (1 + 0.1 * i)} for i in range(3)}
    return {"losses": losses, "step_seconds": np.ones(steps), "wall_seconds": 1.0, "clips": clips}


def test_targets_pass_and_fail_on_known_differences():
    base = np.linspace(100, 50, 20)
    off = base * np.where(np.arange(20) < 10, 1.0, 1.05)  # 5 % apart from step 11 on
    runs = {"original": _run(base, 2.0), "original_other_threads": _run(base * (1 + 1e-6), 2.0),
            "ours_float32": _run(off, 2.02), "ours_mixed_bfloat16": _run(off, 2.02 * 1.1)}
    setup = {"steps": 20, "threads": 2, "other_threads": 1, "wall_seconds": 1.0, "load_average_start": 0.0,
             "load_average_end": 0.0}
    report = fidelity_report.build(runs, setup)
    ours = report["comparisons"]["ours_float32 vs original"]
    assert ours["gen_loss_total"]["median"] == pytest.approx(0.025)  # 10 steps at 0, 10 at 5 %
    assert ours["gen_loss_total"]["step1"] == 0 and ours["first_step_apart"] == 11
    assert ours["val_mel_error"] == pytest.approx(0.01)  # every clip's mel error 1 % above the original's
    noise = report["comparisons"]["original_other_threads vs original"]
    assert noise["first_step_apart"] is None and noise["gen_loss_median"] == pytest.approx(1e-6)
    verdicts = {t["name"]: t["pass"] for t in report["targets"]}
    assert list(verdicts.values()) == [True, False, False]  # mel 1 % <= 3 %; loss 2.5 % > 2 %; bf16 10 % > 5 %
    summary = fidelity_report.format_summary(report)
    assert summary.count("PASS") == 1 and summary.count("FAIL") == 2
    assert "first 0.1 % apart at: step 11" in summary


def test_a_nan_metric_is_null_in_the_json(tmp_path):
    path = tmp_path / "report.json"
    fidelity_report.write_json({"a": [1.0, math.nan], "b": {"c": math.inf}}, str(path))
    assert json.loads(path.read_text()) == {"a": [1.0, None], "b": {"c": None}}
