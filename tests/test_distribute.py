"""tf.distribute: a one-device checkpoint resumed under MirroredStrategy over two logical CPUs, and a
MultiWorkerMirroredStrategy step of two worker processes on loopback. Each runs in its own process (devices and TF_CONFIG are fixed at start-up)."""

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


def test_mirrored_strategy_resumes_a_single_device_checkpoint_on_every_replica(tmp_path):
    """A run moved from one device to two: train() under MirroredStrategy restores the one-device checkpoint into
    both replicas' copies. (The step itself: the mirrored path of tests/test_train_step_parity.py, against the
    original; the split of each global batch across the replicas: tests/test_data.py; train() stepping under a
    two-replica strategy: the multi-worker test below.)"""
    tone_shards(tmp_path / "data", CFG, num_train=4, num_val=1, frames=(6, 10))
    finish(spawn(["mirrored", tmp_path / "data", tmp_path / "ckpt", tmp_path / "mirrored.npz"]))
    start = load(tmp_path / "mirrored.npz.start.npz")
    # Initialisation is random: a new generator differs from the checkpoint, so equal weights come from the restore.
    fresh = Generator(CFG.generator)
    fresh.build((None, None, CFG.audio.num_mels))
    assert all(not np.array_equal(a, b.numpy()) for a, b in zip(start, fresh.weights) if b.shape.rank > 1)
    for replica in range(2):
        restored = load(tmp_path / f"mirrored.npz.replica{replica}.npz")
        assert len(restored) == len(start)
        for a, b in zip(restored, start):
            np.testing.assert_array_equal(a, b)


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
