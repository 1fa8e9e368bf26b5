"""Meta -> Hugging Face, tensor by tensor: the family's tensor table resolved to this model.

Pure functions over shapes. Every output tensor is treated as a matrix of rows (a 1-D norm is
one row), so that any job, however the budget cuts it, is "rows [a, b) of one HF tensor", built
from copy blocks that each read a contiguous byte range of one rank file. Which tensors exist,
their names, shapes, splits and transforms come from model/tensor_table.py; nothing here knows
a tensor by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamconv.model.detect import ModelSpec
from streamconv.model.tensor_table import (
    Split,
    effective_split,
    full_shape,
    hf_name,
    meta_name,
    rank_shape,
    rotary_head_dim,
)
from streamconv.source.fp8_scales import FP8_DTYPE


@dataclass(frozen=True)
class TensorLayout:
    hf_name: str
    meta_name: str
    shape: tuple[int, ...]
    split: Split  # ROWS, COLS or REPLICATED (the embedding's resolved)
    # The dtype in the rank files: the model's, or fp8.FP8_DTYPE for the feed-forward weights
    # of Meta's FP8 release, which are dequantized with their row scales on the way.
    src_dtype: torch.dtype
    rotary_head_dim: int | None = None  # rows are permuted within heads of this many rows
    src_shape: tuple[int, ...] = ()  # the shape each rank file holds

    @property
    def n_rows(self) -> int:
        return self.shape[0] if len(self.shape) == 2 else 1

    @property
    def n_cols(self) -> int:
        return self.shape[-1]

    @property
    def row_unit(self) -> int:
        """Jobs cut this tensor at multiples of this many rows (whole heads for q/k)."""
        return self.rotary_head_dim or 1


@dataclass(frozen=True)
class CopyBlock:
    """Rows of one rank file's tensor -> a rectangle of the output tensor."""

    rank_idx: int
    meta_name: str
    src_row_start: int
    n_rows: int
    dst_row_start: int
    dst_col_start: int
    n_cols: int


def hf_layouts(spec: ModelSpec, *,
               quantized: frozenset[str] | None = None) -> list[TensorLayout]:
    """All output tensors in the order HF's save_pretrained writes them. The Meta tensors stored
    as fp8 are spec.quantized (or `quantized`, for planner tests); every other one is in
    spec.dtype."""
    if quantized is None:
        quantized = spec.quantized
    layouts = []
    for entry, layer_idx in spec.tensors.entries_in_order(spec.n_layers):
        if entry.unless_tied and spec.tie_word_embeddings:
            continue
        name = meta_name(entry, layer_idx)
        layouts.append(TensorLayout(
            hf_name(entry, layer_idx), name, full_shape(entry, spec),
            effective_split(entry, spec), FP8_DTYPE if name in quantized else spec.dtype,
            rotary_head_dim(entry, spec), rank_shape(entry, spec)))
    return layouts


def copy_blocks(layout: TensorLayout, spec: ModelSpec, row_start: int,
                row_stop: int) -> list[CopyBlock]:
    """The rank reads that produce rows [row_start, row_stop) of one output tensor.

    ROWS tensors whose ranks outnumber the distinct row groups (kv heads of 405B in 16 ranks)
    read each group from the first rank that holds it.
    """
    if layout.split is Split.REPLICATED:
        return [CopyBlock(0, layout.meta_name, 0, 1, 0, 0, layout.n_cols)]
    if layout.split is Split.COLS:
        width = layout.src_shape[1]
        return [CopyBlock(s, layout.meta_name, row_start, row_stop - row_start, row_start,
                          s * width, width) for s in range(spec.n_ranks)]
    per_rank = layout.src_shape[0]
    replicas = spec.n_ranks * per_rank // layout.n_rows
    blocks = []
    row = row_start
    while row < row_stop:
        group = row // per_rank
        stop = min(row_stop, (group + 1) * per_rank)
        blocks.append(CopyBlock(group * replicas, layout.meta_name, row - group * per_rank,
                                stop - row, row, 0, layout.n_cols))
        row = stop
    return blocks


def replica_ranks(layout: TensorLayout, spec: ModelSpec) -> list[list[int]]:
    """For each distinct row group, every rank holding a copy (for agreement checks)."""
    if layout.split is Split.REPLICATED:
        return [list(range(spec.n_ranks))]
    if layout.split is Split.COLS:
        return [[s] for s in range(spec.n_ranks)]
    per_rank = layout.src_shape[0]
    replicas = spec.n_ranks * per_rank // layout.n_rows
    return [list(range(g * replicas, (g + 1) * replicas))
            for g in range(spec.n_ranks // replicas)]
