"""What the evaluation metrics cost a validation during training (run_train.py --validation_metric_clips): the
seconds of one validation of the val split with and without the metrics on its first N clips, after a warm-up
validation (tracing, the metric libraries' import). The generator is a fresh one of the config (the cost does not
depend on its weights: the metrics' pitch tracking and PESQ run on the audio whatever it sounds like).

    .venv/bin/python run_preprocess.py --runner DirectRunner --config configs/demo.json --output_dir demo_out/tfrecords
    .venv/bin/python -m benchmarks.bench_validation --config configs/demo.json --data_dir demo_out/tfrecords
"""

from __future__ import annotations

import argparse
import sys
import time


def time_validation(cfg, data_dir: str, metric_clips: int, repeats: int) -> float:
    """Median seconds of ``Validator.run`` over ``repeats`` runs, after one warm-up run."""
    import numpy as np

    from model.corpora import load_corpora
    from model.trainer import Trainer
    from model.validation import Validator

    validator = Validator(Trainer(cfg), load_corpora(cfg, [data_dir]), None, 0, metric_clips)
    validator.run(None, 0)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        validator.run(None, 0)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.json", help="config of the generator")
    p.add_argument("--data_dir", default="demo_out/tfrecords", help="shards with a val split (run_preprocess.py)")
    p.add_argument("--metric_clips", type=int, default=4, help="clips scored with the evaluation metrics")
    p.add_argument("--repeats", type=int, default=3, help="timed validations of each kind (median)")
    args = p.parse_args(argv)
    from core.config import load_config
    from model.data import load_manifest

    cfg = load_config(args.config)
    clips = load_manifest(args.data_dir).splits["val"].num_examples
    base = time_validation(cfg, args.data_dir, 0, args.repeats)
    with_metrics = time_validation(cfg, args.data_dir, args.metric_clips, args.repeats)
    scored = min(args.metric_clips, clips)
    print(f"validation of {clips} val clips: {base:.2f} s; with the metrics on {scored} of them: {with_metrics:.2f} s "
          f"(+{with_metrics - base:.2f} s, {(with_metrics - base) / max(scored, 1):.2f} s per scored clip)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
