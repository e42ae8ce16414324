"""Corpus mixtures: batches sampled with the weights, shards of another kind refused naming both directories, exact
resume, the mixture recorded beside the checkpoints, validation per corpus."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from core import cli
from model import data
from model.corpora import MIXTURE_NAME, load_corpora, mixture_change
from model.options import TrainingError, TrainOptions
from model.train import train
from tests.train_helpers import config_file, debug_config, scalars, tone_clip, tone_shards, write_shards

CFG = debug_config()
HOP, F, NUM_MELS = CFG.audio.hop_size, CFG.frames_per_segment, CFG.audio.num_mels
# Tiny trainer config (as tests/test_train.py's): 4 frames per segment, batch 1, one period discriminator.
TINY = debug_config(segment_size=256, batch_size=1, mpd_periods=[2], learning_rate=0.001)


def labelled_corpus(path, label: int, num_train: int, num_shards: int = 1):
    """Shards whose every mel value is ``label`` (a clip's corpus is read back from its batch row)."""
    rng = np.random.default_rng(label)
    clips = [tone_clip(rng, (F + 3 * k) * HOP, CFG.audio.sampling_rate) for k in range(num_train)]
    mels = [(np.full((len(c) // HOP, NUM_MELS), label, np.float32),) * 2 for c in clips]
    write_shards(path, CFG, {"train": clips, "val": clips[:1]}, num_shards={"train": num_shards},
                 mels={"train": mels, "val": mels[:1]})
    return str(path)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    return [labelled_corpus(root / name, label, n, s) for name, label, n, s in (("a", 1, 5, 2), ("b", 2, 3, 1),
                                                                               ("c", 3, 2, 1))]


def labels(corpora, seed=0, epoch=0, batch_size=16, num_batches=125, **kwargs):
    """The corpus label of every clip of ``num_batches`` batches, [num_batches, batch_size]."""
    ds = data.mixture_train_dataset(corpora, CFG, seed, epoch, batch_size=batch_size, num_batches=num_batches,
                                    **kwargs)
    return np.stack([b["mel"][:, 0, 0].numpy() for b in ds]).astype(int)


@pytest.mark.parametrize("weights", [(0.7, 0.3), (1, 2, 5)])
def test_batches_follow_the_weights(labelled, weights):
    """2000 clips: each corpus's share within 4.5 binomial standard deviations of its weight (normalised).
    NOTE: the draws are stateless (seed, epoch, clip): the counts are the same on every run; the bound says how far
    an honest sampler may be."""
    corpora = load_corpora(CFG, labelled[:len(weights)], weights)
    assert [c.name for c in corpora] == ["a", "b", "c"][:len(weights)]
    drawn = labels(corpora)
    n, p = drawn.size, np.asarray(weights, float) / sum(weights)
    counts = np.array([(drawn == label).sum() for label in range(1, len(weights) + 1)])
    assert counts.sum() == n == 2000
    np.testing.assert_array_less(np.abs(counts - n * p), 4.5 * np.sqrt(n * p * (1 - p)) + 1)
    # Batches are mixed clip by clip (their compositions vary), and every epoch is a function of (seed, epoch).
    assert len({int((row == 1).sum()) for row in drawn}) > 3
    np.testing.assert_array_equal(labels(corpora, num_batches=20), drawn[:20])
    assert not np.array_equal(labels(corpora, epoch=1, num_batches=20), drawn[:20])


def test_mixture_input_is_exact_across_resume_and_pipelines(labelled):
    corpora = load_corpora(CFG, labelled[:2], (0.5, 0.5))
    assert data.mixture_steps_per_epoch(corpora, 2) == 4  # (5 + 3) // 2: all the corpora's train clips
    whole = [b["audio"].numpy() for b in data.mixture_train_dataset(corpora, CFG, 3, 1, batch_size=2, num_batches=8)]
    rest = [b["audio"].numpy() for b in data.mixture_train_dataset(corpora, CFG, 3, 1, batch_size=2, num_batches=8,
                                                                   skip_batches=5)]
    assert len(rest) == 3 and all(np.array_equal(a, b) for a, b in zip(whole[5:], rest))
    # Two input pipelines (tf.distribute) shard after the sampling: together they are the global batches.
    parts = [[b["audio"].numpy() for b in data.mixture_train_dataset(corpora, CFG, 3, 1, batch_size=1, num_shards=2,
                                                                     shard_index=i, num_batches=8)] for i in range(2)]
    for step, audio in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([parts[0][step], parts[1][step]]), audio)


def test_one_data_dir_is_the_single_corpus_input(labelled):
    (corpus,) = load_corpora(CFG, labelled[:1])
    single = [b["audio"].numpy() for b in data.train_dataset(corpus.data_dir, corpus.manifest, CFG, 4, 2, 2)]
    mixture = [b["audio"].numpy() for b in data.mixture_train_dataset([corpus], CFG, 4, 2, 2)]
    assert corpus.weight == 1.0 and len(single) == 2
    assert all(np.array_equal(a, b) for a, b in zip(single, mixture))


def test_flags_of_a_mixture():
    import run_train

    parser = run_train.make_parser()
    args = parser.parse_args(["--data_dir", "a", "--data_dir", "b", "--mixture_weights", "0.7,0.3"])
    options = cli.options_from_args(TrainOptions, args)
    assert options == TrainOptions(data_dir=("a", "b"), mixture_weights=(0.7, 0.3))
    assert options.data_dirs == ("a", "b") and TrainOptions(data_dir="a").data_dirs == ("a",)
    with pytest.raises(SystemExit):
        parser.parse_args(["--data_dir", "a", "--mixture_weights", "0.7,x"])


@pytest.mark.parametrize("fields, message", [
    ({"data_dir": ("a", "b"), "mixture_weights": (1.0,)},
     "--mixture_weights has 1 value but --data_dir is given 2 times: one weight per --data_dir"),
    ({"data_dir": ("a", "b"), "mixture_weights": (1.0, 0.0)},
     "--mixture_weights must be positive numbers, got 1.0,0.0"),
    ({"data_dir": ("a", "b"), "mixture_weights": (1.0, float("nan"))}, "--mixture_weights must be positive numbers"),
    ({"data_dir": ("a", "b/", "b")}, "--data_dir b is given twice")])
def test_bad_weights_are_refused(fields, message):
    with pytest.raises(TrainingError, match=f"^{message}"):
        TrainOptions(**fields)


def test_shards_of_another_kind_are_refused_naming_both(tmp_path, capsys):
    import run_train

    tone_shards(tmp_path / "a", TINY, num_train=2, num_val=1)
    tone_shards(tmp_path / "b", TINY, num_train=2, num_val=1, fingerprint_cfg=debug_config(**{**TINY.raw,
                                                                                               "fmax": 3000}))
    tone_shards(tmp_path / "c", TINY, num_train=2, num_val=1, teacher_forced=True)
    a, b, c = (str(tmp_path / name) for name in "abc")
    flags = ["--config", config_file(tmp_path, TINY), "--checkpoint_path", str(tmp_path / "ckpt")]
    assert run_train.main([*flags, "--data_dir", a, "--data_dir", b]) == 2
    assert capsys.readouterr().err == f"error: --data_dir {b} cannot be mixed with --data_dir {a}: audio " \
                                      f"fingerprint (fmax 4000.0 in {a}, 3000.0 in {b})\n"
    assert run_train.main([*flags, "--data_dir", a, "--data_dir", c, "--mixture_weights", "1,1"]) == 2
    assert capsys.readouterr().err == f"error: --data_dir {c} cannot be mixed with --data_dir {a}: kind " \
                                      f"(ground-truth mels in {a}, teacher-forced mels in {c})\n"
    assert not (tmp_path / "ckpt").exists()


# --- training on a mixture -----------------------------------------------------------------------------------


def mixture_options(root, checkpoint, steps, **kwargs):
    return TrainOptions(data_dir=(str(root / "a"), str(root / "b")), mixture_weights=kwargs.pop("weights", (0.6, 0.4)),
                        checkpoint_path=str(root / checkpoint), training_steps=steps, stdout_interval=1,
                        validation_interval=kwargs.pop("validation_interval", 0), progress_bar=False, **kwargs)


def weights(trainer):
    return [v.numpy() for v in trainer.generator.weights + trainer.mpd.weights + trainer.msd.weights]


def test_resume_with_a_mixture_is_exact_and_validates_each_corpus(tmp_path, capsys):
    """Corpora of 2 and 1 train clips: 3 steps an epoch. 2 steps + 2 steps (across the epoch's end) equal 4 steps
    with validations after steps 0 and 2 (validation changes nothing of the training)."""
    tone_shards(tmp_path / "a", TINY, num_train=2, num_val=2, frames=(6, 12), num_shards={"train": 2})
    tone_shards(tmp_path / "b", TINY, num_train=1, num_val=1, frames=(6, 12), seed=1)
    trainer = train(TINY, mixture_options(tmp_path, "init", 0))
    for name in ("split", "whole"):
        shutil.copytree(tmp_path / "init", tmp_path / name)
    train(TINY, mixture_options(tmp_path, "split", 2), trainer=trainer)
    train(TINY, mixture_options(tmp_path, "split", 4), trainer=trainer)
    resumed = weights(trainer)
    capsys.readouterr()
    train(TINY, mixture_options(tmp_path, "whole", 4, validation_interval=2, validation_metric_clips=1),
          trainer=trainer)
    assert int(trainer.step) == 4 and int(trainer.epoch) == 1
    for a, b in zip(resumed, weights(trainer)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # Validation: the union's scalars and each corpus's (the evaluation metrics on one clip of each).
    written = scalars(tmp_path / "whole" / "logs")
    for prefix in ("validation", "validation/a", "validation/b"):
        for name in ("mel_spec_error", "stft_distance", "mel_l1", "mrstft"):
            assert len(written[f"{prefix}/{name}"]) == 2 and np.all(np.isfinite(written[f"{prefix}/{name}"])), name
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("validation at step")]
    assert len(lines) == 2 and "; a: mel error " in lines[0] and "; b: mel error " in lines[0]
    record = json.loads((tmp_path / "whole" / MIXTURE_NAME).read_text())
    assert record == {"data_dirs": [str(tmp_path / "a"), str(tmp_path / "b")], "mixture_weights": [0.6, 0.4],
                      "train_shards": [None, None], "history": []}  # manifests without checksums: no identity


def test_changing_the_mixture_on_resume_needs_allow_config_change(tmp_path):
    tone_shards(tmp_path / "a", TINY, num_train=2, num_val=1, frames=(6, 12))
    tone_shards(tmp_path / "b", TINY, num_train=1, num_val=1, frames=(6, 12), seed=1)
    trainer = train(TINY, mixture_options(tmp_path, "ckpt", 0))
    with pytest.raises(TrainingError, match=rf"^{tmp_path / 'ckpt'}: mixture_weights is \[0.6, 0.4\] in the "
                                            rf"checkpoint's {MIXTURE_NAME}, \[0.5, 0.5\] here"):
        train(TINY, mixture_options(tmp_path, "ckpt", 0, weights=(1, 1)), trainer=trainer)
    # Moved data is the same data: only the weights (and the number of corpora) count.
    shutil.copytree(tmp_path / "b", tmp_path / "b_moved")
    moved = mixture_options(tmp_path, "ckpt", 0)
    train(TINY, TrainOptions(**{**moved.__dict__, "data_dir": (str(tmp_path / "a"), str(tmp_path / "b_moved"))}),
          trainer=trainer)
    train(TINY, mixture_options(tmp_path, "ckpt", 0, weights=(1, 1), allow_config_change=True), trainer=trainer)
    record = json.loads((tmp_path / "ckpt" / MIXTURE_NAME).read_text())
    assert record["mixture_weights"] == [0.5, 0.5]
    assert [(h["step"], h["old"], h["new"]) for h in record["history"]] == [(0, [0.6, 0.4], [0.5, 0.5])]
    with pytest.raises(TrainingError, match=r"mixture_weights is \[0.5, 0.5\] in the checkpoint's .*, \[1.0\] here"):
        train(TINY, TrainOptions(data_dir=str(tmp_path / "a"), checkpoint_path=str(tmp_path / "ckpt"),
                                 training_steps=0, validation_interval=0, progress_bar=False), trainer=trainer)


def test_other_train_shards_on_resume_need_allow_config_change(tmp_path):
    """A directory whose train shards are not the ones the run trained on (another corpus in its place, the corpora
    swapped, the corpus preprocessed again with a clip added) is refused on resume; moved data is the same data."""
    for name, seed, num_train in (("a", 0, 2), ("b", 1, 2), ("a_more", 0, 3)):
        tone_shards(tmp_path / name, TINY, num_train=num_train, num_val=1, frames=(6, 12), seed=seed,
                    checksums=True)
    shutil.copytree(tmp_path / "a", tmp_path / "a_moved")

    def run(*dirs, checkpoint="ckpt", trainer=None, **kwargs):
        options = TrainOptions(data_dir=tuple(str(tmp_path / d) for d in dirs), checkpoint_path=str(
            tmp_path / checkpoint), training_steps=0, validation_interval=0, progress_bar=False, **kwargs)
        return train(TINY, options, trainer=trainer)

    trainer = run("a")
    record = json.loads((tmp_path / "ckpt" / MIXTURE_NAME).read_text())
    digests = [load_corpora(TINY, [str(tmp_path / d)])[0].manifest.split_digest("train") for d in ("a", "b", "a_more")]
    assert record["train_shards"] == digests[:1] and len(set(digests)) == 3 and all(digests)
    run("a_moved", trainer=trainer)  # the same shards elsewhere
    for other in ("b", "a_more"):
        with pytest.raises(TrainingError, match=rf"^{tmp_path / 'ckpt'}: --data_dir {tmp_path / other} holds other "
                                                rf"train shards than {tmp_path / 'a'} did when the checkpoint's run "
                                                rf"trained on it \(another data order\); pass --allow_config_change"):
            run(other, trainer=trainer)
    run("a_more", trainer=trainer, allow_config_change=True)
    record = json.loads((tmp_path / "ckpt" / MIXTURE_NAME).read_text())
    assert record["data_dirs"] == [str(tmp_path / "a_more")] and record["train_shards"] == [digests[2]]
    assert [(h["step"], h["setting"], h["old"], h["new"]) for h in record["history"]] == [
        (0, "train_shards", digests[:1], [digests[2]])]
    # Two corpora of equal weight swapped: the weights agree, the data order does not.
    trainer = run("a", "b", checkpoint="mix", mixture_weights=(1, 1))
    with pytest.raises(TrainingError, match=rf"--data_dir {tmp_path / 'b'} holds other train shards than "
                                            rf"{tmp_path / 'a'} did"):
        run("b", "a", checkpoint="mix", trainer=trainer, mixture_weights=(1, 1))
    # A record of an older trainer (no train_shards) compares the weights only.
    assert mixture_change({"mixture_weights": [1.0]}, load_corpora(TINY, [str(tmp_path / "b")])) is None
