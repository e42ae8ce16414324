"""tf.distribute: a MirroredStrategy step over two logical CPUs and a MultiWorkerMirroredStrategy step of two
worker processes on loopback. Each runs in its own process (devices and TF_CONFIG are fixed at start-up)."""

import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import tensorflow as tf

from model.generator import Generator
from model.options import TrainOptions
from tests.train_helpers import debug_config, tone_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Global batch 2: one clip per replica.
CFG = debug_config(segment_size=256, batch_size=2, mpd_periods=[2])
LR = CFG.optimizer.learning_rate
# The largest difference between the 2-replica and the 1-device weights after one step. Measured: 4.7e-10 (two
# runs; 99 % of the elements equal). The replicas' all-reduce sums the gradients in another order, so an element may
# round to the neighbouring float32: the bound is two float32 spacings at the largest weights (the weight-norm gains,
# |w| < 2: spacing 2.4e-7). It is 0.25 % of lr, and Adam's first step moves each element by ~lr * sign(gradient):
# an element updated the other way (2 lr off) or not at all (lr off) fails it.
MAX_WEIGHT_DIFF = 5e-7
# The step's losses on the same global batch (measured within 2.5e-7 relative). NOTE: not the gradient norms: each
# replica reports the norm of its own batch's gradient, and the mean of those norms is not the norm of the mean.
LOSS_RTOL = 1e-5


def options(data_dir, checkpoint_path, steps):
    return TrainOptions(data_dir=str(data_dir), checkpoint_path=str(checkpoint_path), training_steps=steps,
                        validation_interval=0, progress_bar=False)


def spawn(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "tests.distribute_worker", *map(str, args)], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc):
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    return output


def load(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def load_history(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_mirrored_strategy_matches_a_single_device_step(tmp_path):
    tone_shards(tmp_path / "data", CFG, num_train=4, num_val=1, frames=(6, 10))
    finish(spawn(["mirrored", tmp_path / "data", tmp_path / "ckpt", tmp_path / "mirrored.npz"]))
    mirrored, single = load(tmp_path / "mirrored.npz"), load(tmp_path / "mirrored.npz.single.npz")
    start = load(tmp_path / "mirrored.npz.start.npz")
    # The step ran: Adam's first step moved each weight by ~lr (measured 0.997-1.01 lr: lr * g / (|g| + eps) plus
    # the weight decay), so equal weights below are not two untouched starts.
    updates = np.concatenate([np.abs(a - b).ravel() for a, b in zip(single, start)])
    assert 0.9 * LR < np.quantile(updates, 0.01) and updates.max() < 1.1 * LR, np.quantile(updates, [0, 0.01, 1]) / LR
    # Same start, same global batch: the 2-replica step averages the loss over the global batch like 1 device.
    # (Adam's first step moves each weight by ~lr * sign(gradient), so compare with a tolerance well below lr.)
    diffs = np.concatenate([np.abs(a - b).ravel() for a, b in zip(mirrored, single)])
    assert np.quantile(diffs, 0.99) < 1e-6, np.quantile(diffs, [0.5, 0.99, 1.0])
    assert diffs.max() < MAX_WEIGHT_DIFF, np.quantile(diffs, [0.5, 0.99, 1.0])
    # Adam's first step hardly depends on the gradient's scale: the losses show that the global batch's mean is
    # the one optimised.
    (losses,), (single_losses,) = load_history(tmp_path / "mirrored.npz.json"), \
        load_history(tmp_path / "mirrored.npz.single.npz.json")
    for name, value in single_losses.items():
        if not name.startswith("grad_norm"):
            np.testing.assert_allclose(losses[name], value, rtol=LOSS_RTOL, err_msg=name)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_mirrored_strategy_two_processes(tmp_path):
    tone_shards(tmp_path / "data", CFG, num_train=4, num_val=1, frames=(6, 10))
    workers = [f"localhost:{p}" for p in free_ports(2)]
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        procs.append(spawn(["worker", tmp_path / "data", tmp_path / "ckpt", tmp_path / f"w{i}.npz"],
                           env={"TF_CONFIG": tf_config}))
    outputs = [finish(p) for p in procs]
    w0, w1 = load(tmp_path / "w0.npz"), load(tmp_path / "w1.npz")
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)
    # Both workers report the same all-reduced losses of their one step.
    history = load_history(tmp_path / "w0.npz.json")
    assert len(history) == 1 and all(math.isfinite(v) for v in history[0].values()), history
    assert load_history(tmp_path / "w1.npz.json") == history
    assert all(f"loss {history[0]['gen_loss_total']}" in out for out in outputs)
    # Only the chief (worker 0) writes the checkpoint directory.
    written = sorted(os.listdir(tmp_path / "ckpt"))[:3]
    assert written == ["audio_fingerprint.json", "checkpoint", "ckpt-1.data-00000-of-00001"]
    # ... and its ckpt-1 holds the trained weights at step 1.
    prefix = str(tmp_path / "ckpt" / "ckpt-1")
    assert tf.train.load_checkpoint(prefix).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 1
    generator = Generator(CFG.generator)
    generator.build((None, None, CFG.audio.num_mels))
    tf.train.Checkpoint(generator=generator).restore(prefix).expect_partial()
    for a, b in zip(w0, generator.weights):
        np.testing.assert_array_equal(a, b.numpy())
