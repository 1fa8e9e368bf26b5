"""A rank file's pickle read for what it says, not run: tensor records, no tensor, no mapping.

torch.load(mmap=True) maps the whole file privately and writable, and Linux refuses such a
mapping when the file is larger than RAM and swap together (a 94 GiB Maverick rank file on a
24 GiB machine: "Cannot allocate memory"); it also needs torch's restricted unpickler to be
told about Llama 4's `_extra_state` entries. This reads torch's data.pkl with an unpickler that
knows only what a file of tensors uses (the rebuild functions, storage types, dtypes,
OrderedDict for hooks, and io.BytesIO for `_extra_state`) and builds plain records from them;
any other global is refused before it is looked up, so nothing in the file can run. The bytes
stay where they are: storages are named by their zip member (`<archive>/data/<key>`).
"""

from __future__ import annotations

import codecs
import collections
import pickle
from dataclasses import dataclass
from typing import IO, Any

from streamconv.system import dtypes
from streamconv.system.dtypes import DType


@dataclass(frozen=True)
class StorageRecord:
    key: str  # the zip member <archive>/data/<key>
    dtype: DType | None  # None: an untyped storage (the tensor record has the dtype)


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
                   zip(self.shape, self.stride, reversed(expected)))


class NotATensor:
    """What a pickled io.BytesIO (Llama 4's `_extra_state`) becomes: nothing to convert."""

    def __setstate__(self, state: Any) -> None:
        pass


def _rebuild_v2(storage: StorageRecord, offset: int, size: tuple[int, ...],
                stride: tuple[int, ...], *_: Any) -> TensorRecord:
    assert storage.dtype is not None
    return TensorRecord(storage, int(offset), tuple(size), tuple(stride), storage.dtype)


def _rebuild_v3(storage: StorageRecord, offset: int, size: tuple[int, ...],
                stride: tuple[int, ...], requires_grad: bool, hooks: Any,
                dtype: DType, *_: Any) -> TensorRecord:
    return TensorRecord(storage, int(offset), tuple(size), tuple(stride), dtype)


def _parameter(data: TensorRecord, *_: Any) -> TensorRecord:
    return data


_UNTYPED = object()
_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_v3,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch.storage", "UntypedStorage"): _UNTYPED,
    ("torch", "UntypedStorage"): _UNTYPED,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_io", "BytesIO"): NotATensor,
    ("io", "BytesIO"): NotATensor,
    ("_codecs", "encode"): codecs.encode,
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
            return _STORAGE_DTYPES[name]
        if module == "torch" and name in dtypes.BY_NAME:  # a dtype (torch.float8_e4m3fn)
            return dtypes.BY_NAME[name]
        # The wording torch's own restricted unpickler uses, which callers quote.
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not allowed in a file of "
                                     "tensors")

    def persistent_load(self, pid: Any) -> StorageRecord:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, kind, key, _location, _size = pid
        return StorageRecord(str(key), kind if isinstance(kind, DType) else None)


def read_records(data_pkl: IO[bytes]) -> Any:
    """The unpickled object, with tensors as TensorRecord and `_extra_state` as NotATensor."""
    return _RecordUnpickler(data_pkl).load()
