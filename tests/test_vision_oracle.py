"""The Llama 3.2 Vision oracle, validated before streamconv converts Vision (issue 20).

Meta's own CrossAttentionTransformer writes a checkpoint at MP 1, 2 and 8 and computes logits
(tests/vision_reference.py); transformers 4.47.1's convert_mllama_weights_to_hf.py converts it
(tests/mllama_transformers_script.py); transformers 5.25 runs the result
(tests/vision_oracle.py). Nobody on this team wrote any of the three, so agreement shows the
harness (inputs, masks, token order, tolerances, the intermediate-layer workaround) is right,
and the later converter test is `run_meta_reference` + convert + `compare_with_hf`.

The rank-file test reads what Meta's model saved and checks the split facts of
docs/llama32_vision_facts.md section 2 against it: the runner fills every MP size from the same
seeded full tensors, so the MP N rank files, joined on the observed axis, must equal the MP1
file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from mllama_transformers_script import convert_with_mllama_script
from mllama_transformers_script import missing_reason as script_missing
from vision_oracle import ATOL, compare_with_hf
from vision_reference import MetaVisionReference, run_meta_reference
from vision_reference import missing_reason as meta_missing

pytestmark = pytest.mark.oracle(meta_missing())
MP_SIZES = [1, 2, pytest.param(8, marks=pytest.mark.slow)]

Run = tuple[Path, MetaVisionReference]


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Run]:
    """mp -> (checkpoint Meta's model wrote, what it computed), once per module."""
    cache: dict[int, Run] = {}

    def run(mp: int) -> Run:
        if mp not in cache:
            cache[mp] = run_meta_reference(tmp_path_factory.mktemp(f"meta{mp}"), mp=mp)
        return cache[mp]

    return run


@pytest.fixture(scope="module")
def script_output(meta_run: Callable[[int], Run],
                  tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """mp -> the folder transformers' own script converted from Meta's MP `mp` files."""
    cache: dict[int, Path] = {}

    def convert(mp: int) -> Path:
        if mp not in cache:
            ckpt_dir, reference = meta_run(mp)
            out = tmp_path_factory.mktemp(f"script{mp}") / "hf"
            cache[mp] = convert_with_mllama_script(ckpt_dir, out, vision=reference.vision)
        return cache[mp]

    return convert


def _load(path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(path, weights_only=True, map_location="cpu")
    return state


@pytest.mark.oracle(script_missing())
@pytest.mark.parametrize("mp", MP_SIZES)
def test_script_output_matches_meta(mp: int, meta_run: Callable[[int], Run],
                                    script_output: Callable[[int], Path]) -> None:
    _, reference = meta_run(mp)
    # The image path must matter, or the image comparison would prove nothing.
    assert (reference.image_logits[0, 1:] - reference.text_logits[0]).abs().max() > 0.1
    comparison = compare_with_hf(script_output(mp), reference)
    comparison.assert_close()


@pytest.mark.oracle(script_missing())
def test_unshifted_intermediate_layers_are_caught(
        meta_run: Callable[[int], Run], script_output: Callable[[int], Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the workaround for transformers' one-layer-late intermediate features, the
    oracle fails: the comparison is sharp enough to see a one-layer shift in the tower."""
    import vision_oracle

    monkeypatch.setattr(vision_oracle, "SHIFTED_INTERMEDIATE_SINCE", (10**6, 0))
    comparison = compare_with_hf(script_output(1), meta_run(1)[1])
    assert not comparison.shifted_intermediate_layers
    assert comparison.text_logits.max_abs <= ATOL  # text-only never reads the tower
    assert comparison.vision_tokens.max_rel > 0.05
    assert comparison.image_logits.max_abs > 100 * ATOL


# Split facts from docs/llama32_vision_facts.md section 2 that Meta's files must show.
SPLIT_FACTS = {
    "text_model.learnable_embedding.weight": 0,
    "vision_model.vision_projection.bias": 0,
    "vision_model.vision_encoder.transformer.resblocks.0.mlp.c_fc.bias": 0,
    "vision_model.vision_encoder.transformer.resblocks.0.mlp.c_proj.bias": None,
    "vision_model.vision_encoder.transformer.resblocks.0.mlp.c_proj.weight": 1,
    "vision_model.vision_encoder.conv1._linear.weight": 0,
    "text_model.cross_attention_layers.0.attention.wo.weight": 1,
    "text_model.cross_attention_layers.0.gate_attn": None,
    "text_model.tok_embeddings.weight": 0,
}


def _split_axis(parts: list[torch.Tensor], whole: torch.Tensor) -> int | None:
    """The axis the rank tensors join on to give `whole`; None when each rank holds it whole."""
    if all(part.shape == whole.shape for part in parts):
        assert all(torch.equal(part, whole) for part in parts)
        return None
    for axis in range(whole.ndim):
        joined = torch.cat(parts, dim=axis)
        if joined.shape == whole.shape and torch.equal(joined, whole):
            return axis
    raise AssertionError(f"rank shapes {[tuple(p.shape) for p in parts]} do not join to "
                         f"{tuple(whole.shape)}")


@pytest.mark.parametrize("mp", [2, pytest.param(8, marks=pytest.mark.slow)])
def test_rank_files_split_as_fairscale_says(mp: int, meta_run: Callable[[int], Run]) -> None:
    whole = _load(meta_run(1)[0] / "consolidated.00.pth")
    ckpt_dir = meta_run(mp)[0]
    ranks = [_load(ckpt_dir / f"consolidated.{rank:02d}.pth") for rank in range(mp)]
    assert all(set(rank) == set(whole) for rank in ranks)
    assert all(tensor.dtype == torch.bfloat16 for tensor in whole.values())
    axes = {key: _split_axis([rank[key] for rank in ranks], whole[key]) for key in whole}
    for key, axis in SPLIT_FACTS.items():
        assert axes[key] == axis, f"{key}: joins on {axes[key]}, the facts doc says {axis}"
    # learnable_embedding has max(MP, 8) rows: one per rank at MP8, as the facts doc says.
    assert ranks[-1]["text_model.learnable_embedding.weight"].shape[0] == 8 // mp
