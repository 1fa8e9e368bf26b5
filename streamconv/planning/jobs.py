"""The whole conversion as plain data, decided before the first byte is written.

plan_conversion() is pure: it takes the model's tensor layouts, the dtypes, the budget and the
memory the process already uses, and returns the output files (with their headers), the jobs in
write order, and the memory schedule. `streamconv plan` prints it; convert runs it.

Memory model: jobs run in `depth` reusable slots, sized from the budget by slots.py (which
explains what a slot holds); a tensor bigger than a slot is cut into row ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streamconv.model.spec import ModelSpec
from streamconv.planning.encoding import Encoding
from streamconv.planning.layout import CopyBlock, TensorLayout, copy_blocks
from streamconv.planning.output_files import OutputFile, layout_output_files
from streamconv.planning.slots import (
    RUNTIME_ALLOWANCE_BYTES,
    SCRATCH_ALIGN,
    Encodings,
    choose_slots,
    round_up,
    scratch_bytes,
    smallest_budget,
)
from streamconv.source.fp8_scales import FP8_DTYPE
from streamconv.system.direct_io import ALIGN, HUGE_PAGE, SPAN_SLACK
from streamconv.system.dtypes import DType


@dataclass(frozen=True, kw_only=True)
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
    src_dtype: DType  # the rank files' dtype of this tensor
    encoding: Encoding  # what the blocks produce and how it is stored (encoding.py)
    scratch_bytes: int = 0  # after the staging area: row scales and fp32 scratch (FP8 only)
    # Two-stage encodings: the rows as the blocks produce them, then the second step's scratch.
    values_bytes: int = 0
    encode_scratch_bytes: int = 0
    # The rows start as zeros, because the blocks fill only part of them (a row gather,
    # TensorLayout.zero_fill).
    zero_fill: bool = False

    @property
    def dequantize(self) -> bool:
        """Whether the blocks are fp8 with row scales (Meta's FP8 release)."""
        return self.src_dtype == FP8_DTYPE

    @property
    def read_bytes(self) -> int:
        """Bytes the job reads: its blocks, and for FP8 one fp32 scale per block row."""
        return sum(b.n_rows * b.n_cols * _itemsize(self.src_dtype)
                   + (b.scale.read_bytes(b.src_row_start, b.n_rows, b.n_cols) if b.scale else 0)
                   for b in self.blocks)


@dataclass(frozen=True)
class Plan:
    files: tuple[OutputFile, ...]
    jobs: tuple[Job, ...]
    src_dtype: DType  # the model's dtype; FP8 weights are per job (Job.src_dtype)
    dst_dtype: DType
    depth: int
    slot_bytes: int
    budget_bytes: int
    baseline_bytes: int
    predicted_peak_bytes: int
    min_budget_bytes: int
    # The input files the blocks' byte ranges index (Checkpoint.read_paths), once the plan is
    # located against the tensor index (source_ranges.locate_reads); empty before.
    read_paths: tuple[Path, ...] = ()

    @property
    def output_bytes(self) -> int:
        return sum(f.total_bytes for f in self.files)

    @property
    def read_bytes(self) -> int:
        return sum(job.read_bytes for job in self.jobs)


def _itemsize(dtype: DType) -> int:
    return dtype.itemsize


def needs_stage(block: CopyBlock, *, n_cols: int, rotary: int | None, same_dtype: bool) -> bool:
    """Whether a block's bytes must be transformed on the way (a cast, the q/k permute, a
    transpose, or a block that is only some of the output's columns); otherwise they are a
    plain copy, which can be read straight into place when O_DIRECT is not available."""
    return not same_dtype or rotary is not None or block.n_cols != n_cols or block.transpose


def _jobs_for(layout: TensorLayout, spec: ModelSpec, *, out_cap: int, enc: Encoding,
              file_idx: int, data_start: int, first_idx: int) -> list[Job]:
    row_bytes = enc.row_bytes(layout.n_cols)
    src_item = _itemsize(layout.src_dtype)
    rows_per_job = max(out_cap // row_bytes // layout.row_unit, 1) * layout.row_unit
    jobs: list[Job] = []
    for row_start in range(0, layout.n_rows, rows_per_job):
        row_stop = min(row_start + rows_per_job, layout.n_rows)
        blocks = copy_blocks(layout, spec, row_start, row_stop)
        stage = max((b.n_rows * b.n_cols * src_item for b in blocks), default=0) + SPAN_SLACK
        scratch = 0
        if layout.src_dtype == FP8_DTYPE:
            block_rows = max(b.n_rows for b in blocks)
            scale_bytes = max(b.scale.read_bytes(b.src_row_start, b.n_rows, b.n_cols)
                              for b in blocks if b.scale is not None)
            scratch = (round_up(scale_bytes, SCRATCH_ALIGN)
                       + scratch_bytes(block_rows, layout.n_cols, enc.values))
        jobs.append(Job(job_idx=first_idx + len(jobs), hf_name=layout.hf_name,
                        file_idx=file_idx, file_offset=data_start + row_start * row_bytes,
                        row_start=row_start, row_stop=row_stop,
                        out_bytes=(row_stop - row_start) * row_bytes, stage_bytes=stage,
                        rotary_head_dim=layout.rotary_head_dim, n_cols=layout.n_cols,
                        blocks=tuple(blocks), src_dtype=layout.src_dtype, encoding=enc,
                        scratch_bytes=scratch,
                        values_bytes=(row_stop - row_start) * enc.values_row_bytes(layout.n_cols),
                        encode_scratch_bytes=enc.scratch_bytes, zero_fill=layout.zero_fill))
    return jobs


def slot_layout(job: Job) -> tuple[int, int]:
    """(output offset, staging offset) inside a slot, which is itself block-aligned. The output
    rows sit where their file offset sits within a disk block, so that every whole block of
    them can be written with O_DIRECT (direct_io.direct_span); the staging area starts on a
    block boundary for O_DIRECT reads."""
    out_offset = job.file_offset % ALIGN
    return out_offset, -(-(out_offset + job.out_bytes) // ALIGN) * ALIGN


def scratch_offset(job: Job) -> int:
    """Where an FP8 job's row scales start in its slot (its fp32 scratch follows them)."""
    return round_up(slot_layout(job)[1] + job.stage_bytes, SCRATCH_ALIGN)


def _fp8_end(job: Job) -> int:
    if not job.scratch_bytes:
        return slot_layout(job)[1] + job.stage_bytes
    return scratch_offset(job) + job.scratch_bytes


def values_offset(job: Job) -> int:
    """Where a two-stage job's values area starts in its slot."""
    return round_up(_fp8_end(job), SCRATCH_ALIGN)


def encode_scratch_offset(job: Job) -> int:
    """Where a two-stage job's second-step scratch (Q8_0) starts in its slot."""
    return round_up(values_offset(job) + job.values_bytes, SCRATCH_ALIGN)


def _job_slot_bytes(job: Job) -> int:
    if not job.encoding.two_stage:
        return _fp8_end(job)
    return encode_scratch_offset(job) + job.encode_scratch_bytes


def plan_conversion(spec: ModelSpec, layouts: list[TensorLayout], *, dst_dtype: DType,
                    budget_bytes: int, baseline_bytes: int, max_shard_bytes: int,
                    encodings: Encodings | None = None,
                    files: list[OutputFile] | None = None) -> Plan:
    """`encodings` (by hf_name) and `files` are the output format's (GGUF: gguf_file.py);
    without them every tensor is stored in dst_dtype in safetensors shards."""
    if encodings is None:
        encodings = {t.hf_name: Encoding(dst_dtype) for t in layouts}
    reserved = baseline_bytes + RUNTIME_ALLOWANCE_BYTES
    min_budget = smallest_budget(layouts, encodings=encodings, baseline_bytes=baseline_bytes)
    depth, out_cap = choose_slots(layouts, encodings=encodings, baseline_bytes=baseline_bytes,
                                  budget=budget_bytes)
    if files is None:
        files = layout_output_files(layouts, dtype=dst_dtype, max_shard_bytes=max_shard_bytes)
    jobs: list[Job] = []
    for file_idx, out_file in enumerate(files):
        for tensor in out_file.tensors:
            jobs += _jobs_for(tensor.layout, spec, out_cap=out_cap,
                              enc=encodings[tensor.layout.hf_name], file_idx=file_idx,
                              data_start=out_file.data_start + tensor.data_offset,
                              first_idx=len(jobs))
    slot_bytes = max(_job_slot_bytes(j) for j in jobs)
    depth = min(depth, len(jobs))
    return Plan(files=tuple(files), jobs=tuple(jobs), src_dtype=spec.dtype, dst_dtype=dst_dtype,
                depth=depth, slot_bytes=slot_bytes, budget_bytes=budget_bytes,
                baseline_bytes=baseline_bytes,
                predicted_peak_bytes=reserved + depth * -(-slot_bytes // HUGE_PAGE) * HUGE_PAGE,
                min_budget_bytes=min_budget)


