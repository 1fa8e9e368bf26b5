"""source/pickle_index.py: the restricted unpickler's records against torch.load's own view of
the same torch.save'd file (torch is the oracle for names, shapes, strides, offsets, dtypes and
storage bytes), and its refusals."""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from streamconv.source.pickle_index import (
    NotATensor,
    RecordsError,
    TensorRecord,
    read_records,
)

MAX_BYTES = 1 << 20


def _data_pkl(path: Path) -> tuple[bytes, dict[str, bytes]]:
    """(data.pkl, storage key -> member bytes) of a torch.save'd file."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = next(n for n in names if n.endswith("/data.pkl"))
        folder = pkl.removesuffix("data.pkl")
        members = {n.rsplit("/", 1)[1]: archive.read(n) for n in names
                   if n.startswith(folder + "data/")}
        return archive.read(pkl), members


def _raw_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _saved(tmp_path: Path, state: object) -> tuple[Path, object]:
    path = tmp_path / "consolidated.00.pth"
    torch.save(state, path)
    return path, read_records(io.BytesIO(_data_pkl(path)[0]), max_bytes=MAX_BYTES)


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(21)
    shared = torch.randn(40, generator=gen)  # two tensors in one storage, at different offsets
    return {
        "tok_embeddings.weight": torch.randn(6, 4, generator=gen).to(torch.bfloat16),
        "norm.weight": torch.randn(4, generator=gen).to(torch.float16),
        "layers.0.attention.wq.weight": shared[:16].view(4, 4),
        "layers.0.attention.wk.weight": shared[16:40].view(6, 4),
        "rope.freqs": torch.arange(3, dtype=torch.int64),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
    }


def test_records_match_torch_load(tmp_path: Path) -> None:
    path, records = _saved(tmp_path, _state())
    loaded = torch.load(path, weights_only=True)
    _, members = _data_pkl(path)
    assert isinstance(records, dict)
    assert list(records) == list(loaded)
    for meta_name, tensor in loaded.items():
        record = records[meta_name]
        assert isinstance(record, TensorRecord), meta_name
        assert record.shape == tuple(tensor.shape), meta_name
        assert record.stride == tensor.stride(), meta_name
        assert record.storage_offset == tensor.storage_offset(), meta_name
        assert record.dtype.torch == tensor.dtype, meta_name
        assert record.contiguous
        member = members[record.storage.key]
        assert record.storage.n_bytes == len(member) == tensor.untyped_storage().nbytes()
        start = record.storage_offset * record.dtype.itemsize
        assert member[start:start + tensor.numel() * tensor.element_size()] == _raw_bytes(tensor)


def test_shared_storage_gives_one_key_and_distinct_offsets(tmp_path: Path) -> None:
    _, records = _saved(tmp_path, _state())
    assert isinstance(records, dict)
    wq, wk = records["layers.0.attention.wq.weight"], records["layers.0.attention.wk.weight"]
    assert wq.storage.key == wk.storage.key
    assert (wq.storage_offset, wk.storage_offset) == (0, 16)
    assert records["norm.weight"].storage.key != wq.storage.key


def test_a_transposed_tensor_is_not_contiguous(tmp_path: Path) -> None:
    t = torch.arange(12, dtype=torch.float32).view(3, 4)
    _, records = _saved(tmp_path, {"t": t.t(), "c": t})
    assert isinstance(records, dict)
    assert records["t"].shape == (4, 3) and records["t"].stride == (1, 4)
    assert not records["t"].contiguous
    assert records["c"].contiguous


def test_ordered_dict_parameters_and_extra_state(tmp_path: Path) -> None:
    """What Llama 4 files hold: an OrderedDict, parameters, and io.BytesIO `_extra_state`."""
    state: collections.OrderedDict[str, object] = collections.OrderedDict()
    state["w"] = torch.nn.Parameter(torch.ones(2, 3), requires_grad=False)
    state["layers.0.feed_forward._extra_state"] = io.BytesIO(b"opaque")
    path, records = _saved(tmp_path, state)
    assert isinstance(records, collections.OrderedDict)
    assert isinstance(records["w"], TensorRecord) and records["w"].shape == (2, 3)
    assert isinstance(records["layers.0.feed_forward._extra_state"], NotATensor)
    assert torch.load(path, weights_only=False)["w"].shape == (2, 3)


def test_forbidden_global_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, (f"touch {marker}",)

    with pytest.raises(RecordsError) as caught:
        read_records(io.BytesIO(pickle.dumps({"x": Payload()}, protocol=2)), max_bytes=MAX_BYTES)
    assert caught.value.refused
    assert "GLOBAL" in str(caught.value) and "system" in str(caught.value)
    assert not marker.exists()


def test_damaged_pickle_is_an_error_not_a_refusal(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path, {"a": torch.zeros(2)})
    data = _data_pkl(path)[0]
    with pytest.raises(RecordsError) as caught:
        read_records(io.BytesIO(data[:len(data) // 2]), max_bytes=MAX_BYTES)
    assert not caught.value.refused


def test_pickle_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path, {f"t{i}": torch.zeros(1) for i in range(50)})
    data = _data_pkl(path)[0]
    assert isinstance(read_records(io.BytesIO(data), max_bytes=len(data)), dict)
    with pytest.raises(RecordsError, match="larger than"):
        read_records(io.BytesIO(data), max_bytes=len(data) - 1)


def test_a_persistent_id_that_is_not_torchs_is_refused() -> None:
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return ("storage", "not a class", "0", "cpu", 4) if obj == "S" else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"a": "S"})
    with pytest.raises(RecordsError, match="storage's type"):
        read_records(io.BytesIO(buf.getvalue()), max_bytes=MAX_BYTES)
