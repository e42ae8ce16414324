"""Regenerate the torch-checkpoint fixtures (tests/fixtures/ckpt_*) from a checkout of the original jik876/hifi-gan.

Run with a Python that has torch (not the project's venv), from the repo root:

    python -m tools.make_checkpoint_fixtures --reference_repo /work/ref

Writes, all small:
  ckpt_config.json            a tiny config (hop 16: upsample_rates [4, 4], upsample_initial_channel 16)
  ckpt_g_zip, ckpt_g_legacy   {'generator': state_dict} of the original's Generator with seeded weights (weight_g
                              perturbed so that it matters), in the zip and the legacy (torch <= 1.5) format
  ckpt_do_legacy              a do_ file with the original's exact MPD / MSD keys and shapes. NOTE: the real
                              discriminators hold ~70 M parameters (280 MB); here every weight is a strided view
                              (distinct strides per axis, so that a transposed mapping shows) of ONE shared
                              storage of 8192 floats, which torch.save stores once; spectral norm's u and v are
                              real power-iteration results. optim_g / optim_d are real AdamW state dicts (optim_d
                              over a stand-in parameter list, for its structure), steps 1234, epoch 5.
  ckpt_g_missing_key / ckpt_g_wrong_shape / ckpt_g_unexpected_key   broken generators for the error messages
  ckpt_malicious_zip, ckpt_malicious_legacy   a {'generator': ...} whose pickle calls os.system('touch
                              malicious_pickle_ran.marker') when loaded with torch.load(weights_only=False)
  ckpt_tensors_{zip,legacy}   dtypes (f32/f16/bf16/f64/i64/i32/i16/i8/u8/bool), strides, offsets, shared storages,
                              scalars, empty tensors and nested containers
  ckpt_tensors_be_{zip,legacy}  float32 tensors in big-endian byte order (rewritten from torch's little-endian
                              output: torch on x86 cannot write big-endian itself)
  ckpt_parity.npz             expected arrays for the tensors files; the generator's input mel (the original's
                              layout [num_mels, frames]) and the original's output (float and int16 as its
                              inference.py writes it, after remove_weight_norm); MPD / MSD logits of the crafted
                              discriminators on a short signal.
  PROVENANCE.json             for each file above but ckpt_parity.npz (which holds its own): the reference's
                              commit, the torch version and the file's sha256 (tools/reference.py).

This file imports nothing of the toolkit.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import pickle
import pickletools
import struct
import zipfile

import numpy as np

from tools import reference

TINY_CONFIG = {
    "resblock": "1", "num_gpus": 0, "batch_size": 2, "learning_rate": 0.0002, "adam_b1": 0.8, "adam_b2": 0.99,
    "lr_decay": 0.999, "seed": 1234, "upsample_rates": [4, 4], "upsample_kernel_sizes": [8, 8],
    "upsample_initial_channel": 16, "resblock_kernel_sizes": [3, 5], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "segment_size": 256, "num_mels": 80, "num_freq": 257, "n_fft": 512, "hop_size": 16, "win_size": 256,
    "sampling_rate": 8000, "fmin": 0, "fmax": 4000, "fmax_for_loss": None, "num_workers": 1,
    "dist_config": {"dist_backend": "nccl", "dist_url": "tcp://localhost:54321", "world_size": 1},
}
MARKER = "malicious_pickle_ran.marker"
SHARED_STORAGE = 8192


class Malicious:
    """Pickles as os.system('touch MARKER'): what a hostile checkpoint does on torch.load(weights_only=False)."""

    def __reduce__(self):
        return os.system, (f"touch {MARKER}",)


def _save(obj, path: str, legacy: bool) -> None:
    import torch

    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


def _to_big_endian_legacy(data: bytes) -> bytes:
    """Rewrites a little-endian legacy file holding float32 storages only as a big-endian one."""
    f = io.BytesIO(data)
    magic, protocol, sys_info = pickle.load(f), pickle.load(f), pickle.load(f)
    start = f.tell()
    for _ in pickletools.genops(f):
        pass
    obj_pickle = data[start:f.tell()]
    keys = pickle.load(f)
    out = io.BytesIO()
    for value in (magic, protocol, {**sys_info, "little_endian": False}):
        pickle.dump(value, out, protocol=2)
    out.write(obj_pickle)
    pickle.dump(keys, out, protocol=2)
    for _ in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        out.write(struct.pack(">q", numel))
        out.write(np.frombuffer(f.read(4 * numel), "<f4").astype(">f4").tobytes())
    return out.getvalue()


def _to_big_endian_zip(data: bytes) -> bytes:
    """Rewrites a zip-format file holding float32 storages only with byteorder 'big'."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            content = src.read(name)
            if name.endswith("/byteorder"):
                content = b"big"
            elif "/data/" in name:
                content = np.frombuffer(content, "<f4").astype(">f4").tobytes()
            dst.writestr(name, content)
    return out.getvalue()


