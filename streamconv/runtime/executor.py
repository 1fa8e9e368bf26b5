"""Running jobs: shard bytes in, output rows out, in a fixed number of reusable slots.

The same executor serves convert (the sink writes the rows into the output file) and verify
(the sink compares them with what a file holds). A job starts only when a slot is free, so the
memory in flight never exceeds depth x slot_bytes, whatever the model's size (the bounded map of
llama.cpp's converter, with buffers that are reused instead of reallocated: freed large buffers
would otherwise leave allocator slack that the OS still counts).

Slots are numpy byte arrays. Data movement (plain copies, rows placed side by side, the rotary
permute, transposes) happens on unsigned-integer views of the element width, so a conversion
to the checkpoint's own dtype never imports torch (system/dtypes.py says why); casts and FP8
dequantization view the same memory as torch tensors.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from streamconv.planning.jobs import (
    Job,
    Plan,
    encode_scratch_offset,
    needs_stage,
    scratch_offset,
    slot_layout,
    values_offset,
)
from streamconv.planning.layout import CopyBlock
from streamconv.planning.slots import SCRATCH_ALIGN
from streamconv.runtime.in_place_read import read_in_place
from streamconv.runtime.transforms import permute_rotary_into
from streamconv.source.fp8_scales import SCALE_DTYPE, ScaleLayout
from streamconv.source.rank_reader import RankReader
from streamconv.system import dtypes
from streamconv.system.direct_io import ALIGN, huge_page_memory
from streamconv.system.dtypes import DType

Sink = Callable[[Job, memoryview], None]
JobDone = Callable[[Job, int], None]  # job, bytes read


Slot = np.ndarray  # 1-D uint8


def aligned_empty(n_bytes: int) -> Slot:
    """A uint8 buffer that starts on a block boundary, so that a slot's output rows and staging
    area can take O_DIRECT writes and reads; on huge pages where the OS has them
    (direct_io.huge_page_memory)."""
    huge = huge_page_memory(n_bytes)
    if huge is not None:
        memory, skip = huge
        # the array holds a reference to the mapping, which lives as long as the array
        return np.frombuffer(memory, dtype=np.uint8)[skip:skip + n_bytes]
    raw = np.empty(n_bytes + ALIGN, dtype=np.uint8)
    skip = -raw.ctypes.data % ALIGN
    return raw[skip:skip + n_bytes]


def as_buffer(raw: Slot) -> memoryview:
    """A writable view of a uint8 array's bytes, for positioned reads and writes (no copy)."""
    array: Any = raw
    return memoryview(array)


def _matrix(raw: Slot, dtype: DType, n_rows: int, n_cols: int) -> np.ndarray:
    """Elements of `dtype` as integers of the same width: moved, never computed on."""
    return raw.view(dtype.same_width_uint).reshape(n_rows, n_cols)


def _tensor(raw: Slot, dtype: DType, n_rows: int, n_cols: int) -> Any:
    """The same bytes as a torch tensor of `dtype`, for arithmetic (imports torch)."""
    import torch

    return torch.from_numpy(raw).view(dtype.torch).view(n_rows, n_cols)


