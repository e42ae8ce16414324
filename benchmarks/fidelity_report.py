"""The figures of benchmarks/bench_fidelity.py: every run's validation clips scored, the runs compared step by step
and on the clips, the targets, the printed summary, the JSON and the loss-curve plot."""

from __future__ import annotations

import json
import math

import numpy as np

from core.config import HiFiGANConfig
from core.metrics import METRICS, clip_metrics, json_ready, summarize

# (what, the comparison, its figure, the limit).
TARGETS = (("final validation mel error, ours float32 vs the original", "ours_float32 vs original", "val_mel_error",
            0.03),
           ("per-step generator loss, median relative difference", "ours_float32 vs original", "gen_loss_median",
            0.02),
           ("validation mel error, ours bf16 vs ours float32", "ours_mixed_bfloat16 vs ours_float32",
            "val_mel_error", 0.05))
PAIRS = (("ours_float32", "original"), ("original_other_threads", "original"),
         ("ours_mixed_bfloat16", "ours_float32"), ("ours_mixed_bfloat16", "original"))
CURVES = (("gen_loss_total", "generator loss"), ("mel_spec_error", "training mel error"),
          ("disc_loss_total", "discriminator loss"))
LAST_STEPS = 10  # the late part of the curves, where float noise has had time to grow
DIVERGED = 1e-3  # a relative difference of the generator loss from which the curves count as apart


def score(cfg: HiFiGANConfig, references: dict[str, np.ndarray], generated: dict[str, np.ndarray]) -> dict:
    """{clip id: {metric: value}} of each generated clip against its reference (core/metrics.py)."""
    return {clip: clip_metrics(reference, generated[clip], cfg.audio) for clip, reference in references.items()}