def make_tensor_files(out_dir: str, expected: dict) -> None:
    import torch

    gen = torch.Generator().manual_seed(7)
    big = torch.randn(6, 5, generator=gen)
    base = torch.randn(3, 4, generator=gen)
    tensors = {
        "f32": base, "transposed": torch.randn(4, 3, generator=gen).t(), "offset_view": big[2:5, 1:4],
        "strided": big[::2, ::3], "shares_f32": base[1], "f16": torch.randn(5, generator=gen).half(),
        "bf16": torch.randn(2, 3, generator=gen).bfloat16(), "f64": torch.randn(2, 2, generator=gen).double(),
        "i64": torch.arange(-3, 3), "i32": torch.arange(4, dtype=torch.int32),
        "i16": torch.tensor([-2, 7], dtype=torch.int16), "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 3),
        "nested": {"list": [torch.ones(2), 2, "x"], "tuple": (torch.tensor([1.5]), None, 0.25)},
    }
    for name, value in tensors.items():
        if name == "nested":
            expected["tensors/nested/list0"] = value["list"][0].numpy()
            expected["tensors/nested/tuple0"] = value["tuple"][0].numpy()
        else:
            expected[f"tensors/{name}"] = value.float().numpy() if name == "bf16" else value.numpy()
    for fmt in ("zip", "legacy"):
        _save(tensors, os.path.join(out_dir, f"ckpt_tensors_{fmt}"), legacy=fmt == "legacy")
    float_only = {k: tensors[k] for k in ("f32", "transposed", "offset_view", "scalar")}
    for fmt, rewrite in (("zip", _to_big_endian_zip), ("legacy", _to_big_endian_legacy)):
        buf = io.BytesIO()
        torch.save(float_only, buf, _use_new_zipfile_serialization=fmt == "zip")
        with open(os.path.join(out_dir, f"ckpt_tensors_be_{fmt}"), "wb") as f:
            f.write(rewrite(buf.getvalue()))


def make_generator_files(ref: reference.Reference, out_dir: str, expected: dict):
    import torch

    torch.manual_seed(1234)
    generator = ref.models.Generator(ref.hparams(TINY_CONFIG))
    with torch.no_grad():
        for name, param in generator.named_parameters():
            if name.endswith("weight_g"):  # g != ||v||, so a loader that ignores g would show
                param.mul_(torch.rand(param.shape) + 0.5)
    state = generator.state_dict()
    for fmt in ("zip", "legacy"):
        _save({"generator": state}, os.path.join(out_dir, f"ckpt_g_{fmt}"), legacy=fmt == "legacy")
    broken = {
        "missing_key": {k: v for k, v in state.items() if k != "resblocks.1.convs2.0.bias"},
        "wrong_shape": {**state, "ups.0.weight_v": torch.zeros(16, 8, 7)},
        "unexpected_key": {**state, "conv_mid.weight": torch.zeros(3)},
    }
    for name, broken_state in broken.items():
        _save({"generator": broken_state}, os.path.join(out_dir, f"ckpt_g_{name}"), legacy=False)
    for fmt in ("zip", "legacy"):
        _save({"generator": Malicious()}, os.path.join(out_dir, f"ckpt_malicious_{fmt}"), legacy=fmt == "legacy")

    # Input: the original's mel of a short chirp with a pause, as its inference.py computes it.
    sr, hop = TINY_CONFIG["sampling_rate"], TINY_CONFIG["hop_size"]
    t = np.arange(int(0.3 * sr)) / sr
    audio = 0.5 * np.sin(2 * np.pi * (200 + 1500 * t) * t) * (t < 0.2)
    audio += 0.01 * np.random.default_rng(0).standard_normal(t.size)
    c = TINY_CONFIG
    mel = ref.meldataset.mel_spectrogram(torch.FloatTensor(audio).unsqueeze(0), c["n_fft"], c["num_mels"], sr, hop,
                                         c["win_size"], c["fmin"], c["fmax"])
    generator.eval()
    generator.remove_weight_norm()
    with torch.no_grad():
        y = generator(mel).squeeze().numpy()
    expected["generator/mel"] = mel[0].numpy().astype(np.float32)  # [num_mels, frames]
    expected["generator/audio"] = y.astype(np.float32)
    expected["generator/audio_int16"] = (y * 32768.0).astype(np.int16)  # the original's inference.py
    logging.info("generator: %d frames -> %d samples", mel.shape[-1], y.size)


