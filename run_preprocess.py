"""Preprocess audio filelists into TFRecord shards with Apache Beam (see pipeline/runner.py).

Flags this script does not know are Beam's (--runner, --direct_num_workers, --direct_running_mode, Dataflow's
--project/--region/--temp_location/--setup_file, ...); one that looks like a misspelling of ours (--audio-root,
--trian_filelist) is an error. With no flag it runs on the demo corpus in demo/wavs.
"""

import argparse
import contextlib
import io
import logging
import time

# NOTE: importing Beam logs "apitools not found ..." through the root logger (its optional BigQuery client; not
# used here). The filter drops that line; force=True in preprocess() replaces the handler that log call set up.
logging.getLogger().addFilter(lambda record: not record.getMessage().startswith("apitools not found"))

from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from core import cli  # noqa: E402
from core.config import load_config  # noqa: E402
from core.filelist import read_lines  # noqa: E402
from pipeline.options import OptionsError, PreprocessOptions  # noqa: E402


# The demo corpus: what the job runs on with no flag.
DEMO_TRAIN, DEMO_VAL, DEMO_AUDIO_ROOT = "filelists/demo_train.txt", "filelists/demo_val.txt", "demo/wavs"
INTERRUPTED = "run_preprocess.py: interrupted"


def make_parser() -> cli.ArgumentParser:
    """--config, the two filelists, and one flag per PreprocessOptions field with help text (its default the
    field's, or the demo corpus's)."""
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/v1.json", help="HiFi-GAN config (the original's JSON keys)")
    parser.add_argument("--train_filelist", default=DEMO_TRAIN, help="training split: path|text lines")
    parser.add_argument("--val_filelist", default=DEMO_VAL, help="validation split: path|text lines")
    cli.add_option_flags(parser, PreprocessOptions, defaults={"audio_root": DEMO_AUDIO_ROOT,
                                                              "output_dir": "data/tfrecords"})
    return parser


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    """Our flags, and the others (Beam's); exits 2 with one line for a flag of ours misspelled."""
    return make_parser().parse_known_flags(argv, passes=PipelineOptions([]).get_all_options())


def beam_options(beam_args: list[str]) -> PipelineOptions:
    """Beam's flags, parsed once up front: a bad value is one line (Beam's parser prints its whole usage, 140
    lines, and exits)."""
    captured = io.StringIO()
    options = PipelineOptions(beam_args)
    try:
        with contextlib.redirect_stderr(captured):
            options.get_all_options()
    except SystemExit:
        lines = captured.getvalue().strip().splitlines() or ["a Beam flag is not valid"]
        raise OptionsError(lines[-1].split("error: ", 1)[-1]) from None
    return options


def preprocess(argv=None) -> int:
    """The job on the flags' filelists; UserError (one line) for inputs it cannot use."""
    args, beam_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # its INFO lines are about its own internals
    if args.audio_root == DEMO_AUDIO_ROOT and (args.train_filelist, args.val_filelist) != (DEMO_TRAIN, DEMO_VAL):
        logging.warning("--audio_root is the demo's (%s): relative paths of these filelists are read from it",
                        DEMO_AUDIO_ROOT)
    start = time.time()
    config = load_config(args.config)
    FileSystems.set_options(beam_options(beam_args))  # e.g. s3:// credentials, for the reads below
    for filelist in (args.train_filelist, args.val_filelist):
        read_lines(filelist)  # fail early, before TensorFlow loads, on a missing filelist
    # Beam's job (which never imports TensorFlow) is imported once the inputs are known to be there: errors are fast.
    from pipeline.commit import top_reasons
    from pipeline.runner import run

    options = cli.options_from_args(PreprocessOptions, args,
                                    filelists={"train": args.train_filelist, "val": args.val_filelist})
    manifest = run(config, options, beam_args, interrupted=f"{INTERRUPTED}; {args.output_dir} keeps its last "
                   f"committed dataset, if any; the same command finishes the job")
    print(f"Wrote and committed {args.output_dir} in {time.time() - start:.1f} s wall:")
    for name, split in manifest.splits.items():
        reasons = f" ({top_reasons(split)})" if split.num_rejected else ""
        print(f"  {name}: {split.num_lines} lines, {split.num_examples} clips written, {split.num_rejected} "
              f"rejected{reasons}, {split.total_seconds / 3600:.3f} h ({split.total_seconds:.1f} s) of audio, "
              f"{len(split.shards)} shards")
    if any(split.num_rejected for split in manifest.splits.values()):
        print(f"  rejected clips and reasons: {args.output_dir}/rejected.jsonl")
    return 0


def main(argv=None) -> int:
    return cli.run(preprocess, argv, prog="run_preprocess.py", interrupted=INTERRUPTED)


if __name__ == "__main__":
    cli.launch(main)
