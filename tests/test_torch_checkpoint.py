"""Reading torch files without torch: both serialisations, dtypes, strides, byte orders, and refusing pickles that
would run code. Fixtures: tests/fixtures/ckpt_* from tools/make_checkpoint_fixtures.py (torch 2.13)."""

import os
import pickle
import zipfile

import numpy as np
import pytest

from model.torch_checkpoint import TorchCheckpointError, load_torch_file, state_dict

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
MARKER = "malicious_pickle_ran.marker"  # what the malicious fixtures' os.system call would create


def fixture(name):
    return os.path.join(FIXTURES, name)


@pytest.fixture(scope="module")
def expected():
    with np.load(fixture("ckpt_parity.npz")) as data:
        return dict(data)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_dtypes_strides_offsets_and_nesting(fmt, expected):
    loaded = load_torch_file(fixture(f"ckpt_tensors_{fmt}"))
    names = {k.split("/", 1)[1] for k in expected if k.startswith("tensors/") and "nested" not in k}
    assert set(loaded) == names | {"nested"}
    for name in names:
        want = expected[f"tensors/{name}"]
        assert loaded[name].dtype == want.dtype, name
        assert loaded[name].shape == want.shape, name
        np.testing.assert_array_equal(loaded[name], want, err_msg=name)
    # A view of another tensor's storage is its own array (no aliasing into a shared buffer).
    np.testing.assert_array_equal(loaded["shares_f32"], loaded["f32"][1])
    loaded["f32"][1] = 0
    assert np.any(loaded["shares_f32"] != 0)
    nested = loaded["nested"]
    np.testing.assert_array_equal(nested["list"][0], expected["tensors/nested/list0"])
    assert nested["list"][1:] == [2, "x"]
    np.testing.assert_array_equal(nested["tuple"][0], expected["tensors/nested/tuple0"])
    assert nested["tuple"][1:] == (None, 0.25)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_big_endian_files(fmt, expected):
    loaded = load_torch_file(fixture(f"ckpt_tensors_be_{fmt}"))
    assert sorted(loaded) == ["f32", "offset_view", "scalar", "transposed"]
    for name, value in loaded.items():
        assert value.dtype == np.dtype("float32") and value.dtype.isnative
        np.testing.assert_array_equal(value, expected[f"tensors/{name}"])


def test_both_serialisations_hold_the_same_generator():
    zipped = state_dict(load_torch_file(fixture("ckpt_g_zip")), "generator", "zip")
    legacy = state_dict(load_torch_file(fixture("ckpt_g_legacy")), "generator", "legacy")
    assert sorted(zipped) == sorted(legacy)
    assert "conv_pre.weight_g" in zipped and zipped["ups.1.weight_v"].shape == (8, 4, 8)
    for key in zipped:
        np.testing.assert_array_equal(zipped[key], legacy[key], err_msg=key)


def test_discriminator_file_with_optimiser_state():
    do = load_torch_file(fixture("ckpt_do_legacy"))
    assert sorted(do) == ["epoch", "mpd", "msd", "optim_d", "optim_g", "steps"]
    assert (do["steps"], do["epoch"]) == (1234, 5)
    assert do["mpd"]["discriminators.4.convs.3.weight_v"].shape == (1024, 512, 5, 1)
    assert do["msd"]["discriminators.0.convs.5.weight_orig"].shape == (1024, 64, 41)
    group = do["optim_g"]["param_groups"][0]
    assert group["betas"] == (0.8, 0.99) and group["params"][:3] == [0, 1, 2]
    assert set(do["optim_g"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_malicious_checkpoint_is_refused_without_running(fmt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TorchCheckpointError) as err:
        load_torch_file(fixture(f"ckpt_malicious_{fmt}"))
    message = str(err.value)
    assert "refusing to load global" in message and "system" in message and "\n" not in message
    assert not os.path.exists(tmp_path / MARKER)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvalCall:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


def test_plain_pickles_calling_code_are_refused(tmp_path):
    marker = tmp_path / "ran"
    for name, obj in (("evil.pt", {"generator": _Evil(marker)}), ("eval.pt", [_EvalCall()])):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(obj, protocol=2))
        with pytest.raises(TorchCheckpointError, match="refusing to load global '(posix|os|nt|builtins|__builtin__)"):
            load_torch_file(str(path))
    # The same inside a zip archive's data.pkl.
    path = tmp_path / "evil_zip.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil_zip/data.pkl", pickle.dumps({"generator": _Evil(marker)}, protocol=2))
    with pytest.raises(TorchCheckpointError, match="refusing"):
        load_torch_file(str(path))
    assert not marker.exists()


def test_broken_files_give_one_line_errors(tmp_path):
    good = open(fixture("ckpt_g_legacy"), "rb").read()
    cases = {"truncated": good[:len(good) // 2], "garbage": b"\x00\x01not a torch file" * 10, "empty": b""}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(TorchCheckpointError) as err:
            load_torch_file(str(path))
        assert str(path) in str(err.value) and "\n" not in str(err.value), name
    with pytest.raises(TorchCheckpointError, match="no such file"):
        load_torch_file(str(tmp_path / "absent"))
    with pytest.raises(TorchCheckpointError, match="a directory, not a file"):
        load_torch_file(str(tmp_path))
    truncated_zip = tmp_path / "truncated_zip"
    truncated_zip.write_bytes(open(fixture("ckpt_g_zip"), "rb").read()[:3000])
    with pytest.raises(TorchCheckpointError, match="truncated_zip: truncated or corrupt zip archive"):
        load_torch_file(str(truncated_zip))
    with pytest.raises(TorchCheckpointError, match="no 'generator' entry"):
        state_dict(load_torch_file(fixture("ckpt_tensors_zip")), "generator", "tensors")
