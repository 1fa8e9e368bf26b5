"""The output files: which tensor goes in which safetensors shard, at which offset, and the header.

Format facts (safetensors' spec and transformers' loader): 8-byte little-endian header length,
then a JSON header that may end in spaces, then the tensor bytes, contiguous from offset 0 with
no gaps, in the order the header's offsets give. transformers refuses a shard whose header lacks
``__metadata__: {"format": "pt"}``.

The header is padded so that the tensor bytes start on a DATA_ALIGN boundary (safetensors itself
pads to 8): real models' tensors are multiples of 4 KiB, so every job's bytes then sit at
block-aligned file offsets and the writer can send them straight to the disk (O_DIRECT) instead
of copying them through the page cache.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from streamconv.planning.layout import TensorLayout
from streamconv.system.dtypes import DType

INDEX_NAME = "model.safetensors.index.json"
DATA_ALIGN = 4096  # a multiple of 8 (safetensors) and of every common disk block size


@dataclass(frozen=True)
class OutputTensor:
    layout: TensorLayout
    data_offset: int  # from the start of the file's data section
    nbytes: int


@dataclass(frozen=True)
class OutputFile:
    name: str
    tensors: tuple[OutputTensor, ...]
    header: bytes  # length prefix + padded JSON, exactly as written at offset 0
    # Each tensor's bytes are followed by zeros up to a multiple of this (GGUF: 32).
    data_align: int = 1

    @property
    def data_start(self) -> int:
        return len(self.header)

    @property
    def data_bytes(self) -> int:
        return sum(-(-t.nbytes // self.data_align) * self.data_align for t in self.tensors)

    @property
    def total_bytes(self) -> int:
        return self.data_start + self.data_bytes


def safetensors_header(tensors: list[OutputTensor], dtype: DType) -> bytes:
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    for tensor in tensors:
        entries[tensor.layout.hf_name] = {
            "dtype": dtype.safetensors,
            "shape": list(tensor.layout.shape),
            "data_offsets": [tensor.data_offset, tensor.data_offset + tensor.nbytes],
        }
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % DATA_ALIGN)
    return struct.pack("<Q", len(text)) + text


def shard_name(file_idx: int, n_files: int) -> str:
    return f"model-{file_idx + 1:05d}-of-{n_files:05d}.safetensors"


def layout_output_files(layouts: list[TensorLayout], *, dtype: DType,
                        max_shard_bytes: int) -> list[OutputFile]:
    """Greedy split in write order; a tensor larger than the limit gets a file of its own."""
    itemsize = dtype.itemsize
    groups: list[list[TensorLayout]] = [[]]
    size = 0
    for layout in layouts:
        nbytes = layout.n_rows * layout.n_cols * itemsize
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(layout)
        size += nbytes
    files = []
    for file_idx, group in enumerate(groups):
        tensors, offset = [], 0
        for layout in group:
            nbytes = layout.n_rows * layout.n_cols * itemsize
            tensors.append(OutputTensor(layout, offset, nbytes))
            offset += nbytes
        files.append(OutputFile(shard_name(file_idx, len(groups)), tuple(tensors),
                                safetensors_header(tensors, dtype)))
    return files


def index_json(files: list[OutputFile] | tuple[OutputFile, ...]) -> dict[str, object]:
    weight_map = {t.layout.hf_name: f.name for f in files for t in f.tensors}
    return {"metadata": {"total_size": sum(f.data_bytes for f in files)},
            "weight_map": weight_map}
