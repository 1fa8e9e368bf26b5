"""Meta's own Llama 4 code (llama-models 0.3.0) runs on the tiny checkpoints of
fixtures/llama4_checkpoint.py, and the fixture shards like Meta's release.

The MP1 vs MP8 comparison is the proof of the second claim: the MP8 files go through Meta's
`checkpoint.maybe_reshard_state_dict` (its merge of the 8 release files), the MP1 file is loaded
as is, and both must give the same logits. A fixture that split any tensor differently from
Meta's merge (the fused wqkv per rank, stacked w1/w3 in fc1_weight, experts split on F and
flattened, row vs column layers) would give other logits; test_wrong_split_is_detected shows
the comparison sees such a mistake.

Meta's reference needs .venv-meta (scripts/make_meta_env.sh, ~2 minutes to build); every test
that runs it skips with the reason when that venv is missing. The fact checks at the bottom need
only torch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from llama4_reference import missing_reason, run_meta_reference

from fixtures import llama4_checkpoint
from fixtures.llama4_checkpoint import (
    BATCH,
    SEQ_LEN,
    Llama4Spec,
    MetaTensor,
    VisionSpec,
    batch_image_positions,
    dense_hidden_dim,
    fixed_image,
    fixed_tokens,
    maverick_like,
    moe_hidden_dim,
    rank_shapes,
    scout_like,
    write_llama4_checkpoint,
)

needs_meta = pytest.mark.oracle(missing_reason())




def _expected_layers(spec: Llama4Spec) -> dict[str, list[int]]:
    return {"moe_layers": [i for i in range(spec.n_layers) if spec.is_moe_layer(i)],
            "nope_layers": [i for i in range(spec.n_layers) if spec.is_nope_layer(i)]}


CASES = {
    # Every layer MoE, qk norm, Scout's scaled rope (factor 16, high_freq_factor 1 by default).
    "scout-like": scout_like(),
    # MoE on odd layers, dense fc1/fc2 on even ones, no qk norm, plain rope, vision tower.
    "maverick-like-vision": maverick_like(vision=VisionSpec()),
}


@needs_meta
@pytest.mark.parametrize("case_id", list(CASES))
def test_mp1_and_mp8_give_the_same_logits(case_id: str, tmp_path: Path) -> None:
    spec = CASES[case_id]
    mp1 = write_llama4_checkpoint(spec, tmp_path / "mp1")
    mp8 = write_llama4_checkpoint(replace(spec, n_ranks=8), tmp_path / "mp8")
    tokens = fixed_tokens(spec.vocab_size)
    kwargs = {}
    if spec.vision is not None:
        kwargs = {"image": fixed_image(spec.vision),
                  "image_positions": batch_image_positions(spec.vision)}
    one = run_meta_reference(mp1, tokens, **kwargs)
    eight = run_meta_reference(mp8, tokens, **kwargs)

    assert one.info["n_rank_files"] == 1 and eight.info["n_rank_files"] == 8
    for run in (one, eight):
        assert {k: run.info[k] for k in ("moe_layers", "nope_layers")} == _expected_layers(spec)
        assert run.info["param_dtype"] == "torch.float32"
    assert one.logits.shape == (BATCH, SEQ_LEN, spec.vocab_size)
    assert torch.isfinite(one.logits).all() and one.logits.abs().mean() > 0.1
    torch.testing.assert_close(eight.logits, one.logits, rtol=0, atol=1e-6)

    if spec.vision is not None:
        assert one.vision is not None and eight.vision is not None
        for precision in ("bf16", "fp32"):
            for stage, value in one.vision[precision].items():
                torch.testing.assert_close(eight.vision[precision][stage], value, rtol=0,
                                           atol=1e-6, msg=f"vision {precision} {stage}")
        assert one.image_logits is not None and eight.image_logits is not None
        torch.testing.assert_close(eight.image_logits, one.image_logits, rtol=0, atol=1e-6)
        # The image changed the logits at and after its positions (no silent no-op).
        assert (one.image_logits - one.logits).abs().max() > 0.1


@needs_meta
def test_reference_is_deterministic(tmp_path: Path) -> None:
    ckpt = write_llama4_checkpoint(scout_like(n_ranks=8), tmp_path / "mp8")
    tokens = fixed_tokens(scout_like().vocab_size)
    first = run_meta_reference(ckpt, tokens)
    second = run_meta_reference(ckpt, tokens)
    assert torch.equal(first.logits, second.logits)


@needs_meta
def test_nested_params_and_extra_state_load_like_the_plain_form(tmp_path: Path) -> None:
    """params.json under {"model": ...} and the io.BytesIO `_extra_state` entries of the
    release (both handled by transformers' converter) give the same model."""
    plain = write_llama4_checkpoint(scout_like(), tmp_path / "plain")
    odd = write_llama4_checkpoint(
        scout_like(n_ranks=8, nest_under_model=True, extra_state=True), tmp_path / "odd")
    tokens = fixed_tokens(scout_like().vocab_size)
    torch.testing.assert_close(run_meta_reference(odd, tokens).logits,
                               run_meta_reference(plain, tokens).logits, rtol=0, atol=1e-6)


@needs_meta
def test_wrong_split_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: MP8 files whose fused wqkv is cut as one plain column split (instead of
    each rank holding its own q, k and v rows) give other logits through Meta's merge."""
    spec = scout_like()
    right = write_llama4_checkpoint(spec, tmp_path / "mp1")
    real_rank_slice = llama4_checkpoint.rank_slice

    def plain_wqkv(spec: Llama4Spec, tensor: MetaTensor, full: torch.Tensor,
                   rank_idx: int) -> torch.Tensor:
        if tensor.layout == "wqkv":
            return full.chunk(spec.n_ranks, dim=0)[rank_idx]
        return real_rank_slice(spec, tensor, full, rank_idx)

    monkeypatch.setattr(llama4_checkpoint, "rank_slice", plain_wqkv)
    wrong = write_llama4_checkpoint(replace(spec, n_ranks=8), tmp_path / "mp8")
    tokens = fixed_tokens(spec.vocab_size)
    diff = (run_meta_reference(wrong, tokens).logits
            - run_meta_reference(right, tokens).logits).abs().max()
    assert diff > 0.05, f"a wrong wqkv split changed the logits by only {diff:.3e}"


@needs_meta
@pytest.mark.parametrize("changes", [
    {"attention_chunk_size": None},
    # floor_scale 4 instead of 8192 so the NoPE layers' temperature tuning acts within SEQ_LEN.
    {"extra_params": (("attn_temperature_tuning", True), ("floor_scale", 4.0))},
], ids=["no-chunked-attention", "temperature-tuning"])
def test_feature_changes_the_logits(changes: dict[str, object], tmp_path: Path) -> None:
    """At SEQ_LEN, chunked attention and temperature tuning change Meta's logits, so a
    converted config.json that loses either would be caught by a logits comparison."""
    tokens = fixed_tokens(scout_like().vocab_size)
    base = write_llama4_checkpoint(scout_like(), tmp_path / "base")
    changed = write_llama4_checkpoint(scout_like(**changes), tmp_path / "changed")
    diff = (run_meta_reference(base, tokens).logits
            - run_meta_reference(changed, tokens).logits).abs().max()
    assert diff > 0.05, f"{changes} changed the logits by only {diff:.3e}"


# --- fact checks of the fixture against published values (no .venv-meta needed) ---

# Scout's params as transformers' converter reads them and the published config.json implies
# (docs/llama4_facts.md): dim 5120, 40 heads, 8 kv heads, ffn_exp 4, multiple_of 2048,
# ffn_dim_multiplier 1.2, 16 experts.
_SCOUT = Llama4Spec(dim=5120, n_layers=1, n_heads=40, n_kv_heads=8, vocab_size=202048,
                    multiple_of=2048, ffn_dim_multiplier=1.2, ffn_exp=4.0, num_experts=16,
                    n_ranks=8,
                    vision=VisionSpec(image_size=336, patch_size=14, dim=1408, n_layers=1,
                                      n_heads=16, mlp_ratio=4.0, output_dim=4096))


def test_hidden_sizes_match_published_config() -> None:
    """Published Scout and Maverick config.json: intermediate_size 8192 (each expert and the
    shared expert) and intermediate_size_mlp 16384 (dense layers)."""
    assert moe_hidden_dim(_SCOUT) == 8192
    assert dense_hidden_dim(_SCOUT) == 16384


def test_real_scout_rank_shapes() -> None:
    """Per-rank shapes at MP8 that transformers' converter hard-codes: experts reshaped by
    (num_experts, -1, 8, 1024) from (E*D, F/8) and (8, -1, 5120) from (E*F/8, D); wqkv of
    (40 + 2*8) * 128 / 8 rows; vision parameter counts of the published model."""
    shapes = rank_shapes(_SCOUT)
    p = "layers.0."
    assert shapes[p + "attention.wqkv.weight"] == (896, 5120)
    assert shapes[p + "attention.wo.weight"] == (5120, 640)
    assert shapes[p + "feed_forward.experts.moe_w_in_eD_F"] == (16 * 5120, 1024)
    assert shapes[p + "feed_forward.experts.moe_w_swiglu_eD_F"] == (16 * 5120, 1024)
    assert shapes[p + "feed_forward.experts.moe_w_out_eF_D"] == (16 * 1024, 5120)
    assert shapes[p + "feed_forward.router_DE"] == (5120, 16)
    assert shapes[p + "feed_forward.w_in_shared_FD.weight"] == (1024, 5120)
    assert shapes[p + "feed_forward.w_out_shared_DF.weight"] == (5120, 1024)
    assert shapes["tok_embeddings.weight"] == (202048 // 8, 5120)
    enc = "vision_embeddings.vision_encoder."
    # Published parameter counts (x8 for split tensors): patch_embedding 827,904,
    # positional_embedding_vlm 812,416, adapter fc1 23,068,672, projector 20,971,520.
    assert 8 * torch.Size(shapes[enc + "conv1._linear.weight"]).numel() == 827904
    assert torch.Size(shapes[enc + "positional_embedding_vlm"]).numel() == 812416
    adapter_fc = shapes["vision_embeddings.vision_adapter.mlp.c_fc.weight"]
    assert 8 * torch.Size(adapter_fc).numel() == 23068672
    assert 8 * torch.Size(shapes["vision_projection.weight"]).numel() == 20971520


def test_real_maverick_rank_shapes() -> None:
    """Maverick at MP8: dense layers (even) carry fc1 = [w1; w3] per rank with the published
    intermediate_size_mlp 16384, MoE layers (odd) 128 experts of F 8192 as transformers'
    converter reshapes them ((num_experts, -1, 8, 1024) and (8, -1, 5120))."""
    maverick = replace(_SCOUT, n_layers=2, num_experts=128, interleave_moe_layer_step=2,
                       use_qk_norm=False, use_scaled_rope=False, vision=None)
    shapes = rank_shapes(maverick)
    assert shapes["layers.0.feed_forward.mlp.fc1_weight"] == (2 * 16384 // 8, 5120)
    assert shapes["layers.0.feed_forward.mlp.fc2_weight"] == (5120, 16384 // 8)
    assert "layers.0.feed_forward.router_DE" not in shapes
    assert shapes["layers.1.feed_forward.experts.moe_w_in_eD_F"] == (128 * 5120, 1024)
    assert shapes["layers.1.feed_forward.experts.moe_w_out_eF_D"] == (128 * 1024, 5120)
    assert shapes["layers.1.feed_forward.router_DE"] == (5120, 128)