def _relative(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    theirs = np.asarray(theirs, np.float64)
    return np.abs(np.asarray(ours, np.float64) - theirs) / np.maximum(np.abs(theirs), 1e-12)


def compare(run: dict, base: dict) -> dict:
    """How far ``run`` is from ``base``: per-step relative differences of the losses (median, 90th percentile,
    step 1, last steps) and the relative difference of each validation metric's mean."""
    out = {}
    for key, _ in CURVES:
        rel = _relative(run["losses"][key], base["losses"][key])
        out[key] = {"median": float(np.median(rel)), "p90": float(np.percentile(rel, 90)), "step1": float(rel[0]),
                    "last_steps_median": float(np.median(rel[-LAST_STEPS:])), "per_step": rel.tolist()}
    out["gen_loss_median"] = out["gen_loss_total"]["median"]
    apart = np.flatnonzero(np.asarray(out["gen_loss_total"]["per_step"]) > DIVERGED)
    out["first_step_apart"] = int(apart[0]) + 1 if apart.size else None
    out["metrics"] = {name: float(_relative(run["metrics"][name]["mean"], base["metrics"][name]["mean"]))
                      for name in METRICS}
    out["val_mel_error"] = out["metrics"]["mel_l1"]
    return out


def build(runs: dict, setup: dict) -> dict:
    """The report: each run's losses, timings, clips and metric summary; the comparisons; the targets."""
    for run in runs.values():
        run["metrics"] = {name: summarize([values[name] for values in run["clips"].values()]) for name in METRICS}
    comparisons = {f"{a} vs {b}": compare(runs[a], runs[b]) for a, b in PAIRS if a in runs and b in runs}
    noise = comparisons["original_other_threads vs original"]
    targets = [{"name": name, "value": comparisons[pair][key], "limit": limit,
                "pass": bool(comparisons[pair][key] <= limit),
                "float_noise": noise[key] if pair.endswith(" vs original") else None}
               for name, pair, key, limit in TARGETS if pair in comparisons]
    report_runs = {name: {"losses": {k: np.asarray(v).tolist() for k, v in run["losses"].items()},
                          "step_seconds": np.asarray(run["step_seconds"]).tolist(),
                          "wall_seconds": run["wall_seconds"], "clips": run["clips"], "metrics": run["metrics"]}
                   for name, run in runs.items()}
    return {"setup": setup, "runs": report_runs, "comparisons": comparisons, "targets": targets}


def _label(name: str, setup: dict) -> str:
    threads = {count: f"{count} thread{'s' if count > 1 else ''}" for count in (setup["threads"],
                                                                               setup["other_threads"])}
    return {"original": f"original ({threads[setup['threads']]})",
            "original_other_threads": f"original ({threads[setup['other_threads']]})",
            "ours_float32": "ours float32", "ours_mixed_bfloat16": "ours mixed_bfloat16"}[name]


def _percent(value: float) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{100 * value:.3g} %"


def format_summary(report: dict) -> str:
    """The printed summary: per-step differences, validation metrics, targets, timings."""
    setup, runs = report["setup"], report["runs"]
    lines = [f"\nPer-step relative difference over {setup['steps']} steps (median / p90 / step 1 / median of the "
             f"last {LAST_STEPS}):"]
    for pair, c in report["comparisons"].items():
        a, b = pair.split(" vs ")
        lines.append(f"  {_label(a, setup)} vs {_label(b, setup)}:")
        for key, title in CURVES:
            d = c[key]
            lines.append(f"    {title:<20} {_percent(d['median']):>10} {_percent(d['p90']):>10} "
                         f"{_percent(d['step1']):>10} {_percent(d['last_steps_median']):>10}")
        apart = c["first_step_apart"]
        lines.append(f"    generator loss first {_percent(DIVERGED)} apart at: "
                     f"{'never' if apart is None else f'step {apart}'}")
    num_clips = len(next(iter(runs.values()))["clips"])
    lines.append(f"\nValidation clips ({num_clips}), mean ± 95 % interval:")
    lines.append(f"  {'run':<28}" + "".join(f"{m:>20}" for m in METRICS))
    for name, run in runs.items():
        cells = "".join(f"{run['metrics'][m]['mean']:>11.4g} ± {run['metrics'][m]['ci95']:<6.2g}" for m in METRICS)
        lines.append(f"  {_label(name, setup):<28}{cells}")
    lines.append("\nRelative difference of the validation means:")
    for pair, c in report["comparisons"].items():
        a, b = pair.split(" vs ")
        cells = ", ".join(f"{m} {_percent(v)}" for m, v in c["metrics"].items())
        lines.append(f"  {_label(a, setup)} vs {_label(b, setup)}: {cells}")
    lines.append("\nTargets:")
    for t in report["targets"]:
        noise = "" if t["float_noise"] is None else f"; float noise, the original against itself: " \
                                                     f"{_percent(t['float_noise'])}"
        lines.append(f"  {'PASS' if t['pass'] else 'FAIL'} {t['name']}: {_percent(t['value'])} "
                     f"(target <= {_percent(t['limit'])}{noise})")
    lines.append("\nSeconds per step (median after the first; first) and wall seconds of each run:")
    for name, run in runs.items():
        s = run["step_seconds"]
        lines.append(f"  {_label(name, setup):<28} {np.median(s[1:] or s):.2f} s/step; first {s[0]:.1f} s; "
                     f"{run['wall_seconds']:.0f} s in all")
    lines.append(f"  whole benchmark {setup['wall_seconds']:.0f} s; load average {setup['load_average_start']:.1f} "
                 f"at start, {setup['load_average_end']:.1f} at the end")
    return "\n".join(lines)


def write_json(report: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(json_ready(report), f, indent=1)
        f.write("\n")


def plot(report: dict, path: str) -> None:
    """The loss curves of every run, and the per-step relative difference of the generator loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup, runs = report["setup"], report["runs"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (key, title) in zip(axes.flat, CURVES):
        for name, run in runs.items():
            values = run["losses"][key]
            ax.plot(np.arange(1, len(values) + 1), values, label=_label(name, setup), linewidth=1)
        ax.set(title=title, xlabel="step")
    axes.flat[0].legend()
    ax = axes.flat[3]
    for pair, c in report["comparisons"].items():
        a, b = pair.split(" vs ")
        rel = np.maximum(c["gen_loss_total"]["per_step"], 1e-9)
        ax.semilogy(np.arange(1, len(rel) + 1), rel, label=f"{_label(a, setup)} vs {_label(b, setup)}", linewidth=1)
    ax.set(title="generator loss: relative difference", xlabel="step")
    ax.legend(fontsize="small")
    fig.suptitle(f"HiFi-GAN training fidelity against the original ({setup['steps']} steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
