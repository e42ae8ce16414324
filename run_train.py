"""Train HiFi-GAN on the TFRecord shards written by run_preprocess.py (the original's train.py flags)."""

from __future__ import annotations

import argparse
import logging

from core import cli
from core.config import load_config
from core.storage import TF_IO
from model.options import TrainOptions


def make_parser() -> cli.ArgumentParser:
    """--config, and one flag per TrainOptions field with help text (its default the field's)."""
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="configs/v1.json", help="JSON config in the original's keys")
    cli.add_option_flags(p, TrainOptions)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return make_parser().parse_args(argv)


def train_from_flags(argv=None) -> int:
    """Training as the flags say; UserError (one line) for a run that cannot start or go on."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from model.train import train

    cfg = load_config(args.config, io=TF_IO)
    train(cfg, cli.options_from_args(TrainOptions, args))
    return 0


def main(argv=None) -> int:
    return cli.run(train_from_flags, argv, interrupted="interrupted (checkpoint saved)")


if __name__ == "__main__":
    cli.launch(main)
