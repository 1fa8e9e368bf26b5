"""planning/source_ranges.py: a copy block's byte ranges, from integers (no files): rows of the
rank tensor from its offset, its scales' groups from the scale tensor's offset."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamconv.planning.layout import ByteRange, CopyBlock
from streamconv.planning.source_ranges import block_range, scale_range
from streamconv.source.fp8_scales import FP8_DTYPE, SCALE_DTYPE, ScaleLayout
from streamconv.source.tensor_index import TensorRef
from streamconv.system import dtypes


def _ref(file_idx: int, meta_name: str, shape: tuple[int, ...], offset: int,
         dtype: dtypes.DType = dtypes.BFLOAT16) -> TensorRef:
    return TensorRef(rank_idx=file_idx, meta_name=meta_name, path=Path(f"f{file_idx}"),
                     dtype=dtype, shape=shape, offset_bytes=offset)


def test_rows_of_a_rank_tensor() -> None:
    tensors = ({}, {"w": _ref(1, "w", (64, 32), 1000)})
    block = CopyBlock(rank_idx=1, meta_name="w", src_row_start=8, n_rows=4, dst_row_start=0,
                      dst_col_start=0, n_cols=32)
    assert block_range(block, tensors=tensors, src_dtype=dtypes.BFLOAT16) == ByteRange(
        file_idx=1, offset_bytes=1000 + 8 * 32 * 2, n_bytes=4 * 32 * 2)


def test_a_range_past_its_tensor_is_an_internal_error() -> None:
    tensors = ({"w": _ref(0, "w", (4, 32), 0)},)
    block = CopyBlock(rank_idx=0, meta_name="w", src_row_start=2, n_rows=4, dst_row_start=0,
                      dst_col_start=0, n_cols=32)
    with pytest.raises(AssertionError):
        block_range(block, tensors=tensors, src_dtype=dtypes.BFLOAT16)


@pytest.mark.parametrize(("layout", "expected"), [
    # 405B: one fp32 per row, rows 10..15 of rank 1's scale vector
    (ScaleLayout("k_{rank}"), ByteRange(file_idx=3, offset_bytes=500 + 10 * 4, n_bytes=6 * 4)),
    # Llama 4: one column vector per expert of 8 rows; rows 10..15 lie in expert 1
    (ScaleLayout("k_{rank}", group_rows=8, per_column=True),
     ByteRange(file_idx=3, offset_bytes=500 + 1 * 32 * 4, n_bytes=1 * 32 * 4)),
])
def test_scales_of_an_fp8_block(layout: ScaleLayout, expected: ByteRange) -> None:
    scales = ({}, {"k_1": _ref(3, "k_1", (64, 32), 500, SCALE_DTYPE)})
    block = CopyBlock(rank_idx=1, meta_name="w", src_row_start=10, n_rows=6, dst_row_start=0,
                      dst_col_start=0, n_cols=32, scale=layout)
    assert scale_range(block, scales=scales) == expected
    tensors = ({}, {"w": _ref(1, "w", (64, 32), 0, FP8_DTYPE)})
    assert block_range(block, tensors=tensors, src_dtype=FP8_DTYPE).n_bytes == 6 * 32
