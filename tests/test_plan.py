"""The planner as pure arithmetic: coverage, cuts, memory schedule, budget errors, file layout."""

from __future__ import annotations

import json
import struct
from collections import defaultdict
from itertools import pairwise

import pytest
import torch

from streamconv.cli.dtype_label import source_dtype_label
from streamconv.cli.sizes import parse_size
from streamconv.errors import BudgetError
from streamconv.model.family import Family
from streamconv.model.spec import ModelSpec
from streamconv.model.tensor_table import Split
from streamconv.planning.jobs import (
    Plan,
    plan_conversion,
    scratch_offset,
    slot_layout,
)
from streamconv.planning.layout import TensorLayout, copy_blocks, hf_layouts
from streamconv.planning.output_files import layout_output_files
from streamconv.planning.safetensors_format import DATA_ALIGN
from streamconv.planning.slots import (
    CHUNK_BYTES,
    RUNTIME_ALLOWANCE_BYTES,
    SCRATCH_ALIGN,
    chunk_rows,
)
from streamconv.runtime.transforms import permute_rotary_into
from streamconv.system import dtypes
from streamconv.system.direct_io import SPAN_SLACK
from streamconv.system.dtypes import DType

MiB = 1 << 20


def spec_of(*, family: Family = Family.LLAMA2, dim: int = 4096, n_layers: int = 2,
            n_heads: int = 32, n_kv_heads: int = 32, vocab: int = 32000, ffn: int = 11008,
            n_ranks: int = 1, dtype: DType = dtypes.BFLOAT16) -> ModelSpec:
    return ModelSpec(
        family=family, n_ranks=n_ranks, dtype=dtype, dim=dim, n_layers=n_layers,
        n_heads=n_heads, n_kv_heads=n_kv_heads, vocab_size=vocab, ffn_dim=ffn, norm_eps=1e-5,
        rope_theta=10000.0, rope_scaling=None, max_position_embeddings=4096,
        tie_word_embeddings=False, embedding_split_dim=0 if family.is_llama3 else 1,
        bos_token_id=1)


@pytest.mark.parametrize("budget", ["400M", "1G", "8G"])
@pytest.mark.parametrize("n_ranks,n_kv", [(1, 32), (2, 8), (8, 8), (16, 8)])
def test_jobs_cover_every_row_once_within_budget(budget: str, n_ranks: int, n_kv: int) -> None:
    spec = spec_of(n_ranks=n_ranks, n_kv_heads=n_kv, family=Family.LLAMA3_1, vocab=128256,
                   dim=8192, n_heads=64, ffn=28672)
    layouts = hf_layouts(spec)
    plan = plan_conversion(spec, layouts, dst_dtype=dtypes.BFLOAT16,
                           budget_bytes=parse_size(budget), baseline_bytes=250 * MiB,
                           max_shard_bytes=5 << 30)
    rows: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for job in plan.jobs:
        rows[job.hf_name].append((job.row_start, job.row_stop))
        assert job.out_bytes + job.stage_bytes <= plan.slot_bytes + 64
        if job.rotary_head_dim:
            assert job.row_start % job.rotary_head_dim == 0
            assert (job.row_stop - job.row_start) % job.rotary_head_dim == 0
        covered = sum(b.n_rows * b.n_cols for b in job.blocks)
        assert covered == (job.row_stop - job.row_start) * job.n_cols
    for layout in layouts:
        spans = sorted(rows[layout.hf_name])
        assert spans[0][0] == 0 and spans[-1][1] == layout.n_rows
        assert all(a[1] == b[0] for a, b in pairwise(spans))
    assert plan.predicted_peak_bytes <= plan.budget_bytes
    assert plan.depth * plan.slot_bytes + 250 * MiB + RUNTIME_ALLOWANCE_BYTES <= plan.budget_bytes


def test_small_budget_cuts_tensors_and_min_budget_is_exact() -> None:
    spec = spec_of()
    layouts = hf_layouts(spec)
    big = plan_conversion(spec, layouts, dst_dtype=dtypes.BFLOAT16, budget_bytes=8 << 30,
                          baseline_bytes=250 * MiB, max_shard_bytes=5 << 30)
    tight = plan_conversion(spec, layouts, dst_dtype=dtypes.BFLOAT16,
                            budget_bytes=big.min_budget_bytes, baseline_bytes=250 * MiB,
                            max_shard_bytes=5 << 30)
    assert tight.depth == 1
    assert len(tight.jobs) > len(big.jobs)
    assert tight.predicted_peak_bytes <= big.min_budget_bytes
    with pytest.raises(BudgetError, match=r"use --max-ram \d"):
        plan_conversion(spec, layouts, dst_dtype=dtypes.BFLOAT16,
                        budget_bytes=big.min_budget_bytes - 1, baseline_bytes=250 * MiB,
                        max_shard_bytes=5 << 30)


