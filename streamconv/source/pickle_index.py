"""A rank file's pickle read for what it says, not run: tensor records, no tensor, no mapping.

torch.load(mmap=True) maps the whole file privately and writable, and Linux refuses such a
mapping when the file is larger than RAM and swap together (a 94 GiB Maverick rank file on a
24 GiB machine: "Cannot allocate memory"); it also needs torch's restricted unpickler to be
told about Llama 4's `_extra_state` entries. This reads torch's data.pkl with an unpickler that
knows only what a file of tensors uses (the rebuild functions, storage types, dtypes,
OrderedDict for hooks, and io.BytesIO for `_extra_state`) and builds plain records from them;
any other global is refused before it is looked up, so nothing in the file can run. The bytes
stay where they are: storages are named by their zip member (`<archive>/data/<key>`).

A hostile or damaged pickle must end in one error, never a traceback, a crash or a runaway:
- every allowed global checks its arguments (types, counts, non-negative bounded sizes) before
  it builds anything;
- the opcodes are scanned before unpickling (opcode_scan.py): a pickle too large, with too
  many opcodes or nested too deeply is refused unread (CPython's own unpickler crashes with a
  segmentation fault when a million-deep tuple is hashed as a dict key);
- messages name what was wrong by type, never by repr (a "billion laughs" persistent id
  formats to gigabytes).
Every failure is a RecordsError; tensor_index.py turns it into one CheckpointError naming the file.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
from dataclasses import dataclass
from typing import IO, Any

from streamconv.source.opcode_scan import UnsafePickle, scan_opcodes
from streamconv.system import dtypes
from streamconv.system.dtypes import DType

# The largest element count of one tensor or storage, and the most dimensions: far beyond any
# release (Llama 4 Maverick's largest expert tensor has ~2^33 elements), small enough that
# arithmetic on them stays cheap.
_MAX_ELEMENTS = 1 << 48
_MAX_DIMS = 8
# The device tags torch.serialization restores (its _package_registry, with an optional index);
# torch.load refuses any other, and so does this.
_LOCATION_RE = re.compile(r"^(cpu|cuda|mps|meta|xpu|hpu|xla|mtia|privateuseone)(:\d{1,4})?$")


class RecordsError(Exception):
    """The pickle is not a file of tensors; `refused` when it asked for a forbidden global."""

    def __init__(self, reason: str, *, refused: bool = False) -> None:
        super().__init__(reason)
        self.refused = refused


@dataclass(frozen=True)
class StorageRecord:
    key: str  # the zip member <archive>/data/<key>
    dtype: DType | None  # None: an untyped storage (the tensor record has the dtype)
    n_bytes: int  # what the persistent id says; torch.load requires the member to be this size


@dataclass(frozen=True)
class _StorageClass:
    """A legacy typed storage class (torch.FloatStorage): names a storage's dtype in a
    persistent id, and is a different thing from the dtype itself (torch.float32)."""

    dtype: DType


@dataclass(frozen=True)
class TensorRecord:
    storage: StorageRecord
    storage_offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: DType

    @property
    def contiguous(self) -> bool:
        expected, step = [], 1
        for size in reversed(self.shape):
            expected.append(step)
            step *= size
        return all(size == 1 or s == e for size, s, e in
                   zip(self.shape, self.stride, reversed(expected), strict=False))


class NotATensor:
    """What a pickled io.BytesIO (Llama 4's `_extra_state`) becomes: nothing to convert."""

    def __new__(cls, *args: Any) -> NotATensor:
        # torch.save pickles a BytesIO as NEWOBJ with no arguments, then BUILD with its state.
        if len(args) > 1 or (args and not isinstance(args[0], (bytes, bytearray))):
            raise RecordsError("io.BytesIO is called with arguments a saved buffer never has")
        return super().__new__(cls)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple):
            raise RecordsError(f"io.BytesIO gets a {_kind(state)} as its state, not a tuple")


def _kind(value: Any) -> str:
    """What a value is, for a message: its type, never its repr."""
    return type(value).__name__


def _whole(value: Any, what: str, *, limit: int = _MAX_ELEMENTS) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordsError(f"{what} is a {_kind(value)}, not a whole number")
    if not 0 <= value <= limit:
        raise RecordsError(f"{what} is {value if abs(value) < 1 << 64 else 'huge'}, outside "
                           f"0 to {limit}")
    return value


def _dims(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > _MAX_DIMS:
        raise RecordsError(f"the {what} of a tensor is a {_kind(value)}"
                           + (f" of {len(value)}" if isinstance(value, tuple) else "")
                           + f", not a tuple of at most {_MAX_DIMS} numbers")
    return tuple(_whole(v, f"a {what} entry") for v in value)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: Any) -> TensorRecord:
    if not isinstance(storage, StorageRecord):
        raise RecordsError(f"a tensor's storage is a {_kind(storage)}, not a storage")
    if not isinstance(dtype, DType):
        raise RecordsError(f"a tensor's dtype is a {_kind(dtype)}, not a dtype")
    shape, strides = _dims(size, "shape"), _dims(stride, "stride")
    if len(shape) != len(strides):
        raise RecordsError(f"a tensor has {len(shape)} sizes but {len(strides)} strides")
    n = 1
    for dim in shape:
        n *= dim
    if n > _MAX_ELEMENTS:
        raise RecordsError(f"a tensor claims {n} elements, more than any checkpoint holds")
    return TensorRecord(storage, _whole(offset, "a storage offset"), shape, strides, dtype)


def _check_extras(requires_grad: Any, hooks: Any, rest: tuple[Any, ...], what: str) -> None:
    """requires_grad, backward hooks and metadata, as torch._utils writes them."""
    if not isinstance(requires_grad, bool) or not isinstance(hooks, dict) or len(rest) > 1 or (
            rest and rest[0] is not None and not isinstance(rest[0], dict)):
        raise RecordsError(f"{what} is called with arguments torch.save never writes")


