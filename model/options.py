"""The trainer's run options (the flags of run_train.py) and the error for a run that cannot start or go on."""

from __future__ import annotations

import dataclasses
from core.errors import UserError

PRECISIONS = ("none", "mixed_bfloat16", "mixed_float16")


class TrainingError(UserError):
    """A run that cannot start or go on (bad data, refused options, non-finite loss); one-line message."""


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """The trainer's run options (the flags of run_train.py, in the original's names)."""

    data_dir: str
    checkpoint_path: str = "checkpoints"
    training_epochs: int = 3100
    training_steps: int | None = None
    stdout_interval: int = 5
    checkpoint_interval: int = 5000
    summary_interval: int = 100
    validation_interval: int = 1000
    fine_tuning: bool = False
    init_from: str | None = None
    keep_schedule: bool = False
    seed: int | None = None
    max_to_keep: int = 5
    jit_compile: bool = False
    mixed_precision: str = "none"
    validation_clips: int | None = None  # None: the whole val split
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