def test_min_budget_does_not_grow_with_model_size() -> None:
    def min_budget(n_layers: int) -> int:
        spec = spec_of(n_layers=n_layers)
        return plan_conversion(spec, hf_layouts(spec), dst_dtype=dtypes.BFLOAT16,
                               budget_bytes=8 << 30, baseline_bytes=250 * MiB,
                               max_shard_bytes=5 << 30).min_budget_bytes

    assert min_budget(2) == min_budget(80)


@pytest.mark.parametrize("src_dtype,ratio", [(dtypes.FLOAT32, 2), (dtypes.BFLOAT16, 1)])
def test_staging_holds_the_widest_block_in_whole_disk_blocks(src_dtype: torch.dtype,
                                                              ratio: int) -> None:
    """Every block is read into staging (O_DIRECT, whole blocks) before it is put in place; a
    cast from fp32 reads twice the bytes it writes."""
    spec = spec_of(dtype=src_dtype)
    plan = plan_conversion(spec, hf_layouts(spec), dst_dtype=dtypes.BFLOAT16,
                           budget_bytes=1 << 30, baseline_bytes=250 * MiB,
                           max_shard_bytes=5 << 30)
    for job in plan.jobs:
        widest = max(b.n_rows * b.n_cols for b in job.blocks) * src_dtype.itemsize
        assert job.stage_bytes == widest + SPAN_SLACK
        if len(job.blocks) == 1:
            assert widest == ratio * job.out_bytes
    assert plan.predicted_peak_bytes <= plan.budget_bytes


def test_output_files_respect_max_shard_size_and_header_format() -> None:
    spec = spec_of(n_layers=4)
    files = layout_output_files(hf_layouts(spec), dtype=dtypes.BFLOAT16, max_shard_bytes=400 * MiB)
    assert len(files) > 1
    for out_file in files:
        big_alone = len(out_file.tensors) == 1
        assert out_file.data_bytes <= 400 * MiB or big_alone
        (n,) = struct.unpack("<Q", out_file.header[:8])
        assert n % 8 == 0 and len(out_file.header) == 8 + n
        assert len(out_file.header) % DATA_ALIGN == 0
        header = json.loads(out_file.header[8:])
        assert header.pop("__metadata__") == {"format": "pt"}
        offsets = sorted(tuple(v["data_offsets"]) for v in header.values())
        assert offsets[0][0] == 0
        assert all(a[1] == b[0] for a, b in pairwise(offsets))
        assert offsets[-1][1] == out_file.data_bytes
    names = [f.name for f in files]
    assert names[0] == f"model-00001-of-{len(files):05d}.safetensors"


def test_kv_heads_replicated_over_shards_are_read_once() -> None:
    spec = spec_of(family=Family.LLAMA3_1, dim=2048, n_heads=16, n_kv_heads=2, n_ranks=8,
                   vocab=128256, ffn=8192)
    k_proj = next(t for t in hf_layouts(spec) if t.hf_name.endswith("0.self_attn.k_proj.weight"))
    blocks = copy_blocks(k_proj, spec, 0, k_proj.n_rows)
    assert [b.rank_idx for b in blocks] == [0, 4]
    assert [b.dst_row_start for b in blocks] == [0, 128]


def test_cols_split_places_each_shard_side_by_side() -> None:
    spec = spec_of(n_ranks=4)
    o_proj = next(t for t in hf_layouts(spec) if t.hf_name.endswith("0.self_attn.o_proj.weight"))
    assert [p.split for p in o_proj.pieces] == [Split.COLS]
    blocks = copy_blocks(o_proj, spec, 10, 20)
    assert [(b.rank_idx, b.dst_col_start, b.n_cols, b.src_row_start, b.n_rows)
            for b in blocks] == [(s, s * 1024, 1024, 10, 10) for s in range(4)]


