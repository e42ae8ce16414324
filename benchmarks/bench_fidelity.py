"""Training fidelity against the original (jik876/hifi-gan): N steps of its train.py loop and N of our compiled
train step, from the same initial weights on the same batches, then every generator scored on the validation clips.

    .venv/bin/python -m benchmarks.bench_fidelity --reference_repo /work/ref \\
        --reference_python /work/torchvenv/bin/python

1. Data: the demo corpus (filelists/demo_train.txt, demo_val.txt) made into shards by run_preprocess.py
   (DirectRunner), unless --data_dir names shards of the config's audio; N batches dumped once from our input
   pipeline (model/data.py: epochs 0, 1, ... of train_dataset), with the whole validation clips, to one .npz.
2. The original (tools/fidelity_reference.py in --reference_python): its own seeded init of the generator, MPD and
   MSD, saved; N steps of its train.py loop body (its ExponentialLR stepped after each epoch); its inference.py
   on the validation mels. Twice: with --threads torch threads, and with another thread count, from the same
   saved init: what float noise alone does to a GAN's curves.
3. Ours: the saved init loaded through model/torch_weights.py; N steps of Trainer.train_step (compiled, with
   set_epoch at each epoch as model/train.py does) in float32, then again under mixed_bfloat16; the validation
   mels vocoded by model/inference.Vocoder.
4. Every run's validation audio scored against the clips (core/metrics.py: mel L1 = the original's validation
   mel error, MR-STFT, PESQ, periodicity, V/UV F1, F0 RMSE). A summary with the targets on stdout, every figure
   in --output_json, the loss curves in --output_png.

Deterministic: the same command gives the same figures (the input pipeline is seeded, the original's init too,
and each side keeps its thread count). The curves still drift apart: both sides start equal to float32 rounding
(step 1 within 1e-7), then different kernels (TF's oneDNN convolutions and reductions vs torch's) round
differently, Adam's first updates g / (|g| + eps) turn the rounding of near-zero gradients into O(lr) weight
differences, and the adversarial game amplifies what differs. The original against itself with another thread
count (another summation order) shows how fast float noise alone grows, next to ours vs the original.

The config: --config's generator and audio with the original's full discriminators (the original cannot shrink
them), --batch_size and --segment_size; keys the original does not have must be at its values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import fidelity_report
from core import cli
from core.config import DiscriminatorConfig, HiFiGANConfig, LossConfig, config_from_dict, load_config
from core.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Sized for about 10 minutes of the whole benchmark on a quiet 2-core x86 CPU: 40 steps took 13.6 CPU-minutes in
# all (23 minutes of wall time on that machine at a load average of 7-10).
DEFAULT_STEPS = 40
LOSS_KEYS = ("gen_loss_total", "mel_spec_error", "disc_loss_total", "gen_adversarial", "feature_matching_x2",
             "disc_mpd", "disc_msd")


class FidelityError(UserError):
    """A benchmark that cannot run as asked: one line."""


def fidelity_config(path: str, batch_size: int, segment_size: int) -> HiFiGANConfig:
    """``path``'s config with the original's full discriminators and the given batch and segment sizes.
    FidelityError when it sets a key the original cannot follow to another value than the original's."""
    raw = {**load_config(path).raw, "batch_size": batch_size, "segment_size": segment_size,
           "discriminator_channel_divisor": 1}
    cfg = config_from_dict(raw)
    original = {"lambda_mel": LossConfig().lambda_mel, "lambda_feature_matching": LossConfig().lambda_feature_matching,
                "lambda_adversarial": LossConfig().lambda_adversarial, "weight_decay": 0.01,
                "mpd_periods": DiscriminatorConfig().mpd_periods}
    values = {**{k: getattr(cfg.loss, k) for k in original if k.startswith("lambda")},
              "weight_decay": cfg.optimizer.weight_decay, "mpd_periods": cfg.discriminator.mpd_periods}
    for key, value in original.items():
        if values[key] != value:
            raise FidelityError(f"{path}: '{key}' is {values[key]}, but the original hard-codes {value}")
    return cfg


