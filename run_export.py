"""Export a checkpoint's generator as a SavedModel, TFLite or ONNX model (mel [batch, frames, num_mels] -> audio
[batch, samples], any batch and length), checked against the Keras model on a test input.

    python run_export.py --checkpoint checkpoints/lj_v1 --format saved_model --output exported/lj_v1
    python run_export.py --checkpoint checkpoints/lj_v1 --format tflite --output exported/tflite
    python run_export.py --checkpoint checkpoints/lj_v1 --format tflite --tflite_quantization float16 \
        --output exported/lj_v1_fp16.tflite
    python run_export.py --checkpoint checkpoints/lj_v1 --format onnx --output exported/lj_v1.onnx
    python run_export.py --checkpoint checkpoints/lj_v1 --format saved_model --precision bfloat16 \
        --output exported/lj_v1_bf16
    python run_export.py --checkpoint checkpoints/lj_v1 --format saved_model --streaming \
        --output exported/lj_v1_streaming

An existing output is refused unless --overwrite is given.
"""

import argparse
import logging

from core import cli
from core.config import load_config
from core.storage import TF_IO


def export_from_flags(argv=None) -> int:
    """Exports as the flags say; UserError (one line) for a bad checkpoint, config or output path."""
    from model.checkpoint import restore_generator
    from model.export import FORMATS, TFLITE_QUANTIZATIONS, export, plan
    from model.options import INFERENCE_PRECISIONS

    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (its latest checkpoint is used)")
    parser.add_argument("--config", default=None, help="config JSON (default: config.json beside the checkpoint)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="export format")
    parser.add_argument("--output", required=True,
                        help="SavedModel directory; .onnx path; .tflite path for one quantization, else a directory")
    parser.add_argument("--tflite_quantization", choices=(*TFLITE_QUANTIZATIONS, "all"), default="all",
                        help="TFLite flavour: float32, float16 weights, dynamic-range int8 weights, or all three")
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="float32",
                        help="weights and compute of the exported generator: float32, or bfloat16 (SavedModel only; "
                             "its signature still takes and returns float32)")
    cli.boolean_flag(parser, "streaming", "also write the streaming signatures stream_initial_state, "
                                          "stream_step(mel_chunk, state) -> {audio, state} and stream_flush(state) "
                                          "(float32 SavedModel only; see model/streaming.py)")
    cli.boolean_flag(parser, "overwrite", "replace an existing output file or SavedModel (once the new one passed "
                                          "its check)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quantizations = TFLITE_QUANTIZATIONS if args.tflite_quantization == "all" else (args.tflite_quantization,)
    plan(args.format, args.output, quantizations, args.overwrite, args.precision, args.streaming)  # refuses bad outputs first
    cfg = load_config(args.config, io=TF_IO) if args.config else None
    generator, cfg = restore_generator(args.checkpoint, cfg)
    results = export(generator, cfg, args.format, args.output, quantizations, overwrite=args.overwrite,
                     precision=args.precision, streaming=args.streaming)
    keras_model = "keras" if args.precision == "float32" else f"keras {args.precision}"
    for path, diff in results.items():
        print(f"{path}: max |export - {keras_model}| = {diff:.3g}")
    return 0


def main(argv=None) -> int:
    return cli.run(export_from_flags, argv)


if __name__ == "__main__":
    cli.launch(main)
