"""The shard directories a training reads (one, or a mixture of several) and what they must agree on.

A mixture's directories must hold shards of one kind: the config's audio fingerprint, and all ground-truth or all
teacher-forced mels (their audio encodings may differ). Its weights (``--mixture_weights``, one per ``--data_dir``,
positive) are normalised to sum to 1; without them each corpus weighs its share of the train clips, as if the
corpora were one. The mixture a run trained with is recorded beside its checkpoints (``data_mixture.json``).
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

from core.config import HiFiGANConfig
from core.storage import TF_IO, read_bytes, write_whole
from model import data as data_lib
from model.data import Corpus
from model.logging_utils import logger
from model.options import TrainingError

MIXTURE_NAME = "data_mixture.json"  # beside the checkpoints: the data directories and weights of the run


def load_corpora(cfg: HiFiGANConfig, data_dirs: Sequence[str], weights: Sequence[float] | None = None,
                 fine_tuning: bool = False) -> list[Corpus]:
    """The corpora of ``data_dirs``, checked (manifests against the config and one another, shards against their
    manifests, at least one batch of train clips), weighted and named. TrainingError or DataError (one line)."""
    manifests = [data_lib.load_manifest(d) for d in data_dirs]
    first, first_dir = manifests[0], data_dirs[0]
    for data_dir, manifest in zip(data_dirs[1:], manifests[1:]):  # with one another first: the message names both
        reason = first.mixture_difference(manifest, f"in {first_dir}", f"in {data_dir}")
        if reason:
            raise TrainingError(f"--data_dir {data_dir} cannot be mixed with --data_dir {first_dir}: {reason}")
    reason = first.mismatch(cfg.audio)
    if reason:
        where = first_dir if len(data_dirs) == 1 else ", ".join(data_dirs)
        raise TrainingError(f"{where}: shards do not fit the config: {reason}")
    if fine_tuning and not first.teacher_forced:
        raise TrainingError(f"{first_dir}: --fine_tuning needs teacher-forced shards (run_preprocess.py "
                            f"with teacher mels); these hold ground-truth mels")
    clips = [m.splits["train"].num_examples if "train" in m.splits else 0 for m in manifests]
    if len(data_dirs) > 1 and 0 in clips:
        raise TrainingError(f"{data_dirs[clips.index(0)]}: the train split has no clips; a corpus of a mixture "
                            f"needs some")
    for data_dir, manifest in zip(data_dirs, manifests):
        data_lib.verify_shards(data_dir, manifest)
    weights = [1.0] if len(data_dirs) == 1 else clips if weights is None else weights
    total = float(sum(weights))
    corpora = [Corpus(d, m, w / total, name) for d, m, w, name in zip(data_dirs, manifests, weights,
                                                                     corpus_names(data_dirs))]
    data_lib.mixture_steps_per_epoch(corpora, cfg.training.batch_size)
    return corpora


def corpus_names(data_dirs: Sequence[str]) -> list[str]:
    """Names for TensorBoard tags: each directory's last component (characters other than letters, digits, ``.``,
    ``_`` and ``-`` as ``_``), with the directory's position appended where two names would be the same."""
    names = [re.sub(r"[^\w.-]", "_", os.path.basename(d.rstrip("/")) or "corpus") for d in data_dirs]
    return [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def mixture_record(corpora: Sequence[Corpus]) -> dict:
    """What ``data_mixture.json`` holds: the data directories, the normalised weights and each corpus's train data
    identity (``Manifest.split_digest``; null for an older manifest), in order."""
    return {"data_dirs": [c.data_dir for c in corpora], "mixture_weights": [round(c.weight, 6) for c in corpora],
            "train_shards": [c.manifest.split_digest("train") for c in corpora]}


def mixture_change(recorded: dict | None, corpora: Sequence[Corpus]) -> tuple[str, str, list, list] | None:
    """(the setting, what changed in one phrase, its recorded value, the new one) when ``corpora`` sample otherwise
    than the recorded mixture: other normalised weights or another number of corpora ("mixture_weights"), or a
    corpus whose train shards are not the recorded ones ("train_shards": another corpus at its place, or one
    preprocessed again otherwise). None when they agree or nothing was recorded (a run of an older trainer).
    NOTE: the directories' paths are not compared: data moved (to a bucket, another disk) is the same data."""
    if not recorded:
        return None
    new = mixture_record(corpora)
    old = recorded.get("mixture_weights")
    if not isinstance(old, list) or len(old) != len(corpora) or \
            any(abs(a - b) > 1e-6 for a, b in zip(old, new["mixture_weights"])):
        return ("mixture_weights", f"mixture_weights is {json.dumps(old)} in the checkpoint's {MIXTURE_NAME}, "
                f"{json.dumps(new['mixture_weights'])} here", old, new["mixture_weights"])
    old, dirs = recorded.get("train_shards"), recorded.get("data_dirs")
    if not isinstance(old, list) or len(old) != len(corpora):  # recorded by an older trainer: nothing to compare
        return None
    for i, (was, now) in enumerate(zip(old, new["train_shards"])):
        if was and now and was != now:
            then = dirs[i] if isinstance(dirs, list) and len(dirs) == len(corpora) else f"corpus {i + 1}"
            return ("train_shards", f"--data_dir {corpora[i].data_dir} holds other train shards than {then} did "
                    f"when the checkpoint's run trained on it", old, new["train_shards"])
    return None


def mixture_record_for(checkpoint_dir: str, corpora: Sequence[Corpus], step: int | None,
                       allow_change: bool) -> dict | None:
    """What ``data_mixture.json`` beside the checkpoints is to hold, for a new run (``step`` None) or one resumed
    at ``step``: the mixture and its history; None when the recorded one stays (a resumed run of the same mixture:
    the file keeps the directories it started with). A resumed run whose data differs from the recorded one
    (:func:`mixture_change`) is refused unless ``allow_change`` (--allow_config_change): the change is then logged
    and appended to the history."""
    recorded = _read_mixture(os.path.join(checkpoint_dir, MIXTURE_NAME)) if step is not None else None
    change = mixture_change(recorded, corpora)
    if recorded and not change:
        return None
    if change and not allow_change:
        raise TrainingError(f"{checkpoint_dir}: {change[1]} (another data order); pass --allow_config_change to "
                            f"resume with this change (recorded in {MIXTURE_NAME})")
    history = list((recorded or {}).get("history", []))
    if change:
        setting, what, old, new = change
        logger.warning("data change at step %d: %s (--allow_config_change)", step, what)
        history.append({"step": step, "setting": setting, "data_dirs": recorded.get("data_dirs"), "old": old,
                        "new": new})
    return {**mixture_record(corpora), "history": history}


def write_mixture(checkpoint_dir: str, record: dict) -> None:
    """Writes ``record`` (:func:`mixture_record_for`) as ``data_mixture.json`` into ``checkpoint_dir``."""
    write_whole(os.path.join(checkpoint_dir, MIXTURE_NAME), json.dumps(record, indent=2), io=TF_IO)


def _read_mixture(path: str) -> dict | None:
    """The recorded mixture; None without the file. TrainingError (one line) if it cannot be parsed."""
    try:
        record = json.loads(read_bytes(path, io=TF_IO).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as e:
        raise TrainingError(f"{path}: not a data mixture record ({e}); delete it to resume without the "
                            f"check") from None
    if not isinstance(record, dict) or not isinstance(record.get("history", []), list):
        raise TrainingError(f"{path}: not a data mixture record (JSON of another shape); delete it to resume "
                            f"without the check")
    return record
