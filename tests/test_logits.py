"""streamconv's output, run by transformers, must give the logits Meta's architecture gives.

Why logits and not a round trip: a wrong q/k permute and its wrong inverse cancel out, while
transformers' LlamaForCausalLM (rotates halves) and tests/meta_reference.py (rotates interleaved
pairs, straight on Meta's shards, no permute) only agree when the conversion is right. The
reference itself was checked against transformers 4.47.1's convert script
(tests/test_transformers_script.py::test_reference_matches_script_output).

Every case is converted with streamconv's CLI in-process, `--dtype fp32`, and compared at
ATOL. fp16 and fp32 inputs reach fp32 exactly, so any difference above float32 noise (measured
about 5e-6 on these logits, whose magnitude is about 4) is a conversion error.

Sequence length and LLaMA 3.1's scaled rope: rotary attention depends only on the distance
between two positions, so a long context cannot be imitated by shifting positions; what matters
is how far the sequence reaches. With rope_theta 500000 and head_dim 8 the tiny models have four
frequencies; apply_scaling keeps the two whose wavelength is under 2048 tokens, blends the one
at ~4443 tokens (factor-dependent) and divides the one at ~118000 tokens by the factor. Across the
SEQ_LEN = 512 positions used here, factor 8 and factor 32 give logits that differ by ~0.15 and
scaled/unscaled by more: see test_reference_tells_rope_scalings_apart, which proves these
comparisons can see a wrong or missing `rope_scaling` in config.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from meta_reference import meta_logits
from safetensors.torch import load_file

from fixtures.synthetic import SyntheticSpec, tiny, write_checkpoint
from streamconv.model.family import Family

ATOL = 1e-4
SEQ_LEN = 512
BATCH = 2


@dataclass(frozen=True)
class Case:
    case_id: str
    spec: SyntheticSpec
    # llama-models' apply_scaling factor: 32 for LLaMA 3.2 1B/3B, 8 otherwise.
    rope_scaling_factor: float = 8.0


# Logits tests need no tokenizer; synthetic tokenizers come from
# fixtures/synthetic_tokenizer.py, tested on their own.
def _spec(family: Family, **changes: object) -> SyntheticSpec:
    return tiny(family, with_tokenizer=False, **changes)


# 8 shards with real GQA need at least 8 kv heads: dim 128, 16 heads of 8, 8 kv heads.
_GQA8 = {"dim": 128, "n_heads": 16, "n_kv_heads": 8, "ffn_dim_multiplier": 1.3, "n_ranks": 8}

CASES = [
    Case("llama1-fp32-2shards", _spec(Family.LLAMA1, dtype="float32", n_ranks=2)),
    Case("llama1-fp16-in", _spec(Family.LLAMA1)),  # tiny LLaMA 1 default is float16
    Case("llama2-1shard", _spec(Family.LLAMA2)),
    Case("llama2-2shards-shared-storage", _spec(Family.LLAMA2, n_ranks=2, share_storage=True)),
    Case("gqa-70b-style-2shards",
         _spec(Family.LLAMA2, n_kv_heads=2, ffn_dim_multiplier=1.3, n_ranks=2)),
    Case("gqa-70b-style-8shards", _spec(Family.LLAMA2, **_GQA8)),
    Case("codellama-2shards", _spec(Family.CODE_LLAMA, n_ranks=2)),
    Case("llama3-2shards", _spec(Family.LLAMA3, n_ranks=2)),
    Case("llama3.1-1shard", _spec(Family.LLAMA3_1)),
    Case("llama3.1-405b-style-kv-copies", _spec(Family.LLAMA3_1, n_kv_heads=2, n_ranks=8)),
    Case("llama3.2-tied-1shard", _spec(Family.LLAMA3_2), rope_scaling_factor=32.0),
    Case("llama3.2-tied-2shards", _spec(Family.LLAMA3_2, n_ranks=2), rope_scaling_factor=32.0),
    Case("llama3.3-2shards", _spec(Family.LLAMA3_3, n_ranks=2)),
]


def _tokens(vocab_size: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (BATCH, SEQ_LEN), generator=gen)


def _convert(src: Path, dst: Path) -> None:
    # Imported here so a missing or broken CLI fails these tests one by one, with its error.
    from streamconv.cli.main import main

    # --no-tokenizer: these folders carry no tokenizer.model (see _spec).
    rc = main(["convert", str(src), str(dst), "--dtype", "fp32", "--max-ram", "2G", "--quiet",
               "--no-tokenizer"])
    assert rc == 0, f"streamconv convert exited {rc}"


def _hf_logits(dst: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(dst, dtype=torch.float32)  # in eval mode
    with torch.no_grad():
        logits: torch.Tensor = model(tokens).logits
    return logits


def _output_dtypes(dst: Path) -> set[torch.dtype]:
    return {tensor.dtype for path in dst.glob("*.safetensors")
            for tensor in load_file(path).values()}


@pytest.mark.parametrize("case", CASES, ids=[c.case_id for c in CASES])
def test_logits_match_meta_reference(case: Case, tmp_path: Path) -> None:
    src = write_checkpoint(case.spec, tmp_path / "meta")
    dst = tmp_path / "hf"
    _convert(src, dst)
    assert _output_dtypes(dst) == {torch.float32}, "--dtype fp32 must write float32 tensors only"

    tokens = _tokens(case.spec.vocab_size)
    hf = _hf_logits(dst, tokens)
    ref = meta_logits(src, tokens, rope_scaling_factor=case.rope_scaling_factor)
    assert hf.shape == ref.shape == (BATCH, SEQ_LEN, case.spec.vocab_size)
    diff = (hf - ref).abs().max().item()
    print(f"{case.case_id}: max abs logit diff {diff:.3e}")
    assert diff <= ATOL, f"{case.case_id}: max abs logit diff {diff:.3e} > {ATOL:g}"


def test_reference_tells_rope_scalings_apart(tmp_path: Path) -> None:
    """The logits comparisons above can see a wrong rope_scaling at SEQ_LEN.

    tiny() seeds weights by tensor name and rank, not by family, so the LLaMA 3 and 3.1 specs
    below hold identical weights and differ only in use_scaled_rope.
    """
    plain = write_checkpoint(_spec(Family.LLAMA3), tmp_path / "llama3")
    scaled = write_checkpoint(_spec(Family.LLAMA3_1), tmp_path / "llama3.1")
    tokens = _tokens(_spec(Family.LLAMA3).vocab_size)
    unscaled = meta_logits(plain, tokens)
    factor_8 = meta_logits(scaled, tokens, rope_scaling_factor=8.0)
    factor_32 = meta_logits(scaled, tokens, rope_scaling_factor=32.0)
    for label, a, b in [("unscaled vs 8", unscaled, factor_8), ("8 vs 32", factor_8, factor_32),
                        ("unscaled vs 32", unscaled, factor_32)]:
        diff = (a - b).abs().max().item()
        print(f"{label}: {diff:.3e}")
        assert diff > 100 * ATOL, f"{label}: logits differ by only {diff:.3e}"
