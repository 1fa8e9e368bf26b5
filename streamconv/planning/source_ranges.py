"""Where every copy block's bytes are in the input files: the plan's reads as byte ranges.

plan_conversion() (jobs.py) works on shapes alone, so that it can be tested with integers;
locate_reads() then resolves each copy block against the tensor index once, before the first
byte is written, and stores the (file, offset, length) it reads, and for FP8 blocks the range
of their scales. After that the executor looks nothing up by name: it reads exactly the ranges
the plan holds, and `streamconv plan --json` prints all of them (issue 21, "a plan that is
data").
"""

from __future__ import annotations

from dataclasses import replace

from streamconv.planning.jobs import Job, Plan
from streamconv.planning.layout import ByteRange, CopyBlock
from streamconv.source.fp8_scales import SCALE_DTYPE
from streamconv.source.tensor_index import Checkpoint, TensorRef
from streamconv.system.dtypes import DType

Refs = tuple[dict[str, TensorRef], ...]  # one dict per file, by meta_name (Checkpoint.tensors)


def block_range(block: CopyBlock, *, tensors: Refs, src_dtype: DType) -> ByteRange:
    """The bytes of a block: its rows of the rank's tensor are contiguous (the tensor index
    only accepts contiguous tensors), starting src_row_start rows into it. A transposed block
    reads the same contiguous rows; the transpose happens in the slot."""
    ref = tensors[block.rank_idx][block.meta_name]
    offset = ref.offset_bytes + block.src_row_start * ref.shape[-1] * ref.itemsize
    n_bytes = block.n_rows * block.n_cols * src_dtype.itemsize
    assert offset + n_bytes <= ref.offset_bytes + ref.nbytes, (block, ref)
    return ByteRange(file_idx=ref.rank_idx, offset_bytes=offset, n_bytes=n_bytes)


def scale_range(block: CopyBlock, *, scales: Refs) -> ByteRange:
    """The fp32 scales an FP8 block is dequantized with: its groups' values (one per row, or
    one column vector per expert), from its own rank's scale file (fp8_scales.py)."""
    layout = block.scale
    assert layout is not None, block
    ref = scales[block.rank_idx][layout.key_for(block.rank_idx)]
    first, n_groups = layout.groups(block.src_row_start, block.n_rows)
    width = block.n_cols if layout.per_column else 1
    offset = ref.offset_bytes + first * width * SCALE_DTYPE.itemsize
    n_bytes = n_groups * width * SCALE_DTYPE.itemsize
    assert offset + n_bytes <= ref.offset_bytes + ref.nbytes, (block, ref)
    return ByteRange(file_idx=ref.rank_idx, offset_bytes=offset, n_bytes=n_bytes)


def _locate_job(job: Job, *, tensors: Refs, scales: Refs) -> Job:
    blocks = tuple(
        replace(block, read=block_range(block, tensors=tensors, src_dtype=job.src_dtype),
                scale_read=(scale_range(block, scales=scales) if job.dequantize else None))
        for block in job.blocks)
    return replace(job, blocks=blocks)


def locate_reads(plan: Plan, checkpoint: Checkpoint) -> Plan:
    """The plan with every block's source byte ranges filled in, and the input files' paths."""
    jobs = tuple(_locate_job(job, tensors=checkpoint.tensors, scales=checkpoint.scales)
                 for job in plan.jobs)
    return replace(plan, jobs=jobs, read_paths=checkpoint.read_paths)
