"""Slot sizing: how many jobs run at once and how large each job's slot is, from the budget.

Memory model. Jobs run in `depth` slots; a slot is one buffer, allocated once and reused, that
holds a job's output rows (in the output dtype) followed by a staging area for the shard bytes
of one copy block: they are read there (with O_DIRECT, in whole disk blocks, hence SPAN_SLACK)
and then copied, cast or permuted into place. Resident
memory is therefore the baseline (interpreter, torch, metadata) plus depth x slot_bytes, and the
budget decides the slot size: a tensor bigger than a slot is cut into row ranges (whole heads for
q/k), so the smallest workable budget depends on the widest row, not on the model's size.

FP8 weights (Meta's 405B, source/fp8_scales.py) stage 1 byte per value; after the staging area their
slot holds the block's row scales (fp32) and a scratch of at most CHUNK_BYTES (or one fp32
row) where rows are dequantized in fp32 before they are rounded into the output; with fp32
output they are dequantized in place and need no scratch. Both are counted in slot_bytes.

Everything here is arithmetic over the tensor layouts and their encodings (tests use integers).
"""

from __future__ import annotations

from streamconv.errors import BudgetError
from streamconv.planning.encoding import Encoding
from streamconv.planning.layout import TensorLayout
from streamconv.source.fp8_scales import FP8_DTYPE, SCALE_DTYPE
from streamconv.system.direct_io import ALIGN, HUGE_PAGE, SPAN_SLACK
from streamconv.system.dtypes import DType
from streamconv.system.memory import format_flag_size, format_size

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
# Alignment of the scale and scratch areas of an FP8 job inside its slot (fp32 views need 4;
# 64 is what torch gives its own allocations).
SCRATCH_ALIGN = 64
# fp32 rows dequantized at a time when the output is not fp32: a fixed scratch per slot, so a
# piece's size does not decide the temporary memory (torch would allocate fp32 copies of the
# whole piece for a mixed-dtype multiply on CPU).
CHUNK_BYTES = 4 << 20


Encodings = dict[str, Encoding]  # by hf_name


def unit_bytes(layout: TensorLayout, enc: Encoding) -> int:
    return layout.row_unit * enc.row_bytes(layout.n_cols)


def _stage_ratio(layouts: list[TensorLayout], encodings: Encodings) -> float:
    """Staging (and values-area) bytes per output byte, at least 1 (a plain copy stages as much
    as it writes). An FP8 block stages 1 byte per value plus its fp32 row scales; a two-stage
    encoding adds its values area."""
    ratios = [1.0]
    for t in layouts:
        enc = encodings[t.hf_name]
        out_row = enc.row_bytes(t.n_cols)
        extra = enc.values_row_bytes(t.n_cols)
        if t.src_dtype == FP8_DTYPE:
            ratios.append((t.n_cols + _scale_bytes_per_row(t) + extra) / out_row)
        else:
            ratios.append((t.src_dtype.itemsize * t.n_cols + extra) / out_row)
    return max(ratios)


