"""The family rules on facts alone: agreement, conflicts reported, and the cases no single
params value decides (docs/releases.md has the releases behind each case)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from streamconv.model.family import Family
from streamconv.model.family_rules import Facts, decide_family, instruct_from_folder

SPM = Facts(tokenizer_kind="sentencepiece", vocab_size=32000, embedding_split_by_vocab=None,
            rope_theta=None, use_scaled_rope=False, norm_eps=1e-5, has_n_kv_heads=False,
            rope_freqs="top", output_tied=False)
TIKTOKEN = Facts(tokenizer_kind="tiktoken", vocab_size=128256, embedding_split_by_vocab=True,
                 rope_theta=500000.0, use_scaled_rope=True, norm_eps=1e-5, has_n_kv_heads=True,
                 rope_freqs="none", output_tied=False)


@pytest.mark.parametrize(("facts", "family"), [
    (SPM, Family.LLAMA2),  # Llama 2 7B/13B: top-level rope.freqs, norm_eps 1e-5
    (replace(SPM, norm_eps=1e-6), Family.LLAMA2),  # 7B-chat as first shipped (norm_eps 1e-6)
    (replace(SPM, rope_freqs="per-layer", norm_eps=1e-5), Family.LLAMA1),  # LLaMA 1 65B
    (replace(SPM, rope_freqs="per-layer", norm_eps=1e-6), Family.LLAMA1),  # LLaMA 1 7B-33B
    (replace(SPM, rope_freqs="none", norm_eps=1e-6), Family.LLAMA1),  # no rope tensors
    (replace(SPM, rope_freqs="none"), Family.LLAMA2),
    (replace(SPM, vocab_size=32016, rope_theta=10000.0, has_n_kv_heads=True),
     Family.CODE_LLAMA),  # Code Llama 70B Python/Instruct
    (replace(SPM, rope_theta=1e6), Family.CODE_LLAMA),  # Code Llama Python (vocab 32000)
    (TIKTOKEN, Family.LLAMA3_1),
    (replace(TIKTOKEN, rope_freqs="top"), Family.LLAMA3_1),
    (replace(TIKTOKEN, output_tied=True), Family.LLAMA3_2),
    (replace(TIKTOKEN, use_scaled_rope=False), Family.LLAMA3),
])
def test_rules_pick_the_family(facts: Facts, family: Family) -> None:
    assert decide_family(facts).family is family


def test_llama2_shapes_leave_no_alternative() -> None:
    assert decide_family(SPM).alternatives == ()


def test_weak_rule_against_strong_evidence_is_reported_not_obeyed() -> None:
    verdict = decide_family(replace(SPM, norm_eps=1e-6))
    assert verdict.family is Family.LLAMA2
    assert any("norm_eps 1e-6" in c for c in verdict.conflicts)


def test_tiktoken_file_with_a_32000_row_embedding_is_a_conflict() -> None:
    verdict = decide_family(replace(TIKTOKEN, vocab_size=32000, embedding_split_by_vocab=None))
    assert verdict.family.is_llama3
    assert any("vocabulary of 32000" in c for c in verdict.conflicts)


def test_every_fired_rule_is_listed() -> None:
    verdict = decide_family(replace(SPM, rope_freqs="per-layer", norm_eps=1e-6))
    assert "in every layer" in verdict.summary and "norm_eps 1e-6" in verdict.summary
    assert not verdict.conflicts


@pytest.mark.parametrize(("path", "instruct"), [
    ("llama-2-7b-chat", True), ("llama-2-7b", False), ("CodeLlama-7b-Instruct", True),
    ("CodeLlama-7b-Python", False), ("Meta-Llama-3-8B-Instruct", True),
    ("Llama-3.1-405B-Instruct/original/mp16", True), ("Llama-3.1-405B/original/mp8", False),
    ("Llama-Guard-3-1B/original", True), ("7B", False),
])
def test_chat_models_from_folder_names(tmp_path: Path, path: str, instruct: bool) -> None:
    folder = tmp_path / path
    folder.mkdir(parents=True)
    assert instruct_from_folder(folder)[0] is instruct
