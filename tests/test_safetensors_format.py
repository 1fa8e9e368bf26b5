"""planning/safetensors_format.py: files written by the safetensors library (the oracle for the
format) parse to what safe_open reports, and headers the format forbids are refused by name."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from streamconv.planning.safetensors_format import (
    DATA_ALIGN,
    ITEM_BYTES,
    HeaderProblem,
    encode_header,
    parse_header,
    read_header,
)

TORCH_TO_ST = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
               torch.int64: "I64", torch.uint8: "U8"}


def _written(tmp_path: Path) -> Path:
    gen = torch.Generator().manual_seed(7)
    tensors = {
        "model.embed_tokens.weight": torch.randn(8, 4, generator=gen).to(torch.bfloat16),
        "model.norm.weight": torch.randn(4, generator=gen),
        "lm_head.weight": torch.randn(8, 4, generator=gen).to(torch.float16),
        "counts": torch.arange(5, dtype=torch.int64),
        "empty": torch.zeros(0, 3, dtype=torch.uint8),
    }
    path = tmp_path / "model-00001-of-00001.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def _bytes_of(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def test_header_of_a_library_written_file_matches_safe_open(tmp_path: Path) -> None:
    path = _written(tmp_path)
    header = read_header(path)
    assert header.metadata == {"format": "pt"}
    assert header.file_bytes == path.stat().st_size
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert header.data_start == 8 + n
    data = path.read_bytes()[header.data_start:]
    with safe_open(str(path), framework="pt") as f:
        assert set(header.tensors) == set(f.keys())
        assert f.metadata() == header.metadata
        for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            tensor, entry = f.get_tensor(name), header.tensors[name]
            assert entry.shape == tuple(tensor.shape), name
            assert entry.dtype == TORCH_TO_ST[tensor.dtype], name
            assert entry.end - entry.begin == tensor.numel() * ITEM_BYTES[entry.dtype], name
            assert data[entry.begin:entry.end] == _bytes_of(tensor), name


def _file_with_header(tmp_path: Path, header: object, *, data_bytes: int) -> Path:
    raw = json.dumps(header).encode()
    path = tmp_path / "forged.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(data_bytes))
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


def test_a_hand_written_valid_header_parses(tmp_path: Path) -> None:
    header = read_header(_file_with_header(tmp_path, GOOD, data_bytes=16))
    assert header.tensors["a"].shape == (2, 2)
    assert (header.tensors["a"].begin, header.tensors["a"].end) == (0, 16)
    assert header.metadata == {}


@pytest.mark.parametrize(("entry", "words"), [
    ({"dtype": "F33", "shape": [2, 2], "data_offsets": [0, 16]}, "unknown dtype"),
    ({"dtype": "F32", "shape": [2, -2], "data_offsets": [0, 16]}, "shape"),
    ({"dtype": "F32", "shape": [2, True], "data_offsets": [0, 16]}, "shape"),
    ({"dtype": "F32", "shape": [2, 2], "data_offsets": [0]}, "data_offsets"),
    ({"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}, "needs 16"),
    ({"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]}, "outside"),
    ({"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 0]}, "outside"),
    ("not an object", "not an object"),
])
def test_malformed_entries_are_refused(tmp_path: Path, entry: object, words: str) -> None:
    path = _file_with_header(tmp_path, {"a": entry}, data_bytes=16)
    with pytest.raises(HeaderProblem, match=words):
        read_header(path)


def test_overlapping_tensors_are_refused() -> None:
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    with pytest.raises(HeaderProblem, match="a and b overlap"):
        parse_header(header, data_start=100, file_bytes=116)
    header["b"]["data_offsets"] = [8, 16]
    assert set(parse_header(header, data_start=100, file_bytes=116).tensors) == {"a", "b"}


@pytest.mark.parametrize("metadata", [{"k": 1}, ["format", "pt"], {"k": None}])
def test_metadata_must_map_strings_to_strings(metadata: object) -> None:
    with pytest.raises(HeaderProblem, match="__metadata__"):
        parse_header({**GOOD, "__metadata__": metadata}, data_start=8, file_bytes=24)


def test_header_that_is_not_a_json_object(tmp_path: Path) -> None:
    with pytest.raises(HeaderProblem, match="JSON list"):
        read_header(_file_with_header(tmp_path, [1, 2], data_bytes=0))
    path = tmp_path / "junk.safetensors"
    path.write_bytes(struct.pack("<Q", 3) + b"{x}")
    with pytest.raises(HeaderProblem, match="not valid JSON"):
        read_header(path)


def test_short_file_and_oversized_length_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(HeaderProblem, match="too short"):
        read_header(path)
    whole = _written(tmp_path).read_bytes()
    (n,) = struct.unpack("<Q", whole[:8])
    path.write_bytes(struct.pack("<Q", len(whole)) + whole[8:])  # length past the end
    with pytest.raises(HeaderProblem, match="does not fit"):
        read_header(path)
    path.write_bytes(whole[:8 + n - 1])  # cut inside the header
    with pytest.raises(HeaderProblem, match="does not fit"):
        read_header(path)


def test_written_header_round_trips_through_safetensors_and_our_reader(tmp_path: Path) -> None:
    """encode_header's bytes, followed by the tensors' data, are a file the safetensors library
    opens with the same names, shapes and values, and read_header reads back; the data starts on
    a DATA_ALIGN boundary."""
    tensors = {"b.weight": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3),
               "a.weight": torch.arange(5, dtype=torch.float32)}
    entries, data, offset = [], b"", 0
    for name, tensor in tensors.items():
        raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
        dtype = "BF16" if tensor.dtype is torch.bfloat16 else "F32"
        entries.append((name, dtype, tuple(tensor.shape), offset, offset + len(raw)))
        data += raw
        offset += len(raw)
    header = encode_header(entries)
    assert len(header) % DATA_ALIGN == 0
    path = tmp_path / "written.safetensors"
    path.write_bytes(header + data)

    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(tensors)
        for name, tensor in tensors.items():
            assert torch.equal(f.get_tensor(name), tensor)
    parsed = read_header(path)
    assert parsed.metadata == {"format": "pt"}
    assert parsed.data_start == len(header)
    assert parsed.tensors["a.weight"].shape == (5,)
