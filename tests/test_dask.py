"""The same job on Beam's DaskRunner against a real dask.distributed cluster of two worker processes."""

import os

import pytest

from conftest import DEMO_TRAIN, DEMO_VAL, DEMO_WAVS, read_filelist_ids
from core.manifest import MANIFEST_NAME, REJECTED_NAME
from pipeline.options import PreprocessOptions
from pipeline.runner import run


def _distributed():
    """dask.distributed, or a failure: requirements.txt installs it (apache-beam[dask]), so this test never skips."""
    try:
        from dask import distributed
    except ImportError as e:
        pytest.fail(f"this environment lacks dask.distributed ({e}), which the project's requirements.txt installs "
                    "with apache-beam[dask]: run .venv/bin/pip install -r requirements.txt", pytrace=False)
    return distributed


def _outputs(out):
    """Every file the job leaves (shards, manifest, rejected.jsonl, config.json) as bytes."""
    names = sorted(os.listdir(out))
    return {name: open(os.path.join(out, name), "rb").read() for name in names}


def test_dask_runner_matches_direct_runner(v1_config, tmp_path):
    train = tmp_path / "train.txt"
    val = tmp_path / "val.txt"
    train.write_text("".join(f"{i}|text\n" for i in read_filelist_ids(DEMO_TRAIN)[:4] + ["missing_clip"]))
    val.write_text("".join(f"{i}|text\n" for i in read_filelist_ids(DEMO_VAL)[:2] + read_filelist_ids(DEMO_TRAIN)[:1]))

    def options(out):
        return PreprocessOptions(filelists={"train": str(train), "val": str(val)}, audio_root=DEMO_WAVS,
                                 output_dir=str(out), num_shards=2, max_rejected_fraction=0.5)

    distributed = _distributed()
    direct = run(v1_config, options(tmp_path / "direct"), ["--runner", "DirectRunner"])
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        dask = run(v1_config, options(tmp_path / "dask"), [
            "--runner", "apache_beam.runners.dask.dask_runner.DaskRunner",
            "--dask_client_address", cluster.scheduler_address])
    assert dask == direct
    assert (dask.splits["train"].num_examples, dask.splits["train"].num_rejected) == (4, 1)
    assert (dask.splits["val"].num_examples, dask.splits["val"].num_rejected) == (2, 1)
    assert len(dask.splits["train"].shards) == 2
    direct_files, dask_files = _outputs(tmp_path / "direct"), _outputs(tmp_path / "dask")
    assert sorted(dask_files) == sorted(direct_files)
    assert {MANIFEST_NAME, REJECTED_NAME, *dask.splits["train"].shards} <= set(dask_files)
    for name in direct_files:
        assert dask_files[name] == direct_files[name], name
