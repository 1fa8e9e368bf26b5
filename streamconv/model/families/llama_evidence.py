"""The evidence rules that tell LLaMA 1, 2, Code Llama and 3.0-3.3 apart (model/family_rules.py
runs them and weighs what they say).

Each rule looks at one fact (the tokenizer's format, a tensor name, a params.json value, the
embedding's shape) and says which families are consistent with it. The facts behind each rule,
per release and with sources, are in docs/releases.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from streamconv.model.families.names import (
    EVIDENCE_FAMILIES,
    LLAMA3_FAMILIES,
    SCALED_ROPE_FAMILIES,
    SENTENCEPIECE_FAMILIES,
    Family,
)
from streamconv.model.family_rules import Evidence, Facts

ALL_FAMILIES: frozenset[str] = EVIDENCE_FAMILIES
LLAMA3_VOCAB = 128256
CODE_LLAMA_VOCAB = 32016  # LLaMA 2's 32000 pieces + 16 for infilling (7B/13B and the 70Bs)


def _set(*families: Family) -> frozenset[str]:
    return frozenset(families)


def llama_rules(facts: Facts) -> Iterable[Evidence]:
    if facts.tokenizer_kind == "tiktoken":
        yield Evidence("tokenizer.model is a tiktoken file", LLAMA3_FAMILIES)
    elif facts.tokenizer_kind == "sentencepiece":
        yield Evidence("tokenizer.model is a SentencePiece model", SENTENCEPIECE_FAMILIES)
    if facts.vocab_size == LLAMA3_VOCAB:
        yield Evidence(f"vocabulary of {LLAMA3_VOCAB}", LLAMA3_FAMILIES)
    elif facts.vocab_size == CODE_LLAMA_VOCAB:
        yield Evidence(f"vocabulary of {CODE_LLAMA_VOCAB} (infilling pieces)",
                       _set(Family.CODE_LLAMA))
    elif facts.vocab_size == 32000:
        yield Evidence("vocabulary of 32000", SENTENCEPIECE_FAMILIES)
        if facts.rope_theta in (None, 10000.0):
            # Every Code Llama differs in one of the two: 32000 pieces come with rope_theta 1e6
            # (Python, 34B), rope_theta 10000 with 32016 pieces (70B Python / Instruct).
            yield Evidence("rope_theta 10000 with 32000 pieces (no Code Llama has both)",
                           _set(Family.LLAMA1, Family.LLAMA2))
    if facts.embedding_split_by_vocab is True:
        yield Evidence("embedding split across rank files by vocabulary rows", LLAMA3_FAMILIES)
    elif facts.embedding_split_by_vocab is False:
        yield Evidence("embedding split across rank files by hidden columns",
                       SENTENCEPIECE_FAMILIES)
    yield from _rope_rules(facts)
    if facts.rope_freqs == "per-layer":
        yield Evidence("rotary frequencies stored in every layer (LLaMA 1 files)",
                       _set(Family.LLAMA1))
    elif facts.rope_freqs == "top":
        yield Evidence("rotary frequencies stored once, outside the layers (LLaMA 2 files; "
                       "LLaMA 1 has them in every layer)", ALL_FAMILIES - {Family.LLAMA1})
    if facts.has_n_kv_heads:
        yield Evidence("params.json has n_kv_heads", ALL_FAMILIES - {Family.LLAMA1})
    if facts.norm_eps == 1e-6:
        # Weak: Llama 2 7B-chat first shipped with 1e-6 too.
        yield Evidence("norm_eps 1e-6 (LLaMA 1 7B-33B)", _set(Family.LLAMA1), strong=False)
    if facts.output_tied:
        yield Evidence("output matrix absent or equal to the embedding (tied)",
                       ALL_FAMILIES - (LLAMA3_FAMILIES - {Family.LLAMA3_2}))
    else:
        yield Evidence("output matrix differs from the embedding",
                       ALL_FAMILIES - {Family.LLAMA3_2})


def _rope_rules(facts: Facts) -> Iterable[Evidence]:
    theta = facts.rope_theta
    if theta == 500000.0:
        yield Evidence("rope_theta 500000", LLAMA3_FAMILIES)
    elif theta == 1e6:
        yield Evidence("rope_theta 1e6 (Code Llama's long-context fine-tune)",
                       _set(Family.CODE_LLAMA))
    elif theta is None or theta == 10000.0:
        yield Evidence("rope_theta 10000" if theta else "no rope_theta (10000)",
                       SENTENCEPIECE_FAMILIES)
    if facts.use_scaled_rope:
        yield Evidence("use_scaled_rope", SCALED_ROPE_FAMILIES)
    else:
        yield Evidence("no use_scaled_rope", ALL_FAMILIES - SCALED_ROPE_FAMILIES)