def make_shards(config_path: str, output_dir: str) -> str:
    """The demo corpus as shards of the config's audio, written by run_preprocess.py (DirectRunner)."""
    cmd = [sys.executable, os.path.join(ROOT, "run_preprocess.py"), "--runner", "DirectRunner", "--config",
           config_path, "--output_dir", output_dir]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode:
        raise FidelityError(f"run_preprocess.py failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return output_dir


def dump_batches(cfg: HiFiGANConfig, data_dir: str, steps: int, seed: int, path: str) -> dict:
    """``steps`` training batches (epochs 0, 1, ... of model/data.py's train_dataset) and the whole validation
    clips, written to ``path`` for both sides (layout: tools/fidelity_reference.py); returns them."""
    from model import data as data_lib

    manifest = data_lib.load_manifest(data_dir)
    mismatch = manifest.mismatch(cfg.audio)
    if mismatch or manifest.teacher_forced:
        raise FidelityError(f"{data_dir}: {mismatch or 'teacher-forced mels'}: make shards of the config's "
                            f"ground-truth mels (or leave out --data_dir)")
    data_lib.verify_shards(data_dir, manifest)
    steps_per_epoch = data_lib.steps_per_epoch(manifest, cfg.training.batch_size, data_dir)
    batches: dict[str, list] = {"mel": [], "mel_loss": [], "audio": []}
    for epoch in range(-(-steps // steps_per_epoch)):
        wanted = min(steps_per_epoch, steps - epoch * steps_per_epoch)
        for batch in data_lib.train_dataset(data_dir, manifest, cfg, seed, epoch, num_batches=wanted):
            for key, values in batches.items():
                values.append(batch[key].numpy())
    out = {key: np.stack(values) for key, values in batches.items()}
    ids = []
    for clip in data_lib.validation_dataset(data_dir, manifest, cfg):
        clip_id = clip["id"][0].numpy().decode("utf-8")
        ids.append(clip_id)
        out.update({f"val/{clip_id}/{key}": clip[key][0].numpy() for key in ("mel", "mel_loss", "audio")})
    out.update(steps_per_epoch=np.int64(steps_per_epoch), val_ids=np.asarray(ids))
    with open(path, "wb") as f:
        np.savez(f, **out)
    return out


def run_original(args, files: dict, threads: int, out_path: str) -> dict:
    """The original's loop and inference (tools/fidelity_reference.py) in --reference_python; its results."""
    cmd = [args.reference_python, "-m", "tools.fidelity_reference", "--reference_repo",
           os.path.abspath(args.reference_repo), "--config", files["config"], "--batches", files["batches"],
           "--init", files["init"], "--threads", str(threads), "--out", out_path]
    # NOTE: torch's OpenMP threads spin while they wait; on a machine busier than its cores that made a step 4-7x
    # slower (2 threads, load 8 on 2 cores: 54-122 s vs 15-19 s). Sleeping waiters change no result.
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONPATH": ROOT}
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, check=False)
    except OSError as e:
        raise FidelityError(f"--reference_python {args.reference_python}: cannot run it ({e.strerror})") from None
    if out.returncode:
        raise FidelityError(f"the original's run failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    with np.load(out_path) as data:
        result = dict(data)
    return {"losses": {k: result[f"loss/{k}"] for k in LOSS_KEYS}, "step_seconds": result["step_seconds"],
            "audio": {k.split("/")[1]: v for k, v in result.items() if k.startswith("val/")},
            "provenance": {k: str(result[k]) for k in ("reference_commit", "torch_version")},
            "wall_seconds": time.perf_counter() - start}


def run_ours(cfg: HiFiGANConfig, batches: dict, init_path: str, precision: str) -> dict:
    """Our Trainer from the original's init: N compiled train steps (set_epoch at each epoch, as model/train.py),
    then the validation mels through the Vocoder."""
    import tensorflow as tf

    from model.inference import Vocoder
    from model.torch_weights import load_generator_state, load_mpd_state, load_msd_state
    from model.trainer import Trainer

    start = time.perf_counter()
    trainer = Trainer(cfg, mixed_precision="none" if precision == "float32" else precision)
    with np.load(init_path) as data:
        for name, load in (("generator", load_generator_state), ("mpd", load_mpd_state), ("msd", load_msd_state)):
            load(getattr(trainer, name), {k[len(name) + 1:]: data[k] for k in data.files if k.startswith(name + "/")})
    steps, steps_per_epoch = batches["mel"].shape[0], int(batches["steps_per_epoch"])
    losses: dict[str, list] = {key: [] for key in LOSS_KEYS}
    seconds = []
    for step in range(steps):
        if step % steps_per_epoch == 0:
            trainer.set_epoch(step // steps_per_epoch)
        batch = {key: tf.constant(batches[key][step]) for key in ("mel", "mel_loss", "audio")}
        tic = time.perf_counter()
        out = {k: float(v) for k, v in trainer.train_step(batch).items()}
        seconds.append(time.perf_counter() - tic)
        # NOTE: the original's feature_loss is twice the sum (its x2); ours is weighted by lambda_feature_matching.
        out["feature_matching_x2"] = cfg.loss.lambda_feature_matching * out["feature_matching"]
        for key in LOSS_KEYS:
            losses[key].append(out[key])
        if (step + 1) % 10 == 0 or step + 1 == steps:
            print(f"  ours, {precision}: step {step + 1}/{steps}, gen loss {out['gen_loss_total']:.3f}, mel error "
                  f"{out['mel_spec_error']:.4f} ({np.median(seconds[1:] or seconds):.2f} s/step after the first, "
                  f"first {seconds[0]:.1f} s with tracing)", flush=True)
    ids = [str(i) for i in batches["val_ids"]]
    audio = Vocoder(trainer.generator, cfg)([batches[f"val/{i}/mel"] for i in ids])
    return {"losses": {k: np.asarray(v) for k, v in losses.items()}, "step_seconds": np.asarray(seconds),
            "audio": dict(zip(ids, audio)), "wall_seconds": time.perf_counter() - start}


def _parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="bench_fidelity.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--reference_repo", required=True, help="checkout of github.com/jik876/hifi-gan")
    p.add_argument("--reference_python", required=True, help="a Python with torch, librosa and scipy")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps of each run")
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.json"),
                   help="generator and audio config (the discriminators are always the original's full ones)")
    p.add_argument("--batch_size", type=int, default=2, help="clips per batch")
    p.add_argument("--segment_size", type=int, default=4096, help="audio samples per training segment")
    p.add_argument("--seed", type=int, default=1234, help="the input pipeline's seed (crops and order)")
    p.add_argument("--threads", type=int, default=2, help="TensorFlow's and the original's torch threads")
    p.add_argument("--data_dir", help="shards (run_preprocess.py) of the config's audio; default: the demo corpus")
    p.add_argument("--work_dir", help="keep the shards, batches, initial weights and results here (default: a "
                                      "temporary directory, removed)")
    p.add_argument("--precisions", default="float32,mixed_bfloat16",
                   help="comma-separated: our runs (float32, mixed_bfloat16)")
    p.add_argument("--output_json", default="fidelity.json", help="every figure, per step and per clip")
    p.add_argument("--output_png", default="fidelity.png", help="the loss curves of every run")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.steps < 1:
        raise FidelityError(f"--steps must be >= 1, got {args.steps}")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = sorted(set(precisions) - {"float32", "mixed_bfloat16"})
    if unknown or not precisions:
        raise FidelityError(f"--precisions: {unknown[0] if unknown else 'none given'} is not float32 or "
                            f"mixed_bfloat16")
    if not os.path.isfile(os.path.join(args.reference_repo, "models.py")):
        raise FidelityError(f"--reference_repo {args.reference_repo}: no models.py (not a checkout of "
                            f"github.com/jik876/hifi-gan)")
    cfg = fidelity_config(args.config, args.batch_size, args.segment_size)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or tmp
        os.makedirs(work, exist_ok=True)
        return _run(args, cfg, precisions, work)


def _run(args, cfg: HiFiGANConfig, precisions: list[str], work: str) -> int:
    """The runs, the scores and the report (module docstring); ``work`` holds the files."""
    start, load = time.perf_counter(), os.getloadavg()
    files = {name: os.path.join(work, f"{name}{ext}") for name, ext in
             (("config", ".json"), ("batches", ".npz"), ("init", ".npz"))}
    if os.path.exists(files["init"]):
        os.remove(files["init"])  # a fresh init from the original each run
    with open(files["config"], "w", encoding="utf-8") as f:
        f.write(cfg.to_json())
    data_dir = args.data_dir or make_shards(files["config"], os.path.join(work, "shards"))
    batches = dump_batches(cfg, data_dir, args.steps, args.seed, files["batches"])
    other_threads = 1 if args.threads > 1 else 2
    print(f"{args.steps} steps of batch {cfg.training.batch_size} x {cfg.training.segment_size} samples "
          f"({int(batches['steps_per_epoch'])} per epoch); {len(batches['val_ids'])} validation clips; "
          f"load average at start {load[0]:.1f}", flush=True)
    runs = {"original": run_original(args, files, args.threads, os.path.join(work, "original.npz"))}
    runs["original_other_threads"] = run_original(args, files, other_threads,
                                                  os.path.join(work, "original_other_threads.npz"))
    for precision in precisions:
        runs[f"ours_{precision}"] = run_ours(cfg, batches, files["init"], precision)
    references = {i: batches[f"val/{i}/audio"] for i in (str(i) for i in batches["val_ids"])}
    for run in runs.values():
        run["clips"] = fidelity_report.score(cfg, references, run["audio"])
    setup = {"steps": args.steps, "threads": args.threads, "other_threads": other_threads,
             "config": json.loads(cfg.to_json()), "data_dir": args.data_dir or "demo corpus", "seed": args.seed,
             "provenance": runs["original"]["provenance"], "load_average_start": load[0],
             "load_average_end": os.getloadavg()[0], "wall_seconds": time.perf_counter() - start}
    report = fidelity_report.build(runs, setup)
    print(fidelity_report.format_summary(report), flush=True)
    fidelity_report.write_json(report, args.output_json)
    fidelity_report.plot(report, args.output_png)
    print(f"wrote {args.output_json} and {args.output_png}")
    return 0


if __name__ == "__main__":
    cli.launch(lambda: cli.run(main, prog="bench_fidelity.py"))