def _strided_state(module, storage, rng) -> dict:
    """Every tensor of ``module``'s state dict as a strided view of ``storage`` (u / v: real power iteration)."""
    import torch

    state = {}
    for key, value in module.state_dict().items():
        if key.endswith(("weight_u", "weight_v")) and key.replace(key.rsplit(".", 1)[1], "weight_orig") in \
                module.state_dict():
            continue
        shape = tuple(value.shape)
        strides = tuple(int(s) for s in (1, 3, 7, 11)[:len(shape)])
        reach = sum((n - 1) * s for n, s in zip(shape, strides))
        offset = int(rng.integers(0, SHARED_STORAGE - reach))
        state[key] = torch.as_strided(storage, shape, strides, offset)
    for key in list(state):
        if key.endswith("weight_orig"):
            prefix = key[:-len("weight_orig")]
            matrix = state[key].reshape(state[key].shape[0], -1).double()
            u = torch.nn.functional.normalize(torch.randn(matrix.shape[0], dtype=torch.float64), dim=0)
            for _ in range(30):
                v = torch.nn.functional.normalize(matrix.t() @ u, dim=0)
                u = torch.nn.functional.normalize(matrix @ v, dim=0)
            state[prefix + "weight_u"], state[prefix + "weight_v"] = u.float(), v.float()
    return state


def make_discriminator_file(models, generator_state, out_dir: str, expected: dict) -> None:
    import torch

    rng = np.random.default_rng(5)
    storage = torch.from_numpy(rng.normal(0.0, 0.3, SHARED_STORAGE).astype(np.float32))
    mpd, msd = models.MultiPeriodDiscriminator(), models.MultiScaleDiscriminator()
    torch.manual_seed(0)
    states = {"mpd": _strided_state(mpd, storage, rng), "msd": _strided_state(msd, storage, rng)}
    mpd.load_state_dict(states["mpd"])
    msd.load_state_dict(states["msd"])
    g_params = [torch.nn.Parameter(v.clone()) for v in generator_state.values()]
    optim_g = torch.optim.AdamW(g_params, 0.0002, betas=(0.8, 0.99))
    optim_d = torch.optim.AdamW([torch.nn.Parameter(torch.randn(3, 2))], 0.0002, betas=(0.8, 0.99))
    for optim, params in ((optim_g, g_params), (optim_d, optim_d.param_groups[0]["params"])):
        sum((p ** 2).sum() for p in params).backward()
        optim.step()
    _save({"mpd": states["mpd"], "msd": states["msd"], "optim_g": optim_g.state_dict(),
           "optim_d": optim_d.state_dict(), "steps": 1234, "epoch": 5},
          os.path.join(out_dir, "ckpt_do_legacy"), legacy=True)
    mpd.eval()
    msd.eval()
    y = torch.FloatTensor(0.5 * np.sin(np.arange(2048) * 0.05) * np.hanning(2048)).reshape(1, 1, -1)
    with torch.no_grad():
        for name, module in (("mpd", mpd), ("msd", msd)):
            logits = module(y, y)[0]
            for i, score in enumerate(logits):
                expected[f"{name}/logits/{i}"] = score.numpy().astype(np.float32)
    expected["disc/audio"] = y.reshape(-1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference_repo", required=True, help="checkout of github.com/jik876/hifi-gan")
    parser.add_argument("--out", default="tests/fixtures", help="output directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(2)
    ref = reference.load(args.reference_repo)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ckpt_config.json"), "w") as f:
        json.dump(TINY_CONFIG, f, indent=2)
    expected: dict = {}
    make_tensor_files(args.out, expected)
    make_generator_files(ref, args.out, expected)
    state = torch.load(os.path.join(args.out, "ckpt_g_zip"))["generator"]
    make_discriminator_file(ref.models, state, args.out, expected)
    np.savez_compressed(os.path.join(args.out, "ckpt_parity.npz"), **expected, **ref.provenance_arrays())
    names = sorted(name for name in os.listdir(args.out) if name.startswith("ckpt_"))
    for name in names:
        logging.info("%-28s %8d bytes", name, os.path.getsize(os.path.join(args.out, name)))
    sidecar = reference.record_provenance(ref, args.out, [name for name in names if not name.endswith(".npz")])
    logging.info("wrote %s", sidecar)


if __name__ == "__main__":
    main()
