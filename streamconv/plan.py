"""The whole conversion as plain data, decided before the first byte is written.

plan_conversion() is pure: it takes the model's tensor layouts, the dtypes, the budget and the
memory the process already uses, and returns the output files (with their headers), the jobs in
write order, and the memory schedule. `streamconv plan` prints it; convert runs it.

Memory model. Jobs run in `depth` slots; a slot is one buffer, allocated once and reused, that
holds a job's output rows (in the output dtype) followed by a staging area for the shard bytes
of one copy block: they are read there (with O_DIRECT, in whole disk blocks, hence SPAN_SLACK)
and then copied, cast or permuted into place. Resident
memory is therefore the baseline (interpreter, torch, metadata) plus depth x slot_bytes, and the
budget decides the slot size: a tensor bigger than a slot is cut into row ranges (whole heads for
q/k), so the smallest workable budget depends on the widest row, not on the model's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .detect import ModelSpec
from .direct_io import ALIGN, HUGE_PAGE, SPAN_SLACK
from .errors import BudgetError
from .layout import CopyBlock, TensorLayout, copy_blocks
from .memory import format_flag_size, format_size
from .shards import OutputFile, layout_output_files

# Pieces larger than this do not read or write faster (O_DIRECT on this machine's disk: the same
# speed from 8 to 64 MiB per call), they only cost memory.
MAX_PIECE_BYTES = 32 << 20
# Pieces smaller than this make I/O calls too small to reach disk speed; below it, trade
# overlap (depth) for size first.
GOOD_PIECE_BYTES = 16 << 20
MAX_DEPTH = 3
# Interpreter growth during the run (thread stacks, job objects, allocator slack), measured on
# Linux with the memory tests; kept as an allowance so peak RSS stays under --max-ram.
RUNTIME_ALLOWANCE_BYTES = 48 << 20
# A slot's bytes beyond its output rows and staged block: the output rows start up to a block
# in (at their file offset's position within a block), the staging area starts on the next
# block boundary and holds whole blocks, and the slot's last huge page counts whole in RSS.
SLOT_SLACK = 2 * ALIGN + SPAN_SLACK + HUGE_PAGE


@dataclass(frozen=True)
class Job:
    """Rows [row_start, row_stop) of one output tensor, written at file_offset of its file."""

    job_idx: int
    hf_name: str
    file_idx: int
    file_offset: int
    row_start: int
    row_stop: int
    out_bytes: int
    stage_bytes: int
    rotary_head_dim: int | None
    n_cols: int
    blocks: tuple[CopyBlock, ...]


@dataclass(frozen=True)
class Plan:
    files: tuple[OutputFile, ...]
    jobs: tuple[Job, ...]
    src_dtype: torch.dtype
    dst_dtype: torch.dtype
    depth: int
    slot_bytes: int
    budget_bytes: int
    baseline_bytes: int
    predicted_peak_bytes: int
    min_budget_bytes: int

    @property
    def output_bytes(self) -> int:
        return sum(f.total_bytes for f in self.files)

    @property
    def read_bytes(self) -> int:
        return sum(b.n_rows * b.n_cols for j in self.jobs for b in j.blocks) * _itemsize(
            self.src_dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def needs_stage(block: CopyBlock, *, n_cols: int, rotary: int | None, same_dtype: bool) -> bool:
    """Whether a block's bytes must be transformed on the way (a cast, the q/k permute, or a
    block that is only some of the output's columns); otherwise they are a plain copy, which
    can be read straight into place when O_DIRECT is not available."""
    return not same_dtype or rotary is not None or block.n_cols != n_cols


def _unit_bytes(layout: TensorLayout, itemsize: int) -> int:
    return layout.row_unit * layout.n_cols * itemsize


def _choose_slots(layouts: list[TensorLayout], *, src_item: int, dst_item: int,
                  avail: int, min_budget: int, budget: int) -> tuple[int, int]:
    """(depth, out_cap): as much overlap as the budget allows without starving piece size."""
    stage_ratio = max(src_item / dst_item, 1.0)
    widest = max(_unit_bytes(t, dst_item) for t in layouts)
    largest = max(t.n_rows * t.n_cols * dst_item for t in layouts)
    unit = int(widest * (1 + stage_ratio)) + SLOT_SLACK
    if avail < unit:
        raise BudgetError(
            f"--max-ram {format_size(budget)} is too small: one unit of work needs "
            f"{format_size(unit)} on top of the "
            f"{format_size(min_budget - unit)} the process itself uses; "
            f"use --max-ram {format_flag_size(min_budget)} or more")
    for depth in range(MAX_DEPTH, 0, -1):
        out_cap = int((avail - depth * SLOT_SLACK) / (depth * (1 + stage_ratio)))
        if out_cap >= min(GOOD_PIECE_BYTES, largest) or depth == 1:
            return depth, max(min(out_cap, MAX_PIECE_BYTES), widest)
    raise AssertionError("unreachable")


def _jobs_for(layout: TensorLayout, spec: ModelSpec, *, out_cap: int, dst_item: int,
              src_item: int, file_idx: int, data_start: int,
              first_idx: int) -> list[Job]:
    row_bytes = layout.n_cols * dst_item
    rows_per_job = max(out_cap // row_bytes // layout.row_unit, 1) * layout.row_unit
    jobs: list[Job] = []
    for row_start in range(0, layout.n_rows, rows_per_job):
        row_stop = min(row_start + rows_per_job, layout.n_rows)
        blocks = copy_blocks(layout, spec, row_start, row_stop)
        stage = max(b.n_rows * b.n_cols * src_item for b in blocks) + SPAN_SLACK
        jobs.append(Job(first_idx + len(jobs), layout.hf_name, file_idx,
                        data_start + row_start * row_bytes, row_start, row_stop,
                        (row_stop - row_start) * row_bytes, stage, layout.rotary_head_dim,
                        layout.n_cols, tuple(blocks)))
    return jobs


def slot_layout(job: Job) -> tuple[int, int]:
    """(output offset, staging offset) inside a slot, which is itself block-aligned. The output
    rows sit where their file offset sits within a disk block, so that every whole block of
    them can be written with O_DIRECT (direct_io.direct_span); the staging area starts on a
    block boundary for O_DIRECT reads."""
    out_offset = job.file_offset % ALIGN
    return out_offset, -(-(out_offset + job.out_bytes) // ALIGN) * ALIGN


def plan_conversion(spec: ModelSpec, layouts: list[TensorLayout], *, dst_dtype: torch.dtype,
                    budget_bytes: int, baseline_bytes: int, max_shard_bytes: int) -> Plan:
    src_item, dst_item = _itemsize(spec.dtype), _itemsize(dst_dtype)
    reserved = baseline_bytes + RUNTIME_ALLOWANCE_BYTES
    stage_ratio = max(src_item / dst_item, 1.0)
    widest = max(_unit_bytes(t, dst_item) for t in layouts)
    min_budget = reserved + int(widest * (1 + stage_ratio)) + SLOT_SLACK
    depth, out_cap = _choose_slots(layouts, src_item=src_item, dst_item=dst_item,
                                   avail=budget_bytes - reserved, min_budget=min_budget,
                                   budget=budget_bytes)
    files = layout_output_files(layouts, dtype=dst_dtype, max_shard_bytes=max_shard_bytes)
    jobs: list[Job] = []
    for file_idx, out_file in enumerate(files):
        for tensor in out_file.tensors:
            jobs += _jobs_for(tensor.layout, spec, out_cap=out_cap, dst_item=dst_item,
                              src_item=src_item, file_idx=file_idx,
                              data_start=out_file.data_start + tensor.data_offset,
                              first_idx=len(jobs))
    slot_bytes = max(slot_layout(j)[1] + j.stage_bytes for j in jobs)
    depth = min(depth, len(jobs))
    return Plan(files=tuple(files), jobs=tuple(jobs), src_dtype=spec.dtype, dst_dtype=dst_dtype,
                depth=depth, slot_bytes=slot_bytes, budget_bytes=budget_bytes,
                baseline_bytes=baseline_bytes,
                predicted_peak_bytes=reserved + depth * -(-slot_bytes // HUGE_PAGE) * HUGE_PAGE,
                min_budget_bytes=min_budget)


