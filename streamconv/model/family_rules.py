"""Which family a checkpoint belongs to, from every piece of evidence at hand, and how sure.

Each rule looks at one fact (the tokenizer's format, a tensor name, a params.json value, the
embedding's shape) and says which families are consistent with it. The family is the one every
strong rule agrees on; weak rules narrow the choice only where they do not contradict the strong
ones, and a contradiction is reported, never silently resolved. `plan` prints every rule that
fired. The facts behind each rule, per release and with sources, are in docs/releases.md;
tests/test_release_matrix.py runs every release through these rules.

Why no single value decides LLaMA 1 vs 2: LLaMA 1 65B has norm_eps 1e-5 like LLaMA 2, and
Llama 2 7B-chat first shipped with norm_eps 1e-6 like LLaMA 1 7B-33B (meta-llama/llama issue
771). The tensor names tell them apart in every size: LLaMA 1 files carry a
`layers.N.attention.inner_attention.rope.freqs` per layer, LLaMA 2 one top-level `rope.freqs`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from streamconv.model.family import (
    LLAMA3_FAMILIES,
    SCALED_ROPE_FAMILIES,
    SENTENCEPIECE_FAMILIES,
    Family,
)

# Llama 4 is told apart by its params.json before these rules run (model/llama4.py), so it is
# never a candidate here.
ALL_FAMILIES = frozenset(Family) - {Family.LLAMA4}
LLAMA3_VOCAB = 128256
CODE_LLAMA_VOCAB = 32016  # LLaMA 2's 32000 pieces + 16 for infilling (7B/13B and the 70Bs)
# Preference among families the evidence cannot tell apart: 3.3 has 3.1's architecture and
# config (docs/releases.md), and LLaMA 2 is the likelier of 1/2 once no rule separates them.
# Every family is listed (tests/test_family_rules.py checks it): a missing one crashed _ordered.
_PREFERENCE = (Family.LLAMA2, Family.CODE_LLAMA, Family.LLAMA1, Family.LLAMA3_1, Family.LLAMA3_2,
               Family.LLAMA3, Family.LLAMA3_3, Family.LLAMA4)


@dataclass(frozen=True)
class Evidence:
    fact: str
    families: frozenset[Family]
    strong: bool = True


@dataclass(frozen=True)
class FamilyVerdict:
    family: Family
    fired: tuple[str, ...]
    conflicts: tuple[str, ...] = ()
    alternatives: tuple[Family, ...] = field(default=())

    @property
    def summary(self) -> str:
        text = "; ".join(self.fired)
        if self.alternatives:
            text += " (" + ", ".join(f.label for f in self.alternatives) + " would fit too)"
        return text


@dataclass(frozen=True)
class Facts:
    """What the rules look at, gathered by detect.py before any rule runs."""

    tokenizer_kind: str | None
    vocab_size: int
    embedding_split_by_vocab: bool | None  # None: one shard, nothing to tell
    rope_theta: float | None
    use_scaled_rope: bool
    norm_eps: float
    has_n_kv_heads: bool
    rope_freqs: str  # where the rank files carry rotary frequencies: per-layer, top or none
    output_tied: bool


def _rules(facts: Facts) -> Iterable[Evidence]:
    if facts.tokenizer_kind == "tiktoken":
        yield Evidence("tokenizer.model is a tiktoken file", LLAMA3_FAMILIES)
    elif facts.tokenizer_kind == "sentencepiece":
        yield Evidence("tokenizer.model is a SentencePiece model", SENTENCEPIECE_FAMILIES)
    if facts.vocab_size == LLAMA3_VOCAB:
        yield Evidence(f"vocabulary of {LLAMA3_VOCAB}", LLAMA3_FAMILIES)
    elif facts.vocab_size == CODE_LLAMA_VOCAB:
        yield Evidence(f"vocabulary of {CODE_LLAMA_VOCAB} (infilling pieces)",
                       frozenset({Family.CODE_LLAMA}))
    elif facts.vocab_size == 32000:
        yield Evidence("vocabulary of 32000", SENTENCEPIECE_FAMILIES)
        if facts.rope_theta in (None, 10000.0):
            # Every Code Llama differs in one of the two: 32000 pieces come with rope_theta 1e6
            # (Python, 34B), rope_theta 10000 with 32016 pieces (70B Python / Instruct).
            yield Evidence("rope_theta 10000 with 32000 pieces (no Code Llama has both)",
                           frozenset({Family.LLAMA1, Family.LLAMA2}))
    if facts.embedding_split_by_vocab is True:
        yield Evidence("embedding split across shards by vocabulary rows", LLAMA3_FAMILIES)
    elif facts.embedding_split_by_vocab is False:
        yield Evidence("embedding split across shards by hidden columns", SENTENCEPIECE_FAMILIES)
    yield from _rope_rules(facts)
    if facts.rope_freqs == "per-layer":
        yield Evidence("rotary frequencies stored in every layer (LLaMA 1 files)",
                       frozenset({Family.LLAMA1}))
    elif facts.rope_freqs == "top":
        yield Evidence("rotary frequencies stored once, outside the layers (LLaMA 2 files; "
                       "LLaMA 1 has them in every layer)", ALL_FAMILIES - {Family.LLAMA1})
    if facts.has_n_kv_heads:
        yield Evidence("params.json has n_kv_heads", ALL_FAMILIES - {Family.LLAMA1})
    if facts.norm_eps == 1e-6:
        # Weak: Llama 2 7B-chat first shipped with 1e-6 too.
        yield Evidence("norm_eps 1e-6 (LLaMA 1 7B-33B)", frozenset({Family.LLAMA1}), strong=False)
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
                       frozenset({Family.CODE_LLAMA}))
    elif theta is None or theta == 10000.0:
        yield Evidence("rope_theta 10000" if theta else "no rope_theta (10000)",
                       SENTENCEPIECE_FAMILIES)
    if facts.use_scaled_rope:
        yield Evidence("use_scaled_rope", SCALED_ROPE_FAMILIES)
    else:
        yield Evidence("no use_scaled_rope", ALL_FAMILIES - SCALED_ROPE_FAMILIES)


def decide_family(facts: Facts) -> FamilyVerdict:
    """The family every strong rule allows, narrowed by the weak ones that agree."""
    candidates = set(ALL_FAMILIES)
    fired: list[str] = []
    conflicts: list[str] = []
    evidence = list(_rules(facts))
    for item in sorted(evidence, key=lambda e: not e.strong):
        narrowed = candidates & item.families
        if narrowed:
            candidates = narrowed
            fired.append(item.fact)
        else:
            against = ", ".join(f.label for f in _ordered(candidates))
            conflicts.append(f"{item.fact} points away from {against}; ignored")
    ordered = _ordered(candidates)
    return FamilyVerdict(ordered[0], tuple(fired), tuple(conflicts),
                         tuple(f for f in ordered[1:] if not _same_config(ordered[0], f)))


def _ordered(families: Iterable[Family]) -> list[Family]:
    return sorted(families, key=_PREFERENCE.index)


def _same_config(a: Family, b: Family) -> bool:
    return {a, b} == {Family.LLAMA3_1, Family.LLAMA3_3}


# Words in Meta's folder names for the chat models: llama-2-7b-chat, CodeLlama-7b-Instruct,
# Meta-Llama-3-8B-Instruct, Llama3.1-8B-Instruct, and the safety classifiers Llama-Guard-3-*,
# which use the chat format and eos ids (docs/releases.md).
_CHAT_WORDS = frozenset({"chat", "instruct", "guard"})
_HUB_SUBFOLDERS = frozenset({"original", "mp8", "mp16"})


def instruct_from_folder(input_dir: Path) -> tuple[bool, str]:
    """Base or chat model, from the folder's name: nothing in the files tells them apart."""
    folder = input_dir.resolve()
    while folder.name.lower() in _HUB_SUBFOLDERS and folder.parent != folder:
        folder = folder.parent
    words = {w for w in re.split(r"[^a-z]+", folder.name.lower()) if w}
    found = sorted(words & _CHAT_WORDS)
    if found:
        return True, (f"folder name {folder.name!r} contains {found[0]!r} (pass --base if it is "
                      "a base model)")
    return False, (f"folder name {folder.name!r} says nothing of chat or instruct (pass "
                   "--instruct for a chat model)")
