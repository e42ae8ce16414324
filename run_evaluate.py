"""Score vocoder output against the reference audio a filelist names: mel L1, MR-STFT, wide-band PESQ,
periodicity, V/UV F1 and F0 RMSE (cents), per clip and as a mean with a 95 % interval.

    python run_evaluate.py --filelist filelists/demo_val.txt --audio_root demo/wavs \\
        --checkpoint demo_out/checkpoints --output_dir eval/demo
    python run_evaluate.py --filelist filelists/demo_val.txt --audio_root demo/wavs \\
        --checkpoint demo_out/checkpoints --precision bfloat16 --output_dir eval/demo_bf16
    python run_evaluate.py --filelist val.txt --audio_root LJSpeech-1.1/wavs \\
        --generated_dir original_outputs --reference_level file --output_dir eval/original

--checkpoint scores its copy synthesis (the mel of each reference, as training computes it); --generated_dir
scores <id>_generated.wav (as run_inference.py writes) or <id>.wav. The reference is peak-normalised to 0.95 as
training loads it (--reference_level training), the level copy synthesis reproduces; the original's
inference.py does not normalise, so score its outputs with --reference_level file. PESQ and the pitch metrics do
not depend on level; mel L1 and MR-STFT do. Prints a table, writes OUT/summary.json and OUT/clips.csv; a clip
that cannot be scored is one line and the others go on. Exit status 1 when no clip could be scored, 2 for bad
options.
"""

import argparse
import logging

from core import cli


def evaluate_from_flags(argv=None) -> int:
    """Scores as the flags say: exit status 0 once any clip was scored; UserError (one line) otherwise."""
    from model.evaluate import EvaluateOptions, evaluate, format_table

    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_option_flags(parser, EvaluateOptions)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = evaluate(cli.options_from_args(EvaluateOptions, args))
    print(format_table(result))
    return 0


def main(argv=None) -> int:
    return cli.run(evaluate_from_flags, argv)


if __name__ == "__main__":
    cli.launch(main)
