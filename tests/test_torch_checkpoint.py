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


def _zip_checkpoint(path, numel: int, size: tuple, member: bytes, compress: int = zipfile.ZIP_STORED):
    """A zip torch file holding {"w": float32 tensor of ``size`` over storage '0'}, whose pickle declares
    ``numel`` elements for the storage and whose member ``data/0`` is ``member``; pickle opcodes written by hand
    (protocol 2), as torch.save writes them."""
    def global_(module, name):
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def ints(values):
        return b"(" + b"".join(b"J" + int(v).to_bytes(4, "little", signed=True) for v in values) + b"t"

    stride = [int(np.prod(size[i + 1:])) for i in range(len(size))]
    pid = (b"(X\x07\x00\x00\x00storage" + global_("torch", "FloatStorage") + b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpu"
           + b"J" + numel.to_bytes(4, "little") + b"tQ")
    tensor = (global_("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"J\x00\x00\x00\x00" + ints(size)
              + ints(stride) + b"\x89" + global_("collections", "OrderedDict") + b")Rt" + b"R")
    data_pkl = b"\x80\x02}X\x01\x00\x00\x00w" + tensor + b"s."
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/data/0", member)


def test_declared_storage_is_read_only_as_far_as_its_tensors_reach(tmp_path):
    values = np.arange(6, dtype="<f4")
    path = tmp_path / "small.pt"
    _zip_checkpoint(path, 2**30, (2, 3), values.tobytes())  # a 4 GiB storage declared, 24 bytes used
    np.testing.assert_array_equal(load_torch_file(str(path))["w"], values.reshape(2, 3))


def test_storage_larger_than_the_file_is_refused_before_allocation(tmp_path):
    # 256 MiB of zeros deflate to ~256 KB: without the bound, reading it would allocate the whole storage.
    numel = 2**26
    path = tmp_path / "bomb.pt"
    _zip_checkpoint(path, numel, (numel,), bytes(numel * 4), compress=zipfile.ZIP_DEFLATED)
    assert os.path.getsize(path) < 2**20
    with pytest.raises(TorchCheckpointError) as err:
        load_torch_file(str(path))
    assert f"storage '0' needs {numel * 4} bytes but the file holds {os.path.getsize(path)}" in str(err.value)
    assert "\n" not in str(err.value)
