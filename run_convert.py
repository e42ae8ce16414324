"""Convert the original HiFi-GAN's PyTorch checkpoints (g_ and do_ files) into this toolkit's checkpoint format.

    python run_convert.py --config LJ_V1/config.json --torch_generator LJ_V1/generator_v1 \
        --output_dir checkpoints/lj_v1
"""

import argparse
import logging

from core import cli
from core.config import load_config
from core.storage import TF_IO


def convert_from_flags(argv=None) -> int:
    """Converts as the flags say; UserError (one line) for a bad config, torch checkpoint or output directory."""
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the original's config.json for this checkpoint")
    parser.add_argument("--torch_generator", required=True, help="g_XXXXXXXX file: {'generator': state_dict}")
    parser.add_argument("--torch_discriminator", default=None,
                        help="optional do_XXXXXXXX file: {'mpd', 'msd', 'optim_g', 'optim_d', 'steps', 'epoch'}")
    parser.add_argument("--output_dir", required=True, help="new (or empty) checkpoint directory to write")
    args = parser.parse_args(argv)
    from model.convert import convert  # TensorFlow: once the flags are known to be good

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, io=TF_IO)
    prefix = convert(cfg, args.torch_generator, args.output_dir, args.torch_discriminator)
    print(f"wrote {prefix}")
    return 0


def main(argv=None) -> int:
    return cli.run(convert_from_flags, argv)


if __name__ == "__main__":
    cli.launch(main)
