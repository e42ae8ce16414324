"""Every golden fixture records where it came from (tools/reference.py): the commit of the original
(jik876/hifi-gan) and the torch version that made it. .npz files hold both as 0-d string arrays; the others (torch
checkpoints, their config) are listed in tests/fixtures/PROVENANCE.json with their sha256. Reads files only (no
torch, no checkout of the original)."""

import hashlib
import json
import os
import re

import numpy as np
import pytest

from tools.reference import PROVENANCE_FILE, PROVENANCE_KEYS

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
NAMES = sorted(name for name in os.listdir(FIXTURES) if name != PROVENANCE_FILE)
NPZ = [name for name in NAMES if name.endswith(".npz")]
OTHERS = [name for name in NAMES if not name.endswith(".npz")]
COMMIT = re.compile(r"[0-9a-f]{40}")
TORCH_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:[a-z]+\d*)?(?:\+[0-9A-Za-z.]+)?")  # e.g. 2.13.0, 2.13.0+cpu


def _sidecar() -> dict:
    with open(os.path.join(FIXTURES, PROVENANCE_FILE), encoding="utf-8") as f:
        return json.load(f)


def _check(provenance: dict, where: str) -> None:
    commit, version = (provenance[key] for key in PROVENANCE_KEYS)
    assert COMMIT.fullmatch(commit), f"{where}: reference_commit {commit!r} is not a 40-hex git sha"
    match = TORCH_VERSION.fullmatch(version)
    assert match and int(match.group(1)) >= 1, f"{where}: torch_version {version!r} does not parse"


def test_the_fixture_folder_holds_both_kinds():
    assert len(NPZ) >= 5 and len(OTHERS) >= 10


@pytest.mark.parametrize("name", NPZ)
def test_npz_records_its_provenance(name):
    with np.load(os.path.join(FIXTURES, name), allow_pickle=False) as data:
        missing = [key for key in PROVENANCE_KEYS if key not in data.files]
        assert not missing, f"{name} lacks {missing}"
        values = {key: data[key] for key in PROVENANCE_KEYS}
    for key, value in values.items():
        assert value.shape == () and value.dtype.kind == "U", f"{name}: {key} is not a 0-d string array"
    _check({key: str(value) for key, value in values.items()}, name)


def test_sidecar_lists_exactly_the_other_files():
    assert sorted(_sidecar()) == OTHERS


@pytest.mark.parametrize("name", OTHERS)
def test_sidecar_entry_matches_the_file(name):
    entry = _sidecar()[name]
    assert sorted(entry) == sorted([*PROVENANCE_KEYS, "sha256"]), name
    _check(entry, name)
    with open(os.path.join(FIXTURES, name), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == entry["sha256"], f"{name} changed since it was recorded"