def _rebuild_v2(storage: Any = None, offset: Any = None, size: Any = None, stride: Any = None,
                requires_grad: Any = None, hooks: Any = None, *rest: Any) -> TensorRecord:
    _check_extras(requires_grad, hooks, rest, "_rebuild_tensor_v2")
    dtype = storage.dtype if isinstance(storage, StorageRecord) else None
    if dtype is None:
        raise RecordsError("_rebuild_tensor_v2 is given no typed storage")
    return _tensor(storage, offset, size, stride, dtype)


def _rebuild_v3(storage: Any = None, offset: Any = None, size: Any = None, stride: Any = None,
                requires_grad: Any = None, hooks: Any = None, dtype: Any = None,
                *rest: Any) -> TensorRecord:
    _check_extras(requires_grad, hooks, rest, "_rebuild_tensor_v3")
    return _tensor(storage, offset, size, stride, dtype)


def _parameter(data: Any = None, *rest: Any) -> TensorRecord:
    if not isinstance(data, TensorRecord) or len(rest) > 3:
        raise RecordsError(f"_rebuild_parameter is given a {_kind(data)}, not a tensor")
    return data


def _ordered_dict(*args: Any) -> collections.OrderedDict[Any, Any]:
    if args:  # torch.save writes OrderedDict() and fills it with SETITEMS
        raise RecordsError("OrderedDict is called with arguments a saved dict never has")
    return collections.OrderedDict()


def _latin1(text: Any = None, encoding: Any = None, *rest: Any) -> bytes:
    """Protocol-2 pickles write bytes as _codecs.encode(str, "latin1"); nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or rest:
        raise RecordsError("_codecs.encode is called other than as pickle writes bytes")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError as e:
        raise RecordsError("_codecs.encode is given text outside latin-1") from e


class _Untyped:
    """The marker for torch.UntypedStorage in a persistent id; never called."""


_UNTYPED = _Untyped()
_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_v3,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch.storage", "UntypedStorage"): _UNTYPED,
    ("torch", "UntypedStorage"): _UNTYPED,
    ("collections", "OrderedDict"): _ordered_dict,
    ("_io", "BytesIO"): NotATensor,
    ("io", "BytesIO"): NotATensor,
    ("_codecs", "encode"): _latin1,
}
# torch.save names a typed storage by its legacy class (torch.BFloat16Storage, ...).
_STORAGE_DTYPES = {
    "FloatStorage": dtypes.FLOAT32, "HalfStorage": dtypes.FLOAT16,
    "BFloat16Storage": dtypes.BFLOAT16, "DoubleStorage": dtypes.FLOAT64,
    "LongStorage": dtypes.INT64, "IntStorage": dtypes.INT32, "ShortStorage": dtypes.INT16,
    "CharStorage": dtypes.INT8, "ByteStorage": dtypes.UINT8, "BoolStorage": dtypes.BOOL,
}


class _RecordUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _GLOBALS.get((module, name))
        if found is not None:
            return found
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageClass(_STORAGE_DTYPES[name])
        if module == "torch" and name in dtypes.BY_NAME:  # a dtype (torch.float8_e4m3fn)
            return dtypes.BY_NAME[name]
        # The wording torch's own restricted unpickler uses, which callers quote.
        where = f"{module}.{name}"
        raise RecordsError(f"GLOBAL {where if len(where) <= 80 else where[:77] + '...'} is not "
                           "allowed in a file of tensors", refused=True)

    def persistent_load(self, pid: Any) -> StorageRecord:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise RecordsError(f"a persistent id is a {_kind(pid)}"
                               + (f" of {len(pid)}" if isinstance(pid, tuple) else "")
                               + ", not torch's ('storage', type, key, location, size)")
        _, kind, key, location, size = pid
        if not (isinstance(location, str) and _LOCATION_RE.match(location)):
            raise RecordsError("a storage's location is not a device torch knows")
        if not (isinstance(kind, _StorageClass) or kind is _UNTYPED):
            raise RecordsError(f"a storage's type is a {_kind(kind)}, not a storage class")
        if not (isinstance(key, str) and key.isdigit() and len(key) <= 20):
            raise RecordsError("a storage key is not a number like torch writes")
        # The size is in elements of the storage's dtype (bytes for an untyped storage), as
        # torch.serialization's persistent_load reads it.
        dtype = kind.dtype if isinstance(kind, _StorageClass) else None
        n_bytes = _whole(size, "a storage size") * (dtype.itemsize if dtype else 1)
        return StorageRecord(key, dtype, n_bytes)


def read_records(data_pkl: IO[bytes], *, max_bytes: int) -> Any:
    """The unpickled object, with tensors as TensorRecord and `_extra_state` as NotATensor.

    Raises RecordsError for anything else: a forbidden global (refused=True) or a pickle that
    is damaged, hostile or not torch's.
    """
    data = data_pkl.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RecordsError(f"its data.pkl is larger than {max_bytes} bytes, far more than a "
                           "file of tensors needs")
    try:
        scan_opcodes(data)
    except UnsafePickle as e:
        raise RecordsError(str(e)) from e
    try:
        return _RecordUnpickler(io.BytesIO(data)).load()
    except RecordsError:
        raise
    except (Exception, RecursionError, MemoryError) as e:
        # pickle's own errors (a bad opcode, a short stack), and anything an allowed global
        # raised on wrong arguments its checks did not foresee: the file is not torch's.
        raise RecordsError(f"its data.pkl cannot be read ({_kind(e)})") from e

