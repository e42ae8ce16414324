"""The original's side of benchmarks/bench_fidelity.py: its train.py loop (tools/reference.py) over batches dumped
from our input pipeline, from given initial weights, then its inference.py on the validation mels.

Runs in a Python with torch, librosa and scipy (the benchmark's --reference_python; never the project's venv),
from the repo root:

    /work/torchvenv/bin/python -m tools.fidelity_reference --reference_repo /work/ref --config cfg.json \\
        --batches batches.npz --init init.npz --threads 2 --out original.npz

``--init``: the generator's, MPD's and MSD's state dicts (``generator/<key>``, ``mpd/<key>``, ``msd/<key>``),
read when the file exists, else made by the original's own init (torch.manual_seed(config seed), then
Generator, MPD, MSD in train.py's order) and written there. ``--batches`` (written by the benchmark): ``mel``,
``mel_loss`` [steps, batch, frames, num_mels], ``audio`` [steps, batch, samples], ``steps_per_epoch``, ``val_ids``
and ``val/<id>/mel`` [frames, num_mels]. ``--out``: each loss per step (``loss/<name>`` [steps]), the step
seconds, ``val/<id>/audio`` and the provenance. Progress lines go to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import time
import warnings

import numpy as np

from tools import reference

MODULES = ("generator", "mpd", "msd")
PROGRESS_EVERY = 10  # steps between progress lines


def initial_weights(nets: reference.Training, path: str) -> str:
    """Loads the state dicts in ``path`` into the nets, or writes the nets' own (seeded) init there; says which."""
    modules = dict(zip(MODULES, (nets.generator, nets.mpd, nets.msd)))
    if os.path.exists(path):
        with np.load(path) as data:
            for name, module in modules.items():
                prefix = f"{name}/"
                reference.load_numpy_state(module, {k[len(prefix):]: data[k] for k in data.files
                                                    if k.startswith(prefix)})
        return f"initial weights read from {path}"
    arrays = {f"{name}/{k}": v for name, module in modules.items() for k, v in reference.numpy_state(module).items()}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return f"initial weights (the original's init) written to {path}"


def train(ref: reference.Reference, h, nets: reference.Training, batches) -> tuple[dict[str, list], list[float]]:
    """The original's loop over the dumped batches: the train.py step body, its schedulers stepped after each
    epoch. Returns the losses per step and the seconds of each step."""
    import torch

    scheduler_g, scheduler_d = reference.lr_schedulers(h, nets)
    steps, steps_per_epoch = batches["mel"].shape[0], int(batches["steps_per_epoch"])
    losses: dict[str, list] = {}
    seconds = []
    for step in range(steps):
        if step and step % steps_per_epoch == 0:
            scheduler_g.step()
            scheduler_d.step()
        x = torch.from_numpy(batches["mel"][step]).transpose(1, 2).contiguous()
        y = torch.from_numpy(batches["audio"][step])
        y_mel = torch.from_numpy(batches["mel_loss"][step]).transpose(1, 2).contiguous()
        start = time.perf_counter()
        out = reference.train_step(ref, h, nets, x, y, y_mel)
        seconds.append(time.perf_counter() - start)
        for key, value in out.items():
            losses.setdefault(key, []).append(value.item())
        if (step + 1) % PROGRESS_EVERY == 0 or step + 1 == steps:
            print(f"  original, {_threads(torch.get_num_threads())}: step {step + 1}/{steps}, gen loss "
                  f"{losses['gen_loss_total'][-1]:.3f}, mel error {losses['mel_spec_error'][-1]:.4f} "
                  f"({np.median(seconds):.2f} s/step)", flush=True)
    return losses, seconds


def _threads(count: int) -> str:
    return f"{count} thread{'s' if count > 1 else ''}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference_repo", required=True, help="checkout of github.com/jik876/hifi-gan")
    parser.add_argument("--config", required=True, help="config JSON in the original's keys")
    parser.add_argument("--batches", required=True, help="the benchmark's batches .npz")
    parser.add_argument("--init", required=True, help="initial state dicts .npz: read if it exists, else written")
    parser.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    parser.add_argument("--out", required=True, help="results .npz")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # NOTE: the original calls torch.nn.utils.weight_norm, deprecated in torch 2 (a FutureWarning per layer).
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch

    torch.set_num_threads(args.threads)
    ref = reference.load(args.reference_repo)
    with open(args.config, encoding="utf-8") as f:
        h = ref.hparams(json.load(f))
    torch.manual_seed(h.seed)
    nets = reference.build_training(ref, h)
    print(f"  original, {_threads(args.threads)}: {initial_weights(nets, args.init)}", flush=True)
    with np.load(args.batches) as data:
        batches = dict(data)
    losses, seconds = train(ref, h, nets, batches)
    ids = [str(i) for i in batches["val_ids"]]
    with contextlib.redirect_stdout(io.StringIO()):  # the original's remove_weight_norm prints a line
        audio = reference.vocode(nets.generator, [batches[f"val/{i}/mel"] for i in ids])
    out = {f"loss/{k}": np.asarray(v, np.float64) for k, v in losses.items()}
    out.update({f"val/{i}/audio": a for i, a in zip(ids, audio)})
    with open(args.out, "wb") as f:
        np.savez(f, step_seconds=np.asarray(seconds), threads=np.int64(args.threads), **out,
                 **ref.provenance_arrays())


if __name__ == "__main__":
    main()
