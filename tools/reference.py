"""The original (github.com/jik876/hifi-gan) as the fixture tools and the benchmarks run it: loaded from a checkout,
patched for newer librosa and torch, its train.py loop body, and the provenance every fixture records.

Runs in a Python with torch, librosa and scipy (not the project's venv, and it imports no project code). At module
level it imports the standard library and numpy only, so that the tests, which have no torch, can import the tools
and read ``PROVENANCE_KEYS`` / ``PROVENANCE_FILE`` from it.

    from tools import reference
    ref = reference.load("/work/ref")
    h = ref.hparams(config_dict)
    nets = reference.build_training(ref, h)
    losses = reference.train_step(ref, h, nets, x, y, y_mel)
    audio = reference.vocode(nets.generator, [mel])
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import logging
import os
import subprocess
import sys
import types
from typing import Any, NamedTuple

import numpy as np

REFERENCE_URL = "github.com/jik876/hifi-gan"
PROVENANCE_KEYS = ("reference_commit", "torch_version")
PROVENANCE_FILE = "PROVENANCE.json"  # the fixtures that are not .npz: file name -> provenance and sha256
UNKNOWN_COMMIT = "unknown"
MEL_LOSS_WEIGHT = 45  # NOTE: the original's hard-coded weight (our cfg.loss.lambda_mel)


class Reference(NamedTuple):
    """The original's modules, loaded from ``repo``, and where they came from."""

    repo: str
    models: types.ModuleType
    meldataset: types.ModuleType
    env: types.ModuleType
    commit: str
    torch_version: str

    def hparams(self, raw: dict) -> Any:
        """A config as the original's scripts hold it (its env.AttrDict)."""
        return self.env.AttrDict(raw)

    def provenance(self) -> dict[str, str]:
        return {"reference_commit": self.commit, "torch_version": self.torch_version}

    def provenance_arrays(self) -> dict[str, np.ndarray]:
        """The provenance as 0-d string arrays, to store in a fixture's .npz."""
        return {key: np.asarray(value) for key, value in self.provenance().items()}


