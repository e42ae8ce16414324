"""Vocode WAVs (copy synthesis) or .npy mels with a trained or converted checkpoint.

    python run_inference.py --checkpoint checkpoints/lj_v1 --input_wavs_dir wavs --output_dir generated
    python run_inference.py --checkpoint checkpoints/lj_v1 --input_mels_dir mels --output_dir generated
    python run_inference.py --checkpoint checkpoints/lj_v1 --input_mels_dir mels --output_dir generated \
        --precision bfloat16
    python run_inference.py --checkpoint checkpoints/lj_v1 --input_mels_dir mels --output_dir generated \
        --stream_frames 8

Writes <stem>_generated.wav (16-bit PCM at the config's sampling rate). Exit status 1 if any input failed.
"""

import argparse
import logging

from core import cli
from core.config import load_config
from core.storage import TF_IO
from model.options import INFERENCE_PRECISIONS


def vocode_from_flags(argv=None) -> int:
    """Vocodes as the flags say: exit status 0, or 1 if any input failed; UserError (one line) for a bad
    checkpoint, config, option or output directory."""
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (its latest checkpoint is used)")
    parser.add_argument("--config", default=None, help="config JSON (default: config.json beside the checkpoint)")
    parser.add_argument("--output_dir", required=True, help="where <stem>_generated.wav files are written")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input_wavs_dir", help="audio files to re-synthesise from their mels (copy synthesis)")
    source.add_argument("--input_mels_dir", help=".npy log-mels, (num_mels, T) / (1, num_mels, T) / (T, num_mels)")
    parser.add_argument("--input_filelist", default=None,
                        help="only the clips this filelist names (the original's id|text lines), from the input dir")
    parser.add_argument("--max_batch_frames", type=int, default=8192,
                        help="batch size x padded frames per generator call")
    parser.add_argument("--chunk_frames", type=int, default=2048,
                        help="longer inputs are vocoded in chunks of this many frames (plus context)")
    cli.boolean_flag(parser, "jit_compile", "compile the generator with XLA")
    parser.add_argument("--backend", choices=("tf", "tflite"), default="tf",
                        help="run the generator in TensorFlow, or converted to float32 TFLite (XNNPACK; the "
                             "conversion takes ~30 s for V1)")
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="float32",
                        help="compute precision of the generator: float32 (the reference), or bfloat16 (faster on "
                             "CPUs with AVX512-BF16 or AMX; small quality cost, see the README); audio is float32 "
                             "either way; --backend tf only")
    parser.add_argument("--stream_frames", type=int, default=None,
                        help="vocode each input through the streaming vocoder (model/streaming.py), this many frames "
                             "at a time (equal to the one-pass output within 1 LSB; float32, --backend tf only)")
    args = parser.parse_args(argv)
    if args.stream_frames is not None and (args.stream_frames < 1 or args.precision != "float32"
                                           or args.backend != "tf"):
        parser.error("--stream_frames must be >= 1 and streams in float32 with --backend tf only")
    from model.checkpoint import restore_generator  # TensorFlow: once the flags are known to be good
    from model.inference import StreamedVocoder, Vocoder, vocode_files

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, io=TF_IO) if args.config else None
    generator, cfg = restore_generator(args.checkpoint, cfg)
    if args.stream_frames is not None:
        vocoder = StreamedVocoder(generator, cfg, args.stream_frames)
    else:
        vocoder = Vocoder(generator, cfg, max_batch_frames=args.max_batch_frames, chunk_frames=args.chunk_frames,
                          jit_compile=args.jit_compile, backend=args.backend, precision=args.precision)
    result = vocode_files(vocoder, cfg, args.output_dir, args.input_wavs_dir, args.input_mels_dir,
                          args.input_filelist)
    print(f"wrote {len(result.written)} files to {args.output_dir}; {len(result.failed)} failed")
    return 1 if result.failed else 0


def main(argv=None) -> int:
    return cli.run(vocode_from_flags, argv)


if __name__ == "__main__":
    cli.launch(main)
