"""Running jobs: shard bytes in, output rows out, in a fixed number of reusable slots.

The same executor serves convert (the sink writes the rows into the output file) and verify
(the sink compares them with what a file holds). A job starts only when a slot is free, so the
memory in flight never exceeds depth x slot_bytes, whatever the model's size (the bounded map of
llama.cpp's converter, with buffers that are reused instead of reallocated: freed large buffers
would otherwise leave allocator slack that the OS still counts).
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from streamconv.planning.jobs import (
    SCRATCH_ALIGN,
    Job,
    Plan,
    needs_stage,
    scratch_offset,
    slot_layout,
)
from streamconv.planning.layout import CopyBlock
from streamconv.runtime.in_place_read import read_in_place
from streamconv.runtime.transforms import permute_rotary_into
from streamconv.source.fp8_scales import SCALE_DTYPE, ScaleLayout
from streamconv.source.rank_reader import RankReader
from streamconv.source.tensor_index import TensorRef
from streamconv.system.direct_io import ALIGN, huge_page_memory

Sink = Callable[[Job, memoryview], None]
JobDone = Callable[[Job, int], None]  # job, bytes read


def aligned_empty(n_bytes: int) -> torch.Tensor:
    """A uint8 buffer that starts on a block boundary (torch only promises 64 bytes), so that a
    slot's output rows and staging area can take O_DIRECT writes and reads; on huge pages
    where the OS has them (direct_io.huge_page_memory)."""
    huge = huge_page_memory(n_bytes)
    if huge is not None:
        memory, skip = huge
        # frombuffer holds a reference to the mapping, which lives as long as the tensor
        return torch.frombuffer(memory, dtype=torch.uint8)[skip:skip + n_bytes]
    raw = torch.empty(n_bytes + ALIGN, dtype=torch.uint8)
    skip = -raw.data_ptr() % ALIGN
    return raw[skip:skip + n_bytes]


def as_buffer(raw: torch.Tensor) -> memoryview:
    """A writable view of a uint8 tensor's bytes, for positioned reads and writes (no copy)."""
    array: Any = raw.numpy()
    return memoryview(array)


