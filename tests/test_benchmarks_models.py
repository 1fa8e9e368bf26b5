"""The benchmark's Llama 3.2 Vision 90B slices (issue 20): real widths, 8 rank files, one
cross-attention layer and the full vision tower; every --budgets and the O_DIRECT copy floor."""

from __future__ import annotations

import math

from benchmarks.models import resolve_models
from benchmarks.run import plan_runs
from fixtures.llama32_vision_checkpoint import rank_shapes


def test_vision90_slices_have_90b_widths_and_8_rank_files() -> None:
    l1, l2 = resolve_models("vision90")
    assert (l1.key, l2.key) == ("vision90-l1", "vision90-l2")
    for model, n_layers in ((l1, 1), (l2, 2)):
        spec = model.spec
        assert (spec.dim, spec.n_heads, spec.n_kv_heads, spec.ffn_dim, spec.vocab_size) == (
            8192, 64, 8, 28672, 128256)
        assert (spec.n_layers, spec.n_cross, spec.n_ranks) == (n_layers, 1, 8)
        assert (spec.local_layers, spec.global_layers, spec.vision_width) == (32, 8, 1280)
        shapes = rank_shapes(spec)
        assert model.shard_bytes == [sum(math.prod(s) for s in shapes.values()) * 2] * 8
        assert model.slice_of == "vision90" and model.peer_version is None
    # One text layer of 90B adds ~1.6 GiB over 8 rank files.
    assert 1.5 < (l2.checkpoint_bytes - l1.checkpoint_bytes) / 2**30 < 1.7


def test_vision90_slices_get_every_budget_and_the_copy_floor() -> None:
    runs = plan_runs(resolve_models("vision90-l1"), reference="7b", budgets=["1G", "2G"],
                     other_budget="2G", runners={"streamconv", "floor", "peer"})
    assert [(r.runner, r.budget) for r in runs] == [
        ("floor-copy", None), ("streamconv", "1G"), ("streamconv", "2G")]
