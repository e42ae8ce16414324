"""Reading PyTorch checkpoint files (``g_XXXXXXXX``, ``do_XXXXXXXX``, ``*.pt``) into numpy, without torch.

Both of torch's serialisations are read:

* zip (torch >= 1.6): ``<root>/data.pkl`` pickles the object with persistent ids
  ``('storage', storage_type, key, location, numel)``; each storage's raw bytes are in ``<root>/data/<key>``;
  ``<root>/byteorder`` says "little" or "big" (absent: little).
* legacy (torch <= 1.5, or ``_use_new_zipfile_serialization=False``): five consecutive pickles in one stream:
  a magic number, the protocol version, sys info (``little_endian``), the object (persistent ids
  ``('storage', storage_type, root_key, location, numel, view_metadata)``), the sorted list of storage keys;
  then each storage's raw bytes, prefixed by its element count as an int64.

Tensors come back as numpy arrays (with their strides and storage offsets applied), everything else as plain
Python values, e.g. ``{'generator': OrderedDict({'conv_pre.weight_g': array(...), ...})}``.

Security: the object pickle is read by an Unpickler whose ``find_class`` hands out only what a state dict or an
optimiser state dict needs (tensor rebuilding, storage types, dtypes, OrderedDict and a few inert builtins),
all mapped onto our own functions; any other global is refused with a one-line :class:`TorchCheckpointError`
naming it, before anything from the file is called.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np
from core.errors import UserError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch storage class / dtype names -> numpy dtypes (bfloat16 is widened to float32 when the tensor is built).
_STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?", "UntypedStorage": "u1",
}
_TORCH_DTYPES = {
    "float64": "f8", "double": "f8", "float32": "f4", "float": "f4", "float16": "f2", "half": "f2",
    "bfloat16": "bf16", "int64": "i8", "long": "i8", "int32": "i4", "int": "i4", "int16": "i2", "short": "i2",
    "int8": "i1", "uint8": "u1", "bool": "?",
}
_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "complex": complex, "slice": slice, "bytearray": bytearray,
                  "list": list, "dict": dict, "tuple": tuple, "int": int, "float": float, "str": str,
                  "bool": bool, "bytes": bytes}


class TorchCheckpointError(UserError):
    """A torch file that cannot (or must not) be read; the message is one line naming the file."""


class _DType(str):
    """A torch storage type or dtype seen in the pickle, reduced to its numpy dtype code."""


class _StorageRef:
    """A storage named by the pickle; its bytes are attached once read (legacy: after the pickle)."""

    def __init__(self, key: str, dtype: str, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.array: np.ndarray | None = None


class _TensorRef:
    """A tensor waiting for its storage: (storage, offset, size, stride) as in torch's _rebuild_tensor."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _StorageRef):
            raise TorchCheckpointError("tensor rebuilt from something that is not a storage")
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """Stands in for torch._utils._rebuild_tensor(_v2): (storage, offset, size, stride, [requires_grad, hooks])."""
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    """Stands in for torch._utils._rebuild_parameter(_with_state): a Parameter is its tensor here."""
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    ("_codecs", "encode"): lambda text, encoding="utf-8": str(text).encode(encoding),  # bytes, pickle protocol 2
}