class JobRunner:
    """Fills one slot with one job's output rows and hands them to the sink.

    `scales` are the FP8 release's scale files (Checkpoint.scales), read through the same
    reader, which must then have been opened on Checkpoint.read_paths.
    """

    def __init__(self, plan: Plan, refs: tuple[dict[str, TensorRef], ...], reader: RankReader,
                 sink: Sink, *, scales: tuple[dict[str, TensorRef], ...] = ()) -> None:
        self.plan = plan
        self.refs = refs
        self.scales = scales
        self.reader = reader
        self.sink = sink
        self.dst_item = plan.dst_dtype.itemsize

    def source_offset(self, block: CopyBlock) -> int:
        ref = self.refs[block.rank_idx][block.meta_name]
        return ref.offset_bytes + block.src_row_start * ref.shape[-1] * ref.itemsize

    def dequantize_into(self, dst: torch.Tensor, src: torch.Tensor, block: CopyBlock,
                        scratch: torch.Tensor, layout: ScaleLayout) -> int:
        """dst = (src.float() * scale).to(dst.dtype) with the block's rank's scales (fp8_scales.py:
        Meta's formula; one value per row, or one column vector per expert); returns the scale
        bytes read.

        The multiply runs in fp32 in `scratch`, a few rows at a time, so no temporary of the
        block's size is ever allocated; with fp32 output it runs in dst itself.
        """
        ref = self.scales[block.rank_idx][layout.key_for(block.rank_idx)]
        first, n_groups = layout.groups(block.src_row_start, block.n_rows)
        width = block.n_cols if layout.per_column else 1
        n_bytes = n_groups * width * SCALE_DTYPE.itemsize
        scale_raw = scratch[:n_bytes]
        self.reader.read_into(ref.rank_idx, ref.offset_bytes + first * width
                              * SCALE_DTYPE.itemsize, as_buffer(scale_raw))
        scale = scale_raw.view(SCALE_DTYPE).view(n_groups, width)
        in_place = dst.dtype == SCALE_DTYPE
        area_start = -(-n_bytes // SCRATCH_ALIGN) * SCRATCH_ALIGN
        # As many rows as the planner's scratch holds at this block's width: a rank's block of
        # a row-parallel tensor (w2) is narrower than the output rows the scratch was sized by.
        step = block.n_rows if in_place else max(
            1, (len(scratch) - area_start) // (block.n_cols * SCALE_DTYPE.itemsize))
        row = 0
        while row < block.n_rows:
            stop = min(row + step, block.n_rows)
            if layout.per_column:  # one expert's rows at a time, with its column vector
                group = (block.src_row_start + row) // layout.group_rows
                stop = min(stop, (group + 1) * layout.group_rows - block.src_row_start)
                factor = scale[group - first:group - first + 1]
            else:
                factor = scale[row:stop]
            if in_place:
                rows = dst[row:stop]
            else:
                n_area = (stop - row) * block.n_cols * SCALE_DTYPE.itemsize
                area = scratch[area_start:area_start + n_area]
                rows = area.view(SCALE_DTYPE).view(stop - row, block.n_cols)
            rows.copy_(src[row:stop])
            rows.mul_(factor)
            if not in_place:
                dst[row:stop].copy_(rows)
            row = stop
        return n_bytes

    def _read_plain(self, rank_idx: int, file_offset: int, slot: torch.Tensor,
                    target: torch.Tensor) -> bool:
        """Read a plain block's bytes straight into its output rows where no copy is needed:
        through the page cache (no O_DIRECT, or bytes the kernel was asked to cache), or with
        O_DIRECT when the rows sit where the disk blocks would put them (in_place_read.py).
        False: the caller stages them."""
        n_bytes = target.numel()
        if not self.reader.reads_direct(rank_idx, file_offset, n_bytes):
            self.reader.read_into(rank_idx, file_offset, as_buffer(target))
            return True
        return read_in_place(self.reader, rank_idx, file_offset, as_buffer(slot),
                             start=target.data_ptr() - slot.data_ptr(), n_bytes=n_bytes)

    def run(self, job: Job, slot: torch.Tensor) -> int:
        """Bytes read from the shards (and scale files)."""
        plan, same = self.plan, job.src_dtype == self.plan.dst_dtype
        src_item = job.src_dtype.itemsize
        out_offset, stage_offset = slot_layout(job)
        out_raw = slot[out_offset:out_offset + job.out_bytes]
        out = out_raw.view(plan.dst_dtype).view(job.row_stop - job.row_start, job.n_cols)
        row_bytes = job.n_cols * self.dst_item
        bytes_read = 0
        for block in job.blocks:
            file_offset = self.source_offset(block)
            n_bytes = block.n_rows * block.n_cols * src_item
            first = block.dst_row_start - job.row_start
            plain = not needs_stage(block, n_cols=job.n_cols, rotary=job.rotary_head_dim,
                                    same_dtype=same)
            target = out_raw[first * row_bytes:(first + block.n_rows) * row_bytes]
            if plain and self._read_plain(block.rank_idx, file_offset, slot, target):
                bytes_read += n_bytes
                continue
            stage_area = slot[stage_offset:stage_offset + job.stage_bytes]
            start = self.reader.read_span(block.rank_idx, file_offset, n_bytes,
                                          as_buffer(stage_area))
            stage_raw = stage_area[start:start + n_bytes]
            if plain:
                target.copy_(stage_raw)
            else:
                src = stage_raw.view(job.src_dtype)
                if block.transpose:
                    src = src.view(block.n_cols, block.n_rows).t()
                else:
                    src = src.view(block.n_rows, block.n_cols)
                dst = out[first:first + block.n_rows,
                          block.dst_col_start:block.dst_col_start + block.n_cols]
                if job.dequantize:
                    assert not job.rotary_head_dim, "no rotary tensor is stored as fp8"
                    assert block.scale is not None, job.hf_name
                    start = scratch_offset(job)
                    bytes_read += self.dequantize_into(
                        dst, src, block, slot[start:start + job.scratch_bytes], block.scale)
                elif job.rotary_head_dim:
                    permute_rotary_into(dst, src, job.rotary_head_dim)
                else:
                    dst.copy_(src)
            bytes_read += n_bytes
        self.sink(job, as_buffer(out_raw))
        return bytes_read


def run_jobs(plan: Plan, jobs: Iterable[Job], runner: JobRunner, on_done: JobDone) -> None:
    """Run jobs in plan.depth threads; on_done is called in the caller's thread, in job order.

    On any error or Ctrl-C, jobs not started are cancelled, running ones finish, and every job
    that completed is still reported through on_done before the exception propagates, so the
    journal can record it.
    """
    free: queue.Queue[torch.Tensor] = queue.Queue()
    for _ in range(plan.depth):
        free.put(aligned_empty(plan.slot_bytes))
    pending: deque[tuple[Job, Future[int]]] = deque()

    def task(job: Job, slot: torch.Tensor) -> int:
        try:
            return runner.run(job, slot)
        finally:
            free.put(slot)

    def reap(*, wait: bool) -> None:
        while pending and (wait or pending[0][1].done()):
            job, future = pending.popleft()
            on_done(job, future.result())  # a worker's error surfaces here

    with ThreadPoolExecutor(max_workers=plan.depth, thread_name_prefix="job") as pool:
        try:
            for job in jobs:
                while True:
                    reap(wait=False)
                    try:
                        slot = free.get(timeout=0.1)
                        break
                    except queue.Empty:
                        continue
                pending.append((job, pool.submit(task, job, slot)))
            reap(wait=True)
        except BaseException:
            for _job, future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            _report_finished(pending, on_done)
            raise


def _report_finished(pending: deque[tuple[Job, Future[int]]], on_done: JobDone) -> None:
    for job, future in pending:
        if future.done() and not future.cancelled() and future.exception() is None:
            on_done(job, future.result())