def _scale_bytes_per_row(layout: TensorLayout) -> int:
    """fp32 scale bytes per stored row: one value (405B), or an expert's column vector shared
    by its group_rows rows (Llama 4)."""
    return max([SCALE_DTYPE.itemsize] + [-(-layout.n_cols * SCALE_DTYPE.itemsize
                                           // s.group_rows)
                                         for s in layout.scales if s.per_column])


def chunk_rows(n_cols: int) -> int:
    """Rows dequantized per fp32 scratch chunk (at least one)."""
    return max(1, CHUNK_BYTES // (n_cols * SCALE_DTYPE.itemsize))


def scratch_bytes(n_rows: int, n_cols: int, dst_dtype: DType) -> int:
    """fp32 rows for dequantizing an FP8 block of n_rows (none when the output is fp32: the
    output rows themselves are the fp32 scratch)."""
    if dst_dtype == SCALE_DTYPE:
        return 0
    return min(n_rows, chunk_rows(n_cols)) * n_cols * SCALE_DTYPE.itemsize


def _slot_extra(layouts: list[TensorLayout], encodings: Encodings) -> int:
    """Bytes a slot needs beyond output, staging and values for the largest FP8 scratch (the
    scales are in _stage_ratio) and the encodings' scratch (Q8_0), with the padding that aligns
    those areas."""
    encode = max((encodings[t.hf_name].scratch_bytes for t in layouts), default=0)
    encode += 2 * SCRATCH_ALIGN if encode or any(
        encodings[t.hf_name].two_stage for t in layouts) else 0
    return encode + _fp8_extra(layouts, encodings)


def _fp8_extra(layouts: list[TensorLayout], encodings: Encodings) -> int:
    fp8 = [t for t in layouts if t.src_dtype == FP8_DTYPE]
    if not fp8:
        return 0
    # A block of an expert tensor can start and end inside an expert: two more scale vectors.
    partial = max((2 * t.n_cols * SCALE_DTYPE.itemsize for t in fp8
                   if any(s.per_column for s in t.scales)), default=0)
    return 2 * SCRATCH_ALIGN + partial + max(
        scratch_bytes(t.n_rows, t.n_cols, encodings[t.hf_name].values) for t in fp8)


def _unit_slot_bytes(layouts: list[TensorLayout], encodings: Encodings) -> int:
    """One unit of work in one slot: the widest unit of rows, their staging, the slack."""
    widest = max(unit_bytes(t, encodings[t.hf_name]) for t in layouts)
    return (int(widest * (1 + _stage_ratio(layouts, encodings))) + SLOT_SLACK
            + _slot_extra(layouts, encodings))


def smallest_budget(layouts: list[TensorLayout], *, encodings: Encodings,
                    baseline_bytes: int) -> int:
    """The smallest workable --max-ram: the process, the runtime allowance and one slot that
    holds one unit of work (the widest row unit: whole heads for q/k, a whole expert band), so
    it depends on the widest row, not on the model's size. The only place it is computed."""
    return baseline_bytes + RUNTIME_ALLOWANCE_BYTES + _unit_slot_bytes(layouts, encodings)


def choose_slots(layouts: list[TensorLayout], *, encodings: Encodings, baseline_bytes: int,
                 budget: int) -> tuple[int, int]:
    """(depth, out_cap): as much overlap as the budget allows without starving piece size."""
    min_budget = smallest_budget(layouts, encodings=encodings, baseline_bytes=baseline_bytes)
    avail = budget - baseline_bytes - RUNTIME_ALLOWANCE_BYTES
    stage_ratio = _stage_ratio(layouts, encodings)
    slack = SLOT_SLACK + _slot_extra(layouts, encodings)
    widest = max(unit_bytes(t, encodings[t.hf_name]) for t in layouts)
    largest = max(t.n_rows * encodings[t.hf_name].row_bytes(t.n_cols) for t in layouts)
    unit = _unit_slot_bytes(layouts, encodings)
    if avail < unit:
        raise BudgetError(
            f"--max-ram {format_size(budget)} is too small: one unit of work needs "
            f"{format_size(unit)} on top of the "
            f"{format_size(min_budget - unit)} the process itself uses; "
            f"use --max-ram {format_flag_size(min_budget)} or more")
    for depth in range(MAX_DEPTH, 0, -1):
        out_cap = int((avail - depth * slack) / (depth * (1 + stage_ratio)))
        if out_cap < widest and depth > 1:
            # A job is at least one unit (a whole expert of Llama 4's transposed GGUF
            # experts): fewer slots rather than slots over the budget.
            continue
        if out_cap >= min(GOOD_PIECE_BYTES, largest) or depth == 1:
            return depth, max(min(out_cap, MAX_PIECE_BYTES), widest)
    raise AssertionError("unreachable")


def round_up(n: int, align: int) -> int:
    return -(-n // align) * align
