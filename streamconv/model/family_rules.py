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

from streamconv.model.families.registry import describe, evidence_candidates


@dataclass(frozen=True)
class Evidence:
    fact: str
    families: frozenset[str]  # family keys
    strong: bool = True


@dataclass(frozen=True)
class FamilyVerdict:
    family: str  # the family's key
    fired: tuple[str, ...]
    conflicts: tuple[str, ...] = ()
    alternatives: tuple[str, ...] = field(default=())

    @property
    def summary(self) -> str:
        text = "; ".join(self.fired)
        if self.alternatives:
            labels = ", ".join(describe(f).label for f in self.alternatives)
            text += f" ({labels} would fit too)"
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
    """Every rule set the candidate families name (LLaMA 1-3.x share one), each run once."""
    seen = []
    for description in evidence_candidates():
        if description.evidence is not None and description.evidence not in seen:
            seen.append(description.evidence)
            yield from description.evidence(facts)


def decide_family(facts: Facts) -> FamilyVerdict:
    """The family every strong rule allows, narrowed by the weak ones that agree."""
    candidates = {d.key for d in evidence_candidates()}
    fired: list[str] = []
    conflicts: list[str] = []
    evidence = list(_rules(facts))
    for item in sorted(evidence, key=lambda e: not e.strong):
        narrowed = candidates & item.families
        if narrowed:
            candidates = narrowed
            fired.append(item.fact)
        else:
            against = ", ".join(describe(f).label for f in _ordered(candidates))
            conflicts.append(f"{item.fact} points away from {against}; ignored")
    ordered = _ordered(candidates)
    return FamilyVerdict(ordered[0], tuple(fired), tuple(conflicts),
                         tuple(f for f in ordered[1:] if not _same_config(ordered[0], f)))


def _ordered(families: Iterable[str]) -> list[str]:
    """Most likely first where the evidence cannot tell them apart: each candidate's
    evidence_rank (every candidate has one, so none can be missing from the order)."""
    return sorted(families, key=lambda key: describe(key).evidence_rank or 0)


def _same_config(a: str, b: str) -> bool:
    return describe(a).same_config_as == b or describe(b).same_config_as == a


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
