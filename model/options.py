"""The trainer's run options (the flags of run_train.py) and the error for a run that cannot start or go on."""

from __future__ import annotations

import dataclasses
import math

from core.cli import option
from core.errors import UserError

PRECISIONS = ("none", "mixed_bfloat16", "mixed_float16")
# The generator's compute at inference and export (model/precision.py): float32, the reference, or a bfloat16 copy.
INFERENCE_PRECISIONS = ("float32", "bfloat16")


class TrainingError(UserError):
    """A run that cannot start or go on (bad data, refused options, non-finite loss); one-line message."""


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """The trainer's run options: each field with help text is a flag of run_train.py (``--<field>``, in the
    original's names), with the field's default."""

    data_dir: str | tuple[str, ...] = option(
        help="directory (any tf.io.gfile path) of shards and manifest.json; repeat the flag to train on a mixture "
             "of corpora (same audio fingerprint, same kind of mels): an epoch is then (all their train clips) // "
             "batch_size steps, each clip drawn from corpus i with probability --mixture_weights[i], each corpus's "
             "clips repeating as needed; validation covers every corpus's val clips")
    mixture_weights: tuple[float, ...] | None = option(
        None, help="with several --data_dir: comma-separated sampling weights, one per --data_dir in their order "
                   "(positive; normalised to sum to 1), e.g. 0.7,0.3 (default: proportional to each corpus's train "
                   "clips, as if they were one corpus). Changing them on resume is a setting change "
                   "(--allow_config_change)")
    checkpoint_path: str = option("checkpoints", help="where checkpoints, config.json and TensorBoard logs (logs/) "
                                                      "go; resumes from it")
    training_epochs: int = option(3100, help="stop after this many epochs")
    training_steps: int | None = option(None, help="stop at this global step")
    stdout_interval: int = option(5, help="steps between progress lines")
    checkpoint_interval: int = option(5000, help="steps between checkpoints")
    summary_interval: int = option(100, help="steps between TensorBoard scalars")
    validation_interval: int = option(1000, help="steps between validations (0: never)")
    fine_tuning: bool = option(False, help="train on teacher-forced mels (refused unless the shards' manifest says "
                                           "teacher_forced)")
    init_from: str | None = option(None, help="checkpoint directory to start from (weights only, unless "
                                              "--keep_schedule)")
    keep_schedule: bool = option(False, help="with --init_from: also keep its step, epoch (learning rate) and "
                                             "optimiser states")
    allow_config_change: bool = option(False, help="resume although a training setting (batch_size, learning_rate, "
                                                   "segment_size, loss weights, ...) differs from the checkpoint's "
                                                   "config: each change is logged and appended to "
                                                   "config_history.jsonl beside it (config.json is kept)")
    seed: int | None = option(None, help="data order and crop seed (default: the config's)")
    max_to_keep: int = option(5, help="checkpoints kept")
    jit_compile: bool = option(False, help="compile the train step with XLA")
    mixed_precision: str = option("none", choices=PRECISIONS,
                                  help="Keras dtype policy (STFT, mel loss and logits stay float32)")
    validation_clips: int | None = option(None, help="val clips per validation, of each corpus with several "
                                                     "--data_dir (default: all)")  # None: the whole split
    # NOTE: 4 by default: a mean over a few clips is enough to follow a run and costs ~0.3 s per validation
    # (every 1000 steps by default), where the whole val split of a large corpus would cost minutes.
    validation_metric_clips: int = option(
        4, help="val clips (the first ones, of each corpus) also scored at each validation with the evaluation "
                "metrics of run_evaluate.py (mel L1, MR-STFT, PESQ, periodicity, V/UV F1, F0 RMSE; "
                "core/metrics.py), written to TensorBoard under validation/; 0: off. They run on the CPU: about "
                "0.08 s per clip of ~1.7 s, +0.31 s per validation with 4 (demo config, 2 cores; "
                "benchmarks/bench_validation.py)")
    # No flag (no help text): set in code, e.g. by the tests.
    logged_clips: int = 3
    progress_bar: bool = True

    def __post_init__(self):
        """Refuses nonsensical values (TrainingError naming the flag). NOTE: training_steps 0 is allowed: it
        writes the step-0 checkpoint and config.json, a starting point (the tests use it)."""
        minimum = {"training_epochs": 1, "training_steps": 0, "stdout_interval": 1, "checkpoint_interval": 1,
                   "summary_interval": 1, "validation_interval": 0, "seed": 0, "max_to_keep": 1,
                   "validation_clips": 1, "logged_clips": 0, "validation_metric_clips": 0}
        for name, low in minimum.items():
            value = getattr(self, name)
            if value is None and name in ("training_steps", "seed", "validation_clips"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise TrainingError(f"--{name} must be an integer >= {low}, got {value!r}")
        if self.mixed_precision not in PRECISIONS:
            raise TrainingError(f"--mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        if not isinstance(self.data_dir, str):  # one --data_dir is a str, several a tuple (TrainOptions(data_dir="x"))
            if not self.data_dir:
                raise TrainingError("--data_dir is required")
            object.__setattr__(self, "data_dir", tuple(self.data_dir) if len(self.data_dir) > 1 else
                               self.data_dir[0])
        if self.mixture_weights is not None:
            object.__setattr__(self, "mixture_weights", tuple(self.mixture_weights))
        self._check_mixture()

    @property
    def data_dirs(self) -> tuple[str, ...]:
        """The --data_dir values in their order (one or several)."""
        return (self.data_dir,) if isinstance(self.data_dir, str) else self.data_dir

    def _check_mixture(self) -> None:
        """Several --data_dir are distinct; --mixture_weights are one positive number per --data_dir."""
        dirs = [d.rstrip("/") for d in self.data_dirs]
        if len(set(dirs)) < len(dirs):
            raise TrainingError(f"--data_dir {next(d for d in dirs if dirs.count(d) > 1)} is given twice")
        weights = self.mixture_weights
        if weights is None:
            return
        if len(weights) != len(dirs):
            raise TrainingError(f"--mixture_weights has {len(weights)} value{'s' * (len(weights) != 1)} but "
                                f"--data_dir is given {len(dirs)} time{'s' * (len(dirs) != 1)}: one weight per "
                                f"--data_dir")
        if not all(isinstance(w, (int, float)) and math.isfinite(w) and w > 0 for w in weights):
            raise TrainingError(f"--mixture_weights must be positive numbers, got {','.join(map(str, weights))}")
