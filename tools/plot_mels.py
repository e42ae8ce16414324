"""Write a PNG comparing the ground-truth mel of one validation clip with the mel of the generated audio."""

from __future__ import annotations

import logging

from core import cli


def plot_validation_clip(checkpoint_path: str, data_dir: str, output: str, index: int = 0) -> str:
    """Generates validation clip ``index`` of ``data_dir`` with the latest generator in ``checkpoint_path`` and
    writes ground truth | generated mels to ``output`` (PNG). Returns the clip id."""
    import tensorflow as tf

    from model import data as data_lib
    from model.checkpoint import restore_generator
    from model.data import DataError
    from model.logging_utils import mel_comparison_png
    from model.losses import MelSpectrogram

    generator, cfg = restore_generator(checkpoint_path)
    manifest = data_lib.load_manifest(data_dir)
    reason = manifest.mismatch(cfg.audio)
    if reason:
        raise DataError(f"{data_dir}: shards do not fit the checkpoint's config: {reason}")
    clips = list(data_lib.validation_dataset(data_dir, manifest, cfg, limit=index + 1))
    if len(clips) <= index:
        raise DataError(f"{data_dir}: the val split has {len(clips)} clips, no clip {index}")
    clip = clips[index]
    mel_hat = MelSpectrogram(cfg.audio, for_loss=False)(generator(clip["mel"]))
    clip_id = clip["id"][0].numpy().decode()
    with tf.io.gfile.GFile(output, "wb") as f:
        f.write(mel_comparison_png(clip["mel"][0].numpy(), mel_hat[0].numpy(), clip_id))
    return clip_id


def plot_from_flags(argv=None) -> int:
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint_path", required=True, help="training checkpoint directory (with config.json)")
    p.add_argument("--data_dir", required=True, help="shard directory with a val split")
    p.add_argument("--output", required=True, help="PNG file to write")
    p.add_argument("--index", type=int, default=0, help="which validation clip (manifest order)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    clip_id = plot_validation_clip(args.checkpoint_path, args.data_dir, args.output, args.index)
    print(f"wrote {args.output} (validation clip {clip_id})")
    return 0


def main(argv=None) -> int:
    return cli.run(plot_from_flags, argv)


if __name__ == "__main__":
    cli.launch(main)
