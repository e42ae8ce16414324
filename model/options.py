"""The trainer's run options (the flags of run_train.py) and the error for a run that cannot start or go on."""

from __future__ import annotations

import dataclasses

from core.cli import option
from core.errors import UserError

PRECISIONS = ("none", "mixed_bfloat16", "mixed_float16")


class TrainingError(UserError):
    """A run that cannot start or go on (bad data, refused options, non-finite loss); one-line message."""


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """The trainer's run options: each field with help text is a flag of run_train.py (``--<field>``, in the
    original's names), with the field's default."""

    data_dir: str = option(help="directory (any tf.io.gfile path) of shards and manifest.json")
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
    validation_clips: int | None = option(None, help="val clips per validation (default: all)")  # None: whole split
    # No flag (no help text): set in code, e.g. by the tests.
    logged_clips: int = 3
    progress_bar: bool = True

    def __post_init__(self):
        """Refuses nonsensical values (TrainingError naming the flag). NOTE: training_steps 0 is allowed: it
        writes the step-0 checkpoint and config.json, a starting point (the tests use it)."""
        minimum = {"training_epochs": 1, "training_steps": 0, "stdout_interval": 1, "checkpoint_interval": 1,
                   "summary_interval": 1, "validation_interval": 0, "seed": 0, "max_to_keep": 1,
                   "validation_clips": 1, "logged_clips": 0}
        for name, low in minimum.items():
            value = getattr(self, name)
            if value is None and name in ("training_steps", "seed", "validation_clips"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise TrainingError(f"--{name} must be an integer >= {low}, got {value!r}")
        if self.mixed_precision not in PRECISIONS:
            raise TrainingError(f"--mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