def test_rotary_permute_maps_interleaved_pairs_to_halves() -> None:
    head_dim, n_heads, n_cols = 8, 3, 5
    src = torch.arange(n_heads * head_dim * n_cols, dtype=torch.float32).view(-1, n_cols)
    dst = torch.empty_like(src)
    permute_rotary_into(dst, src, head_dim)
    for h in range(n_heads):
        for i in range(head_dim // 2):
            # Meta pair i of head h is rows (2i, 2i+1); HF puts them at rows i and i + d/2.
            assert torch.equal(dst[h * head_dim + i], src[h * head_dim + 2 * i])
            assert torch.equal(dst[h * head_dim + head_dim // 2 + i],
                               src[h * head_dim + 2 * i + 1])


def _fp8_405b_layouts(spec: ModelSpec) -> list[TensorLayout]:
    """Meta's FP8 405B: feed-forward of layers 1 .. n_layers-2 stored as fp8
    (docs/meta_formats.md 1.2)."""
    quantized = frozenset(f"layers.{i}.feed_forward.{w}.weight"
                          for i in range(1, spec.n_layers - 1) for w in ("w1", "w2", "w3"))
    return hf_layouts(spec, quantized=quantized)


def _spec_405b() -> ModelSpec:
    """405B's widths (docs/meta_formats.md 0.5) with 4 layers: 1 and 2 are fp8, as 1-124 of 126."""
    return spec_of(family=Family.LLAMA3_1, dim=16384, n_heads=128, n_kv_heads=8, vocab=128256,
                   ffn=53248, n_ranks=8, n_layers=4)


@pytest.mark.parametrize("dst_dtype", [dtypes.BFLOAT16, dtypes.FLOAT32, dtypes.FLOAT16])
@pytest.mark.parametrize("budget", ["min", "600M", "1G", "8G"])
def test_fp8_jobs_count_scales_and_fp32_scratch_within_budget(budget: str,
                                                               dst_dtype: torch.dtype) -> None:
    """An FP8 job's slot holds its output rows, 1 byte per staged value, the block's fp32 row
    scales and the fp32 dequantization scratch; all of it is in slot_bytes, so the predicted
    peak stays within the budget, down to the smallest budget the plan names."""
    spec = _spec_405b()
    layouts = _fp8_405b_layouts(spec)
    baseline = 250 * MiB

    def plan_at(budget_bytes: int) -> Plan:
        return plan_conversion(spec, layouts, dst_dtype=dst_dtype, budget_bytes=budget_bytes,
                               baseline_bytes=baseline, max_shard_bytes=5 << 30)

    probe = plan_at(8 << 30)
    plan = plan_at(probe.min_budget_bytes if budget == "min" else parse_size(budget))
    fp8_jobs = [job for job in plan.jobs if job.dequantize]
    assert {job.hf_name for job in fp8_jobs} == {
        f"model.layers.{i}.mlp.{p}_proj.weight" for i in (1, 2) for p in ("gate", "up", "down")}
    dst_item = dst_dtype.itemsize
    for job in plan.jobs:
        rows = job.row_stop - job.row_start
        if not job.dequantize:
            assert job.scratch_bytes == 0 and job.src_dtype == dtypes.BFLOAT16
            assert slot_layout(job)[1] + job.stage_bytes <= plan.slot_bytes
            continue
        block_rows = max(b.n_rows for b in job.blocks)
        assert job.stage_bytes == max(b.n_rows * b.n_cols for b in job.blocks) + SPAN_SLACK
        scales = -(-block_rows * 4 // SCRATCH_ALIGN) * SCRATCH_ALIGN
        fp32_rows = 0 if dst_dtype is dtypes.FLOAT32 else min(block_rows, chunk_rows(job.n_cols))
        assert job.scratch_bytes == scales + fp32_rows * job.n_cols * 4
        assert fp32_rows * job.n_cols * 4 <= max(CHUNK_BYTES, job.n_cols * 4)
        assert scratch_offset(job) + job.scratch_bytes <= plan.slot_bytes
        assert job.out_bytes == rows * job.n_cols * dst_item
        # read: 1 byte per value, 4 per scale row (w2: every rank's scales for the same rows)
        assert job.read_bytes == sum(b.n_rows * (b.n_cols + 4) for b in job.blocks)
    assert plan.predicted_peak_bytes <= plan.budget_bytes
    assert plan.depth * plan.slot_bytes + baseline + RUNTIME_ALLOWANCE_BYTES <= plan.budget_bytes
    if budget == "min":
        with pytest.raises(BudgetError, match=r"use --max-ram \d"):
            plan_at(plan.budget_bytes - 1)


def test_fp8_read_bytes_and_label() -> None:
    spec = _spec_405b()
    plan = plan_conversion(spec, _fp8_405b_layouts(spec), dst_dtype=dtypes.BFLOAT16,
                           budget_bytes=2 << 30, baseline_bytes=250 * MiB,
                           max_shard_bytes=5 << 30)
    bf16 = plan_conversion(spec, hf_layouts(spec), dst_dtype=dtypes.BFLOAT16,
                           budget_bytes=2 << 30, baseline_bytes=250 * MiB,
                           max_shard_bytes=5 << 30)
    ffn, dim = 53248, 16384
    # 2 fp8 layers x 3 matrices: 1 byte instead of 2 per value, plus the scales (w1/w3: one
    # per row; w2: one per row on each of the 8 ranks).
    saved = 2 * 3 * ffn * dim
    scales = 2 * 4 * (2 * ffn + 8 * dim)
    assert plan.read_bytes == bf16.read_bytes - saved + scales
    assert plan.output_bytes == bf16.output_bytes
    assert source_dtype_label(plan) == "float8_e4m3fn (feed-forward of layers 1-2) + bfloat16"
    assert source_dtype_label(bf16) == "bfloat16"
