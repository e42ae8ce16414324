"""tf.distribute: a MirroredStrategy step over two logical CPUs and a MultiWorkerMirroredStrategy step of two
worker processes on loopback. Each runs in its own process (devices and TF_CONFIG are fixed at start-up)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from model.train import TrainOptions
from tests.train_helpers import debug_config, tone_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Global batch 2: one clip per replica.
CFG = debug_config(segment_size=256, batch_size=2, mpd_periods=[2])


def options(data_dir, checkpoint_path, steps):
    return TrainOptions(data_dir=str(data_dir), checkpoint_path=str(checkpoint_path), training_steps=steps,
                        validation_interval=0, progress_bar=False)


def spawn(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "tests.distribute_worker", *map(str, args)], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc):
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    return output


def load(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def test_mirrored_strategy_matches_a_single_device_step(tmp_path):
    tone_shards(tmp_path / "data", CFG, num_train=4, num_val=1, frames=(6, 10))
    finish(spawn(["mirrored", tmp_path / "data", tmp_path / "ckpt", tmp_path / "mirrored.npz"]))
    mirrored, single = load(tmp_path / "mirrored.npz"), load(tmp_path / "mirrored.npz.single.npz")
    # Same start, same global batch: the 2-replica step averages the loss over the global batch like 1 device.
    # (Adam's first step moves each weight by ~lr * sign(gradient), so compare with a tolerance well below lr.)
    diffs = np.concatenate([np.abs(a - b).ravel() for a, b in zip(mirrored, single)])
    assert np.quantile(diffs, 0.99) < 1e-6, np.quantile(diffs, [0.5, 0.99, 1.0])


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
    # Only the chief (worker 0) writes the checkpoint directory.
    written = sorted(os.listdir(tmp_path / "ckpt"))[:3]
    assert written == ["audio_fingerprint.json", "checkpoint", "ckpt-1.data-00000-of-00001"]
    assert all("loss" in out for out in outputs)
