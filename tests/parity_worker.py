"""Subprocess body of tests/test_train_step_parity.py's checks that need a fresh process: the small fixture's two
steps through the compiled ``Trainer.train_step``, then the losses and the weights after both written to OUT.npz.

Usage: python -m tests.parity_worker MODE FIXTURE.npz OUT.npz
MODE "mirrored": MirroredStrategy over two logical CPUs (configured before TensorFlow initialises), the fixture's
global batches fed through ``distribute_datasets_from_function`` as run_train.py feeds them (each replica takes
half of each batch). MODE "xla": one device, ``jit_compile=True`` (XLA_FLAGS, read once per process, set by the
test).
"""

import sys

import tensorflow as tf


def _distributed_batches(strategy, ref, cfg, steps):
    per_replica = cfg.training.batch_size // strategy.num_replicas_in_sync
    examples = {key: tf.concat([ref[f"step{step}/{key}"] for step in range(steps)], axis=0)
                for key in ("mel", "mel_loss", "audio")}

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        assert context.get_per_replica_batch_size(cfg.training.batch_size) == per_replica
        return tf.data.Dataset.from_tensor_slices(examples).batch(per_replica)

    batches = iter(strategy.distribute_datasets_from_function(dataset_fn))
    for _ in range(steps):
        batch = next(batches)
        # Each replica holds its half of this step's global batch.
        assert [int(t.shape[0]) for t in strategy.experimental_local_results(batch["audio"])] == \
            [per_replica] * strategy.num_replicas_in_sync
        yield batch


def main(mode: str, fixture: str, out: str) -> None:
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tests.test_train_step_parity import STEPS, load_fixture, new_trainer, save_run, train

    ref, cfg, initial = load_fixture(fixture)
    if mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        trainer = new_trainer(cfg, initial, strategy=strategy)
        assert trainer.strategy.num_replicas_in_sync == 2
        losses = [{k: float(v) for k, v in trainer.train_step(batch).items()}
                  for batch in _distributed_batches(strategy, ref, cfg, STEPS)]
    else:
        trainer = new_trainer(cfg, initial, jit_compile=True)
        losses = train(trainer, ref)
    assert int(trainer.step.numpy()) == STEPS
    save_run(out, trainer, losses)


if __name__ == "__main__":
    main(*sys.argv[1:])
