"""The safetensors file format, both ways: the header streamconv writes and the header it reads.

Format facts (huggingface/safetensors README, "Format", and transformers' loader): 8-byte
little-endian header length, then a JSON header that may end in spaces, then the tensor bytes,
contiguous from offset 0 with no gaps, in the order the header's offsets give. transformers
refuses a file whose header lacks ``__metadata__: {"format": "pt"}``.

Writing: the header is padded so that the tensor bytes start on a DATA_ALIGN boundary
(safetensors itself pads to 8): real models' tensors are multiples of 4 KiB, so every job's bytes
then sit at block-aligned file offsets and the writer can send them straight to the disk
(O_DIRECT) instead of copying them through the page cache.

Reading trusts nothing: verify locates tensors through OUT's own headers, which may come from any
tool (or be damaged), so every field is checked before it is used: the header is a JSON object;
each tensor's dtype is a known name; its shape a list of non-negative integers; its data_offsets
two integers [begin, end] inside the file's data section, with end - begin = product(shape) *
itemsize; no two tensors overlap; __metadata__, if present, maps strings to strings. Rules from
the format description and its Rust reader's checks (safetensors/src/tensor.rs: validate,
InvalidOffset, TensorInvalidInfo, MetadataIncompleteBuffer).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

# dtype name -> bytes per element (safetensors/src/tensor.rs Dtype, whole-byte types only)
ITEM_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}
DATA_ALIGN = 4096  # a multiple of 8 (safetensors) and of every common disk block size
# The reference reader refuses headers over 100 MB (safetensors MAX_HEADER_SIZE).
MAX_HEADER_BYTES = 100_000_000


def encode_header(tensors: Iterable[tuple[str, str, Sequence[int], int, int]]) -> bytes:
    """The header bytes for (name, dtype name, shape, begin, end) entries, exactly as written at
    offset 0: length prefix, JSON, and spaces up to the next DATA_ALIGN boundary."""
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    for name, dtype, shape, begin, end in tensors:
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % DATA_ALIGN)
    return struct.pack("<Q", len(text)) + text


class HeaderProblem(ValueError):
    """A safetensors header that is not what the format allows; the message says what."""


@dataclass(frozen=True)
class HeaderTensor:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # from the start of the data section
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, HeaderTensor]
    metadata: dict[str, str]
    data_start: int  # 8 + header length
    file_bytes: int


def read_header(path: Path) -> SafetensorsHeader:
    """The validated header of a safetensors file; HeaderProblem names the first fault."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        file_bytes = f.tell()
        f.seek(0)
        prefix = f.read(8)
        if len(prefix) < 8:
            raise HeaderProblem(f"the file is {file_bytes} bytes, too short for a header")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES or 8 + n > file_bytes:
            raise HeaderProblem(f"header length {n} does not fit the file ({file_bytes} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise HeaderProblem(f"header is not valid JSON ({e})") from e
    return parse_header(header, data_start=8 + n, file_bytes=file_bytes)


def parse_header(header: object, *, data_start: int, file_bytes: int) -> SafetensorsHeader:
    if not isinstance(header, dict):
        raise HeaderProblem(f"header is a JSON {type(header).__name__}, not an object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise HeaderProblem("__metadata__ is not a map of strings to strings")
    tensors = {name: _parse_entry(name, entry, data_bytes=file_bytes - data_start)
               for name, entry in header.items() if name != "__metadata__"}
    spans = sorted((t.begin, t.end, name) for name, t in tensors.items())
    for (_, end, first), (begin, _, second) in pairwise(spans):
        if begin < end:
            raise HeaderProblem(f"tensors {first} and {second} overlap in the file")
    return SafetensorsHeader(tensors, dict(metadata), data_start, file_bytes)


def _parse_entry(name: str, entry: object, *, data_bytes: int) -> HeaderTensor:
    if not isinstance(entry, dict):
        raise HeaderProblem(f"{name}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in ITEM_BYTES:
        raise HeaderProblem(f"{name}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise HeaderProblem(f"{name}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise HeaderProblem(f"{name}: data_offsets {offsets!r} is not two non-negative "
                            "integers")
    begin, end = offsets
    if not begin <= end <= data_bytes:
        raise HeaderProblem(f"{name}: data_offsets [{begin}, {end}] lie outside the "
                            f"{data_bytes} bytes of data in the file")
    expected = math.prod(shape) * ITEM_BYTES[dtype]
    if end - begin != expected:
        raise HeaderProblem(f"{name}: data_offsets span {end - begin} bytes, but {dtype} "
                            f"{shape} needs {expected}")
    return HeaderTensor(dtype, tuple(shape), begin, end)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
