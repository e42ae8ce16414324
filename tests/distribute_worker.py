"""Subprocess body of tests/test_distribute.py: trains one step under a tf.distribute strategy and saves the
generator's weights (OUT.npz) and the step's losses (OUT.json).
Usage: python -m tests.distribute_worker MODE DATA_DIR CHECKPOINT_DIR OUT.npz
MODE: "mirrored" (two logical CPUs: a single-device run's step-0 checkpoint, its weights saved as OUT.start.npz,
resumed under MirroredStrategy with no step; each replica's copy of each weight saved as OUT.replica<i>.npz) or
"worker" (MultiWorkerMirroredStrategy from TF_CONFIG: one step)."""

import json
import shutil
import sys

import numpy as np
import tensorflow as tf


def save(trainer, out):
    np.savez(out, *[v.numpy() for v in trainer.generator.weights])
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump(trainer.history, f)


def main(mode, data_dir, checkpoint_dir, out):
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        from model.trainer import default_strategy

        strategy = default_strategy()
    from model.train import train
    from tests.test_distribute import CFG, options

    if mode == "mirrored":
        single = train(CFG, options(data_dir, checkpoint_dir + "_single", 0))  # step-0 checkpoint
        np.savez(out + ".start.npz", *[v.numpy() for v in single.generator.weights])
        shutil.copytree(checkpoint_dir + "_single", checkpoint_dir)
        trainer = train(CFG, options(data_dir, checkpoint_dir, 0), strategy=strategy)
        assert trainer.strategy.num_replicas_in_sync == 2, trainer.strategy.num_replicas_in_sync
        for replica in range(2):
            np.savez(f"{out}.replica{replica}.npz",
                     *[strategy.experimental_local_results(v.value)[replica].numpy() for v in trainer.generator.weights])
        return
    trainer = train(CFG, options(data_dir, checkpoint_dir, 1), strategy=strategy)
    assert trainer.strategy.num_replicas_in_sync == 2, trainer.strategy.num_replicas_in_sync
    save(trainer, out)
    if mode == "worker":
        # A last collective, so that no worker exits (and drops the coordination service) while another one
        # still needs it.
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
    print("loss", trainer.history[0]["gen_loss_total"], flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