def _to_numpy_dtype(code: str, big_endian: bool) -> np.dtype:
    if code == "bf16":
        return np.dtype(">u2" if big_endian else "<u2")
    return np.dtype(code).newbyteorder(">" if big_endian else "<")


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals; storages become _StorageRef via ``persistent_load``."""

    def __init__(self, file, path: str, legacy: bool):
        super().__init__(file, encoding="latin1")
        self.path, self.legacy = path, legacy
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
            return _DType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _DType(_TORCH_DTYPES[name])
        raise TorchCheckpointError(f"{self.path}: refusing to load global '{module}.{name}' "
                                   "(not part of a state dict; the file may run code)")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise TorchCheckpointError(f"{self.path}: unsupported persistent id {str(pid)[:60]!r}")
        _, storage_type, key, _location, numel = pid[:5]
        view = pid[5] if self.legacy and len(pid) > 5 else None
        if not isinstance(storage_type, _DType) or not isinstance(numel, int) or numel < 0:
            raise TorchCheckpointError(f"{self.path}: malformed storage id for key {key!r}")
        key = str(key)
        ref = self.storages.setdefault(key, _StorageRef(key, str(storage_type), numel))
        if view is not None:  # very old torch: a storage view (view_key, offset, size) of a root storage
            view_key, offset, size = view
            ref = _StorageRef(f"{key}[{offset}:{offset + size}]", ref.dtype, size)
            ref.view_of, ref.view_offset = self.storages[key], int(offset)
        return ref


def _materialize(obj: Any, path: str) -> Any:
    """Replaces every _TensorRef in a nested structure of dicts / lists / tuples by a numpy array."""
    if isinstance(obj, _TensorRef):
        return _tensor_to_numpy(obj, path)
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for key, value in obj.items():
            out[key] = _materialize(value, path)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(item, path) for item in obj)
    if isinstance(obj, (_StorageRef, _DType)):
        raise TorchCheckpointError(f"{path}: a bare storage or dtype outside a tensor is not supported")
    return obj


def _storage_array(ref: _StorageRef) -> np.ndarray:
    view_of = getattr(ref, "view_of", None)
    if view_of is not None:
        return _storage_array(view_of)[ref.view_offset:ref.view_offset + ref.numel]
    return ref.array


def _tensor_to_numpy(ref: _TensorRef, path: str) -> np.ndarray:
    data = _storage_array(ref.storage)
    if data is None:
        raise TorchCheckpointError(f"{path}: storage '{ref.storage.key}' has no data")
    size, stride, offset = ref.size, ref.stride, ref.offset
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise TorchCheckpointError(f"{path}: tensor with invalid size {size} / stride {stride} / offset {offset}")
    # Bounds check before as_strided, which would otherwise read memory outside the storage.
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= data.shape[0]:
        raise TorchCheckpointError(f"{path}: tensor of size {size} reaches element {last} of storage "
                                   f"'{ref.storage.key}' holding {data.shape[0]}")
    item = data.itemsize
    array = np.lib.stride_tricks.as_strided(data[offset:] if all(size) else data[:0], shape=size,
                                            strides=tuple(s * item for s in stride))
    array = np.array(array, dtype=array.dtype.newbyteorder("="))  # own copy, native byte order
    if ref.storage.dtype == "bf16":  # bfloat16 is the top half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _read_storage(raw: bytes, ref: _StorageRef, big_endian: bool, where: str, numel: int | None = None) -> None:
    """Attaches ``numel`` elements (default: all the storage declares) of ``raw`` to ``ref``."""
    dtype = _to_numpy_dtype(ref.dtype, big_endian)
    numel = ref.numel if numel is None else numel
    if len(raw) < numel * dtype.itemsize:
        raise TorchCheckpointError(f"{where}: storage '{ref.key}' is truncated ({len(raw)} bytes for "
                                   f"{numel} x {dtype.itemsize})")
    ref.array = np.frombuffer(raw, dtype=dtype, count=numel)


def _tensor_refs(obj: Any):
    """Every _TensorRef in a nested structure of dicts / lists / tuples."""
    if isinstance(obj, _TensorRef):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensor_refs(value)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensor_refs(item)


def _elements_used(obj: Any) -> dict[str, int]:
    """Per storage key, how many leading elements the tensors that view it reach (0 if none reaches it)."""
    used: dict[str, int] = {}
    for ref in _tensor_refs(obj):
        storage = getattr(ref.storage, "view_of", None) or ref.storage
        end = ref.offset + getattr(ref.storage, "view_offset", 0)
        if all(ref.size) and all(isinstance(n, int) and isinstance(s, int) for n, s in zip(ref.size, ref.stride)):
            end += sum((n - 1) * max(s, 0) for n, s in zip(ref.size, ref.stride)) + 1
        used[storage.key] = max(used.get(storage.key, 0), end)
    return used


def _check_fits(path: str, key: str, nbytes: int, available: int) -> None:
    """NOTE: a storage's bytes lie in the file as they are (torch stores zip members uncompressed); a storage that
    needs more bytes than the file holds would only be a decompression bomb or a lie, so it is refused before any
    allocation: a small file cannot ask for gigabytes."""
    if nbytes > available:
        raise TorchCheckpointError(f"{path}: storage '{key}' needs {nbytes} bytes but the file holds {available}")


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pickles:
            raise TorchCheckpointError(f"{path}: zip file without <root>/data.pkl (not a torch checkpoint)")
        root = pickles[0][:-len("data.pkl")]
        big_endian = False
        if f"{root}byteorder" in names:
            big_endian = archive.read(f"{root}byteorder").decode("ascii").strip() == "big"
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path, legacy=False)
        obj = _unpickle(unpickler, path)
        used, file_size = _elements_used(obj), os.path.getsize(path)
        for key, ref in unpickler.storages.items():
            name = f"{root}data/{key}"
            if name not in names:
                raise TorchCheckpointError(f"{path}: storage '{key}' missing from the archive")
            # Only what the tensors view is read (a declared storage may be larger than its tensors).
            numel = min(ref.numel, used.get(key, 0))
            nbytes = numel * _to_numpy_dtype(ref.dtype, big_endian).itemsize
            _check_fits(path, key, nbytes, file_size)
            with archive.open(name) as member:
                _read_storage(member.read(nbytes), ref, big_endian, path, numel)
    return _materialize(obj, path)


def _unpickle(unpickler: _RestrictedUnpickler, path: str) -> Any:
    try:
        return unpickler.load()
    except TorchCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError) as e:
        raise TorchCheckpointError(f"{path}: corrupt pickle ({type(e).__name__}: {str(e)[:80]})") from None


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        header = _RestrictedUnpickler(f, path, legacy=True)
        try:
            magic = header.load()
        except TorchCheckpointError:
            raise
        except Exception:  # noqa: BLE001 - any other failure here means "not a torch file"
            magic = None
        if magic != LEGACY_MAGIC_NUMBER:
            raise TorchCheckpointError(f"{path}: not a torch checkpoint (neither zip nor legacy magic number)")
        protocol = _unpickle(header, path)
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise TorchCheckpointError(f"{path}: unsupported legacy protocol version {protocol!r}")
        sys_info = _unpickle(header, path)
        big_endian = isinstance(sys_info, dict) and sys_info.get("little_endian", True) is False
        unpickler = _RestrictedUnpickler(f, path, legacy=True)
        obj = _unpickle(unpickler, path)
        keys = _unpickle(_RestrictedUnpickler(f, path, legacy=True), path)
        for key in keys:
            ref = unpickler.storages.get(str(key))
            count = f.read(8)
            if ref is None or len(count) != 8:
                raise TorchCheckpointError(f"{path}: storage '{key}' is missing or truncated")
            (numel,) = struct.unpack(">q" if big_endian else "<q", count)
            if numel != ref.numel:
                raise TorchCheckpointError(f"{path}: storage '{key}' holds {numel} elements, expected {ref.numel}")
            itemsize = _to_numpy_dtype(ref.dtype, big_endian).itemsize
            _check_fits(path, str(key), numel * itemsize, os.path.getsize(path) - f.tell())
            _read_storage(f.read(numel * itemsize), ref, big_endian, path)
    return _materialize(obj, path)


def load_torch_file(path: str) -> Any:
    """Reads a torch.save file (zip or legacy) into plain Python values with numpy arrays for tensors.

    Raises TorchCheckpointError (one line naming the file) for missing, corrupt or refused files.
    """
    if not os.path.isfile(path):
        raise TorchCheckpointError(f"{path}: {'a directory, not a file' if os.path.isdir(path) else 'no such file'}")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # a zip's first entry, but no central directory at the end
                raise TorchCheckpointError(f"{path}: truncated or corrupt zip archive (no central directory)")
        return _load_legacy(path)
    except OSError as e:
        raise TorchCheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    except zipfile.BadZipFile as e:
        raise TorchCheckpointError(f"{path}: corrupt zip archive ({e})") from None


def state_dict(obj: Any, key: str, path: str) -> dict[str, np.ndarray]:
    """``obj[key]`` as a flat {name: array} state dict, checking that it is one."""
    if not isinstance(obj, dict) or key not in obj:
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise TorchCheckpointError(f"{path}: no '{key}' entry (found {found})")
    state = obj[key]
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise TorchCheckpointError(f"{path}: '{key}' is not a state dict of tensors")
    return dict(state)
