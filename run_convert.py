"""Convert the original HiFi-GAN's PyTorch checkpoints (g_ and do_ files) into this toolkit's checkpoint format.

    python run_convert.py --config LJ_V1/config.json --torch_generator LJ_V1/generator_v1 \
        --output_dir checkpoints/lj_v1
"""

import argparse
import logging
import sys

from model.checkpoint import CheckpointError
from model.convert import ConversionError, TorchCheckpointError, convert
from model.outputs import OutputError
from core.config import ConfigError, load_config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the original's config.json for this checkpoint")
    parser.add_argument("--torch_generator", required=True, help="g_XXXXXXXX file: {'generator': state_dict}")
    parser.add_argument("--torch_discriminator", default=None,
                        help="optional do_XXXXXXXX file: {'mpd', 'msd', 'optim_g', 'optim_d', 'steps', 'epoch'}")
    parser.add_argument("--output_dir", required=True, help="new (or empty) checkpoint directory to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
        prefix = convert(cfg, args.torch_generator, args.output_dir, args.torch_discriminator)
    except (ConfigError, TorchCheckpointError, ConversionError, CheckpointError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
