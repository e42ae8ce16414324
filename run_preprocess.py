"""Preprocess audio filelists into TFRecord shards with Apache Beam (see pipeline/preprocess.py).

Flags this script does not know are Beam's (--runner, --direct_num_workers, --direct_running_mode, Dataflow's
--project/--region/--temp_location/--setup_file, ...); one that looks like a misspelling of ours (--audio-root,
--trian_filelist) is an error. With no flag it runs on the demo corpus in demo/wavs.
"""

import argparse
import difflib
import logging
import sys
import time

# NOTE: importing Beam logs "apitools not found ..." through the root logger (its optional BigQuery client; not
# used here). The filter drops that line; force=True in main() replaces the handler that log call set up.
logging.getLogger().addFilter(lambda record: not record.getMessage().startswith("apitools not found"))

from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from core.config import load_config  # noqa: E402
from core.filelist import FilelistError, read_lines  # noqa: E402
from core.errors import UserError  # noqa: E402
from core.storage import PathError  # noqa: E402


# The demo corpus: what the job runs on with no flag.
DEMO_TRAIN, DEMO_VAL, DEMO_AUDIO_ROOT = "filelists/demo_train.txt", "filelists/demo_val.txt", "demo/wavs"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/v1.json", help="HiFi-GAN config (the original's JSON keys)")
    parser.add_argument("--train_filelist", default=DEMO_TRAIN, help="training split: path|text lines")
    parser.add_argument("--val_filelist", default=DEMO_VAL, help="validation split: path|text lines")
    parser.add_argument("--audio_root", default=DEMO_AUDIO_ROOT, help="directory the filelist paths are relative to")
    parser.add_argument("--output_dir", default="data/tfrecords", help="where shards, manifest.json and "
                        "rejected.jsonl go (local path or any Beam filesystem URI, e.g. gs://bucket/dir)")
    parser.add_argument("--base_mels_path", default=None, help="fine-tune mode: directory of teacher-forced "
                        "Tacotron mels <id>.npy (the original's --input_mels_dir); audio is not peak-normalised")
    parser.add_argument("--num_shards", type=int, default=None, help="shards per split (default: ~150 MB each)")
    parser.add_argument("--frame_tolerance", type=int, default=2, help="fine-tune mode: largest frame-count "
                        "difference between a teacher mel and its audio that is trimmed away, not rejected")
    parser.add_argument("--max_seconds", type=float, default=60.0, help="reject clips longer than this")
    parser.add_argument("--audio_encoding", default="int16", help="how records store audio: int16 (PCM) or float32")
    args, beam_args = parser.parse_known_args(argv)
    misspelled = misspelled_flag(parser, beam_args)
    if misspelled:
        parser.exit(2, f"{parser.prog}: error: {misspelled}\n")  # one line, not argparse's usage and error
    return args, beam_args


def misspelled_flag(parser: argparse.ArgumentParser, beam_args: list[str]) -> str | None:
    """A one-line error for the first unknown flag that looks like one of ours misspelled (``--audio-root``,
    ``--trian_filelist``), else None.

    NOTE: Beam only warns "Discarding unparseable args" for a flag it does not know, and the job would run on our
    defaults. Flags Beam knows pass through; others are not checked (runners register their own).
    """
    ours = [o[2:] for action in parser._actions for o in action.option_strings if o.startswith("--") and o != "--help"]
    beams = set(PipelineOptions([]).get_all_options())
    for arg in beam_args:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0]
        if name in beams:
            continue
        match = [name.replace("-", "_")] if name.replace("-", "_") in ours else \
            difflib.get_close_matches(name, ours, n=1, cutoff=0.8)
        if match:
            return f"unknown flag --{name} (did you mean --{match[0]}?)"
    return None


def main(argv=None):
    args, beam_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # its INFO lines are about its own internals
    if args.audio_root == DEMO_AUDIO_ROOT and (args.train_filelist, args.val_filelist) != (DEMO_TRAIN, DEMO_VAL):
        logging.warning("--audio_root is the demo's (%s): relative paths of these filelists are read from it",
                        DEMO_AUDIO_ROOT)
    start = time.time()
    try:
        config = load_config(args.config)
        FileSystems.set_options(PipelineOptions(beam_args))  # e.g. s3:// credentials, for the reads below
        for filelist in (args.train_filelist, args.val_filelist):
            read_lines(filelist)  # fail early, before TensorFlow loads, on a missing filelist
        # Beam's job and TensorFlow are imported once the inputs are known to be there: errors are fast.
        from pipeline.preprocess import PreprocessError, PreprocessOptions, run

        options = PreprocessOptions(
            filelists={"train": args.train_filelist, "val": args.val_filelist}, audio_root=args.audio_root,
            output_dir=args.output_dir, base_mels_path=args.base_mels_path, num_shards=args.num_shards,
            frame_tolerance=args.frame_tolerance, max_seconds=args.max_seconds, audio_encoding=args.audio_encoding)
    except (ValueError, UserError) as e:  # ConfigError and FilelistError included
        print(f"run_preprocess.py: error: {e}", file=sys.stderr)
        return 2
    try:
        manifest = run(config, options, beam_args)
    except (FilelistError, PathError, PreprocessError) as e:
        print(f"run_preprocess.py: error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {args.output_dir} in {time.time() - start:.1f} s wall:")
    for name, split in manifest.splits.items():
        print(f"  {name}: {split.num_lines} lines, {split.num_examples} clips written, {split.num_rejected} "
              f"rejected, {split.total_seconds / 3600:.3f} h ({split.total_seconds:.1f} s) of audio, "
              f"{len(split.shards)} shards")
    if any(split.num_rejected for split in manifest.splits.values()):
        print(f"  rejected clips and reasons: {args.output_dir}/rejected.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