def git_commit(repo: str) -> str:
    """The checkout's HEAD commit, or ``UNKNOWN_COMMIT`` when ``repo`` is not the top of a git checkout (a plain
    copy inside another repository would otherwise report that repository's commit) or git is missing."""
    try:
        out = subprocess.run(["git", "-C", repo, "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, check=False)
    except OSError:
        return UNKNOWN_COMMIT
    lines = out.stdout.splitlines()
    if out.returncode or len(lines) != 2 or os.path.realpath(lines[0]) != os.path.realpath(repo):
        return UNKNOWN_COMMIT
    return lines[1]


def _stub_matplotlib() -> None:
    """The original's utils.py imports matplotlib for plots we never draw: a stub where it is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        stub = types.ModuleType("matplotlib")
        stub.use = lambda *args, **kwargs: None
        stub.pylab = types.ModuleType("matplotlib.pylab")
        sys.modules.update({"matplotlib": stub, "matplotlib.pylab": stub.pylab})


def _patch_for_new_versions(meldataset) -> None:
    """NOTE: the original predates librosa 0.10 and torch 2: its mel filterbank is called with keywords, and
    torch.stft (in this process only) is asked for a complex result and gives its real view, as the original
    expects."""
    import librosa
    import torch

    meldataset.librosa_mel_fn = lambda sr, n_fft, n_mels, fmin, fmax: librosa.filters.mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    stft = torch.stft

    def real_stft(*args, **kwargs):
        return torch.view_as_real(stft(*args, **{**kwargs, "return_complex": True}))

    torch.stft = real_stft


def _import(repo: str, name: str) -> types.ModuleType:
    """Imports ``repo``/``name``.py under its own name (models.py does ``from utils import ...``)."""
    path = os.path.join(repo, f"{name}.py")
    if not os.path.isfile(path):
        raise SystemExit(f"{path} not found: --reference_repo must be a checkout of {REFERENCE_URL}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load(repo: str) -> Reference:
    """The original's models.py, meldataset.py and env.py from the checkout ``repo``, patched for this torch and
    librosa, with its commit and this torch's version."""
    import torch

    repo = os.path.abspath(repo)
    _stub_matplotlib()
    _import(repo, "utils")
    models, meldataset, env = _import(repo, "models"), _import(repo, "meldataset"), _import(repo, "env")
    _patch_for_new_versions(meldataset)
    commit = git_commit(repo)
    if commit == UNKNOWN_COMMIT:
        logging.warning("%s is not a git checkout: fixtures will record reference_commit %r", repo, commit)
    return Reference(repo, models, meldataset, env, commit, str(torch.__version__))


class Training(NamedTuple):
    """The original's train.py models and optimisers."""

    generator: Any
    mpd: Any
    msd: Any
    optim_g: Any
    optim_d: Any


def build_training(ref: Reference, h) -> Training:
    """Generator(h), MPD (of ``h.mpd_periods`` where given) and MSD (made in this order from torch's current random
    state) in training mode, and the two AdamW optimisers as the original's train.py builds them (torch's AdamW
    defaults: weight_decay 0.01, eps 1e-8). Its ExponentialLR schedulers only act between epochs and are left out."""
    import torch

    generator = ref.models.Generator(h)
    mpd, msd = ref.models.MultiPeriodDiscriminator(), ref.models.MultiScaleDiscriminator()
    if "mpd_periods" in h:  # NOTE: our optional key (the original's periods are 2, 3, 5, 7, 11)
        mpd.discriminators = torch.nn.ModuleList(ref.models.DiscriminatorP(p) for p in h.mpd_periods)
    optim_g = torch.optim.AdamW(generator.parameters(), h.learning_rate, betas=[h.adam_b1, h.adam_b2])
    optim_d = torch.optim.AdamW(itertools.chain(msd.parameters(), mpd.parameters()), h.learning_rate,
                                betas=[h.adam_b1, h.adam_b2])
    generator.train(), mpd.train(), msd.train()
    return Training(generator, mpd, msd, optim_g, optim_d)


def train_step(ref: Reference, h, nets: Training, x, y, y_mel) -> dict[str, Any]:
    """One iteration of the loop body of the original's train.py (D update, then G update).

    x: mel [batch, num_mels, frames]; y: audio [batch, samples]; y_mel: the loss mel [batch, num_mels, frames].
    Returns the losses (0-d tensors).
    """
    import torch.nn.functional as F

    models, generator, mpd, msd = ref.models, nets.generator, nets.mpd, nets.msd
    y = y.unsqueeze(1)
    y_g_hat = generator(x)
    y_g_hat_mel = ref.meldataset.mel_spectrogram(y_g_hat.squeeze(1), h.n_fft, h.num_mels, h.sampling_rate,
                                                 h.hop_size, h.win_size, h.fmin, h.fmax_for_loss)
    nets.optim_d.zero_grad()
    f_real, f_fake, _, _ = mpd(y, y_g_hat.detach())
    loss_disc_f, _, _ = models.discriminator_loss(f_real, f_fake)
    s_real, s_fake, _, _ = msd(y, y_g_hat.detach())
    loss_disc_s, _, _ = models.discriminator_loss(s_real, s_fake)
    loss_disc_all = loss_disc_s + loss_disc_f
    loss_disc_all.backward()
    nets.optim_d.step()

    nets.optim_g.zero_grad()
    mel_error = F.l1_loss(y_mel, y_g_hat_mel)
    f_real, f_fake, fmap_f_real, fmap_f_fake = mpd(y, y_g_hat)
    s_real, s_fake, fmap_s_real, fmap_s_fake = msd(y, y_g_hat)
    loss_fm = models.feature_loss(fmap_f_real, fmap_f_fake) + models.feature_loss(fmap_s_real, fmap_s_fake)
    loss_adv = models.generator_loss(f_fake)[0] + models.generator_loss(s_fake)[0]
    # NOTE: train.py sums gen_s + gen_f + fm_s + fm_f + mel; grouped here to report the parts (same gradients,
    # the total may differ in its last float32 bit).
    loss_gen_all = loss_adv + loss_fm + mel_error * MEL_LOSS_WEIGHT
    loss_gen_all.backward()
    nets.optim_g.step()
    return dict(disc_loss_total=loss_disc_all, disc_mpd=loss_disc_f, disc_msd=loss_disc_s,
                gen_loss_total=loss_gen_all, gen_adversarial=loss_adv, feature_matching_x2=loss_fm,
                mel_spec_error=mel_error)


def lr_schedulers(h, nets: Training) -> tuple[Any, Any]:
    """The ExponentialLR schedulers of the original's train.py (gamma ``lr_decay``, a fresh run), for the generator
    and the discriminators' optimisers: their ``step()`` is called after each epoch."""
    import torch

    return tuple(torch.optim.lr_scheduler.ExponentialLR(optim, gamma=h.lr_decay, last_epoch=-1)
                 for optim in (nets.optim_g, nets.optim_d))


def numpy_state(module) -> dict[str, np.ndarray]:
    """A module's state dict as float32 numpy arrays (torch names and layouts: what model/torch_weights.py loads)."""
    return {k: v.detach().numpy().astype(np.float32) for k, v in module.state_dict().items()}


def load_numpy_state(module, state: dict[str, np.ndarray]) -> None:
    """The inverse of ``numpy_state``: every key must match (torch's strict loading)."""
    import torch

    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})


def vocode(generator, mels: list[np.ndarray]) -> list[np.ndarray]:
    """The original's inference.py on mels [frames, num_mels] (our layout): ``generator`` with its weight norm
    removed (in place), in eval mode, without gradients; float32 audio [frames * hop_size] each.
    NOTE: inference.py then scales by 32768 and writes 16-bit WAVs; the float audio is returned instead."""
    import torch

    generator.eval()
    generator.remove_weight_norm()
    with torch.no_grad():
        return [generator(torch.from_numpy(np.ascontiguousarray(mel.T[None], np.float32))).reshape(-1).numpy()
                for mel in mels]


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def record_provenance(ref: Reference, out_dir: str, names: list[str]) -> str:
    """Adds (or replaces) the entries of ``names`` (files in ``out_dir``) in its ``PROVENANCE_FILE``: each file's
    reference commit, torch version and sha256. Returns the sidecar's path."""
    path = os.path.join(out_dir, PROVENANCE_FILE)
    entries = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    for name in names:
        entries[name] = {**ref.provenance(), "sha256": sha256(os.path.join(out_dir, name))}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dict(sorted(entries.items())), f, indent=2)
        f.write("\n")
    return path
