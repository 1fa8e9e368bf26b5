"""The output files: which tensor goes in which safetensors file, at which offset, with which
header (planning/safetensors_format.py holds the format itself)."""

from __future__ import annotations

from dataclasses import dataclass

from streamconv.planning.layout import TensorLayout
from streamconv.planning.safetensors_format import encode_header
from streamconv.system.dtypes import DType

INDEX_NAME = "model.safetensors.index.json"


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
    return encode_header((t.layout.hf_name, dtype.safetensors, t.layout.shape, t.data_offset,
                          t.data_offset + t.nbytes) for t in tensors)


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