class JobRunner:
    """Fills one slot with one job's output rows and hands them to the sink.

    The plan must be located (planning/source_ranges.locate_reads): every block carries the
    byte range it reads, and its scales' for FP8 blocks, so nothing is looked up by name here.
    `reader` is opened on the plan's read_paths (Checkpoint.read_paths: the rank files, then
    the FP8 release's scale files).
    """

    def __init__(self, plan: Plan, reader: RankReader, sink: Sink) -> None:
        self.plan = plan
        self.reader = reader
        self.sink = sink
        if any(job.encoding.quantized for job in plan.jobs):
            # Quantization runs in every job thread already (torch releases the GIL): torch's
            # own intra-op threads on top only add hand-offs (7B to Q8_0 here: 42 s of CPU
            # with them, 31 s without, the same wall time).
            import torch

            torch.set_num_threads(1)

    def dequantize_into(self, dst: Any, src: Any, block: CopyBlock, scratch_raw: Slot,
                        layout: ScaleLayout) -> int:
        """dst = (src.float() * scale).to(dst.dtype) with the block's rank's scales (fp8_scales.py:
        Meta's formula; one value per row, or one column vector per expert); returns the scale
        bytes read.

        The multiply runs in fp32 in `scratch`, a few rows at a time, so no temporary of the
        block's size is ever allocated; with fp32 output it runs in dst itself.
        """
        source = block.scale_read
        assert source is not None, "the plan's reads are not located (locate_reads)"
        first, n_groups = layout.groups(block.src_row_start, block.n_rows)
        width = block.n_cols if layout.per_column else 1
        n_bytes = n_groups * width * SCALE_DTYPE.itemsize
        assert source.n_bytes == n_bytes, (block, source)
        self.reader.read_into(source.file_idx, source.offset_bytes,
                              as_buffer(scratch_raw[:n_bytes]))
        scratch = _tensor(scratch_raw, dtypes.UINT8, 1, len(scratch_raw))[0]
        scale = scratch[:n_bytes].view(SCALE_DTYPE.torch).view(n_groups, width)
        in_place = dst.dtype == SCALE_DTYPE.torch
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
                rows = area.view(SCALE_DTYPE.torch).view(stop - row, block.n_cols)
            rows.copy_(src[row:stop])
            rows.mul_(factor)
            if not in_place:
                dst[row:stop].copy_(rows)
            row = stop
        return n_bytes

    def _read_plain(self, rank_idx: int, file_offset: int, slot: Slot, target: Slot) -> bool:
        """Read a plain block's bytes straight into its output rows where no copy is needed:
        through the page cache (no O_DIRECT, or bytes the kernel was asked to cache), or with
        O_DIRECT when the rows sit where the disk blocks would put them (in_place_read.py).
        False: the caller stages them."""
        n_bytes = target.size
        if not self.reader.reads_direct(rank_idx, file_offset, n_bytes):
            self.reader.read_into(rank_idx, file_offset, as_buffer(target))
            return True
        return read_in_place(self.reader, rank_idx, file_offset, as_buffer(slot),
                             start=target.ctypes.data - slot.ctypes.data, n_bytes=n_bytes)

    def encode(self, job: Job, values_raw: Slot, out_raw: Slot, slot: Slot) -> None:
        """The second step of a two-stage encoding (planning/encoding.py): the job's rows, as
        the blocks produced them in the values area, cast or quantized into its output rows."""
        n_rows, enc = job.row_stop - job.row_start, job.encoding
        values = _tensor(values_raw, enc.values, n_rows, job.n_cols)
        if enc.quantized:
            from streamconv.runtime import q8_0

            start = encode_scratch_offset(job)
            scratch = q8_0.Q8Scratch(_tensor(slot[start:start + job.encode_scratch_bytes],
                                             dtypes.UINT8, 1, job.encode_scratch_bytes)[0])
            q8_0.quantize_into(_tensor(out_raw, dtypes.UINT8, 1, job.out_bytes)[0], values,
                               scratch)
        else:
            assert enc.stored is not None
            _tensor(out_raw, enc.stored, n_rows, job.n_cols).copy_(values)

    def run(self, job: Job, slot: Slot) -> int:
        """Bytes read from the shards (and scale files)."""
        enc = job.encoding
        value_dtype, same = enc.values, job.src_dtype == enc.values
        src_item = job.src_dtype.itemsize
        out_offset, stage_offset = slot_layout(job)
        out_raw = slot[out_offset:out_offset + job.out_bytes]
        if enc.two_stage:
            start = values_offset(job)
            values_raw = slot[start:start + job.values_bytes]
        else:
            values_raw = out_raw
        n_out_rows = job.row_stop - job.row_start
        # Movement on integer views when nothing is computed; torch when something is.
        out: Any = (_matrix(values_raw, value_dtype, n_out_rows, job.n_cols) if same
                    else _tensor(values_raw, value_dtype, n_out_rows, job.n_cols))
        row_bytes = job.n_cols * value_dtype.itemsize
        bytes_read = 0
        if job.zero_fill:
            values_raw.fill(0)
        for block in job.blocks:
            source = block.read
            assert source is not None, "the plan's reads are not located (locate_reads)"
            file_idx, file_offset, n_bytes = source.file_idx, source.offset_bytes, source.n_bytes
            assert n_bytes == block.n_rows * block.n_cols * src_item, (block, source)
            first = block.dst_row_start - job.row_start
            plain = not needs_stage(block, n_cols=job.n_cols, rotary=job.rotary_head_dim,
                                    same_dtype=same)
            target = values_raw[first * row_bytes:(first + block.n_rows) * row_bytes]
            if plain and self._read_plain(file_idx, file_offset, slot, target):
                bytes_read += n_bytes
                continue
            stage_area = slot[stage_offset:stage_offset + job.stage_bytes]
            start = self.reader.read_span(file_idx, file_offset, n_bytes,
                                          as_buffer(stage_area))
            stage_raw = stage_area[start:start + n_bytes]
            if plain:
                target[:] = stage_raw
                bytes_read += n_bytes
                continue
            shape = ((block.n_cols, block.n_rows) if block.transpose
                     else (block.n_rows, block.n_cols))
            src = (_matrix if same else _tensor)(stage_raw, job.src_dtype, *shape)
            if block.transpose:
                src = src.T
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
                dst[...] = src  # numpy moves, or torch casts
            bytes_read += n_bytes
        if enc.two_stage:
            self.encode(job, values_raw, out_raw, slot)
        self.sink(job, as_buffer(out_raw))
        return bytes_read


def run_jobs(plan: Plan, jobs: Iterable[Job], runner: JobRunner, on_done: JobDone) -> None:
    """Run jobs in plan.depth threads; on_done is called in the caller's thread, in job order.

    On any error or Ctrl-C, jobs not started are cancelled, running ones finish, and every job
    that completed is still reported through on_done before the exception propagates, so the
    journal can record it.
    """
    free: queue.Queue[Slot] = queue.Queue()
    for _ in range(plan.depth):
        free.put(aligned_empty(plan.slot_bytes))
    pending: deque[tuple[Job, Future[int]]] = deque()

    def task(job: Job, slot: Slot) -> int:
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
