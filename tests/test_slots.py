"""planning/slots.py: the smallest budget is computed in one place, and it is exact: at that
budget the slots fit (one slot, one unit of work), one byte less is refused with that figure."""

from __future__ import annotations

import pytest

from streamconv.errors import BudgetError
from streamconv.model.family import Family
from streamconv.model.spec import ModelSpec
from streamconv.planning.encoding import Encoding
from streamconv.planning.jobs import plan_conversion
from streamconv.planning.layout import hf_layouts
from streamconv.planning.slots import choose_slots, smallest_budget
from streamconv.system import dtypes
from streamconv.system.memory import format_flag_size

BASELINE_BYTES = 300 << 20


def _spec(*, dtype: dtypes.DType = dtypes.BFLOAT16) -> ModelSpec:
    """LLaMA 2 7B's shapes (Meta's params.json: dim 4096, 32 heads, vocab 32000; ffn 11008 from
    multiple_of 256), two layers."""
    return ModelSpec(
        family=Family.LLAMA2, n_ranks=1, dtype=dtype, dim=4096, n_layers=2, n_heads=32,
        n_kv_heads=32, vocab_size=32000, ffn_dim=11008, norm_eps=1e-5, rope_theta=10000.0,
        rope_scaling=None, max_position_embeddings=4096, tie_word_embeddings=False,
        embedding_split_dim=1, bos_token_id=1)


@pytest.mark.parametrize("dst", [dtypes.BFLOAT16, dtypes.FLOAT32])
def test_smallest_budget_is_exact(dst: dtypes.DType) -> None:
    spec = _spec()
    layouts = hf_layouts(spec)
    encodings = {t.hf_name: Encoding(dst) for t in layouts}
    least = smallest_budget(layouts, encodings=encodings, baseline_bytes=BASELINE_BYTES)
    depth, out_cap = choose_slots(layouts, encodings=encodings, baseline_bytes=BASELINE_BYTES,
                                  budget=least)
    assert depth == 1
    # One unit of work: the widest row unit, whole heads of q/k (128 rows of 4096 columns).
    assert out_cap == 128 * 4096 * dst.itemsize
    with pytest.raises(BudgetError, match=f"use --max-ram {format_flag_size(least)} or more"):
        choose_slots(layouts, encodings=encodings, baseline_bytes=BASELINE_BYTES,
                     budget=least - 1)
    plan = plan_conversion(spec, layouts, dst_dtype=dst, budget_bytes=least,
                           baseline_bytes=BASELINE_BYTES, max_shard_bytes=5 << 30)
    assert plan.min_budget_bytes == least
    assert plan.predicted_peak_bytes <= least


def test_more_budget_more_slots() -> None:
    layouts = hf_layouts(_spec())
    encodings = {t.hf_name: Encoding(dtypes.BFLOAT16) for t in layouts}
    depths = [choose_slots(layouts, encodings=encodings, baseline_bytes=BASELINE_BYTES,
                           budget=budget)[0] for budget in (400 << 20, 1 << 30, 8 << 30)]
    assert depths == sorted(depths) and depths[-1] == 3
