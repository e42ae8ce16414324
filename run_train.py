"""Train HiFi-GAN on the TFRecord shards written by run_preprocess.py (the original's train.py flags)."""

from __future__ import annotations

import argparse
import logging
import sys

from model.checkpoint import CheckpointError
from model.data import DataError
from model.outputs import OutputError
from core.config import ConfigError, load_config


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="configs/v1.json", help="JSON config in the original's keys")
    p.add_argument("--data_dir", required=True, help="directory (any tf.io.gfile path) of shards and manifest.json")
    p.add_argument("--checkpoint_path", default="checkpoints",
                   help="where checkpoints, config.json and TensorBoard logs (logs/) go; resumes from it")
    p.add_argument("--training_epochs", type=int, default=3100, help="stop after this many epochs")
    p.add_argument("--training_steps", type=int, default=None, help="stop at this global step")
    p.add_argument("--stdout_interval", type=int, default=5, help="steps between progress lines")
    p.add_argument("--checkpoint_interval", type=int, default=5000, help="steps between checkpoints")
    p.add_argument("--summary_interval", type=int, default=100, help="steps between TensorBoard scalars")
    p.add_argument("--validation_interval", type=int, default=1000, help="steps between validations (0: never)")
    p.add_argument("--fine_tuning", action="store_true",
                   help="train on teacher-forced mels (refused unless the shards' manifest says teacher_forced)")
    p.add_argument("--init_from", default=None,
                   help="checkpoint directory to start from (weights only, unless --keep_schedule)")
    p.add_argument("--keep_schedule", action="store_true",
                   help="with --init_from: also keep its step, epoch (learning rate) and optimiser states")
    p.add_argument("--seed", type=int, default=None, help="data order and crop seed (default: the config's)")
    p.add_argument("--max_to_keep", type=int, default=5, help="checkpoints kept")
    p.add_argument("--jit_compile", action="store_true", help="compile the train step with XLA")
    p.add_argument("--mixed_precision", default="none", choices=("none", "mixed_bfloat16", "mixed_float16"),
                   help="Keras dtype policy (STFT, mel loss and logits stay float32)")
    p.add_argument("--validation_clips", type=int, default=None, help="val clips per validation (default: all)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from model.train import TrainingError, TrainOptions, train

    try:
        cfg = load_config(args.config)
        options = TrainOptions(**{k: v for k, v in vars(args).items() if k != "config"})
        train(cfg, options)
    except (ConfigError, DataError, CheckpointError, TrainingError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (checkpoint saved)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
