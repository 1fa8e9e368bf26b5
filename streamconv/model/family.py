"""The LLaMA families streamconv knows, and the per-family facts that are not in params.json.

Every value here is a fact about Meta's releases taken from a public source; docs/releases.md
lists the release matrix these come from, with the source of each fact, and
tests/test_release_matrix.py converts a checkpoint laid out like every release and compares the
written configs with the published ones.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Family(str, enum.Enum):
    LLAMA1 = "1"
    LLAMA2 = "2"
    CODE_LLAMA = "code"
    LLAMA3 = "3"
    LLAMA3_1 = "3.1"
    LLAMA3_2 = "3.2"
    LLAMA3_3 = "3.3"
    # Llama 4 (Scout, Maverick, Guard 4): a different architecture, told by its params.json
    # (moe_args / vision_args), never by the LLaMA 1-3 evidence rules.
    LLAMA4 = "4"

    @property
    def is_llama3(self) -> bool:
        return self in LLAMA3_FAMILIES

    @property
    def uses_tiktoken(self) -> bool:
        return self in LLAMA3_FAMILIES or self is Family.LLAMA4

    @property
    def label(self) -> str:
        if self is Family.LLAMA4:
            return "Llama 4"
        return "Code Llama" if self is Family.CODE_LLAMA else f"LLaMA {self.value}"

    @property
    def facts(self) -> FamilyFacts:
        return FACTS[self]


LLAMA3_FAMILIES = frozenset({Family.LLAMA3, Family.LLAMA3_1, Family.LLAMA3_2, Family.LLAMA3_3})
SENTENCEPIECE_FAMILIES = frozenset({Family.LLAMA1, Family.LLAMA2, Family.CODE_LLAMA})
SCALED_ROPE_FAMILIES = frozenset({Family.LLAMA3_1, Family.LLAMA3_2, Family.LLAMA3_3})

# Code Llama's long-context fine-tune uses rope_theta 1e6 and 16384 positions; the 70B Python and
# Instruct models went back to rope_theta 10000 and 4096 (a Meta maintainer in
# meta-llama/codellama issue 188; docs/releases.md).
CODE_LLAMA_LONG_THETA = 1e6


@dataclass(frozen=True)
class FamilyFacts:
    """What a family's published Hugging Face configs hold that params.json does not say."""

    context_length: int
    bos_token_id: int
    eos_token_id: int
    # generation_config.json of the base and of the chat models, without bos/eos.
    base_generation: tuple[tuple[str, Any], ...]
    instruct_generation: tuple[tuple[str, Any], ...]
    # eos ids of the chat models (config.json and generation_config.json); None: the base eos.
    instruct_eos: tuple[int, ...] | None = None
    # config.json's eos_token_id of the chat models, where it differs from generation's list.
    instruct_config_eos: int | None = None
    rope_scaling_factor: float | None = None


# Llama-2-7b-hf's published generation_config.json (docs/releases.md: llama-2-7b).
_LLAMA2_GENERATION = (("do_sample", True), ("max_length", 4096), ("pad_token_id", 0),
                      ("temperature", 0.6), ("top_p", 0.9))
# Meta-Llama-3-8B-Instruct's and Llama-3.1-8B-Instruct's published generation_config.json.
_LLAMA3_CHAT_GENERATION = (("do_sample", True), ("max_length", 4096), ("temperature", 0.6),
                           ("top_p", 0.9))
_LLAMA31_GENERATION = (("do_sample", True), ("temperature", 0.6), ("top_p", 0.9))
_LLAMA31_CHAT_EOS = (128001, 128008, 128009)  # <|end_of_text|>, <|eom_id|>, <|eot_id|>

FACTS: dict[Family, FamilyFacts] = {
    # LLaMA 1 has no Meta Hugging Face repo: transformers' convert script's values (context 2048)
    # and the minimal generation config GenerationConfig.from_model_config gives.
    Family.LLAMA1: FamilyFacts(context_length=2048, bos_token_id=1, eos_token_id=2,
                               base_generation=(), instruct_generation=()),
    Family.LLAMA2: FamilyFacts(context_length=4096, bos_token_id=1, eos_token_id=2,
                               base_generation=_LLAMA2_GENERATION,
                               instruct_generation=_LLAMA2_GENERATION),
    # 16384 for rope_theta 1e6, else 4096: see context_length().
    Family.CODE_LLAMA: FamilyFacts(context_length=16384, bos_token_id=1, eos_token_id=2,
                                   base_generation=(), instruct_generation=()),
    Family.LLAMA3: FamilyFacts(context_length=8192, bos_token_id=128000, eos_token_id=128001,
                               base_generation=(), instruct_generation=_LLAMA3_CHAT_GENERATION,
                               instruct_eos=(128001, 128009), instruct_config_eos=128009),
    Family.LLAMA3_1: FamilyFacts(context_length=131072, bos_token_id=128000,
                                 eos_token_id=128001, base_generation=_LLAMA31_GENERATION,
                                 instruct_generation=_LLAMA31_GENERATION,
                                 instruct_eos=_LLAMA31_CHAT_EOS, rope_scaling_factor=8.0),
    Family.LLAMA3_2: FamilyFacts(context_length=131072, bos_token_id=128000,
                                 eos_token_id=128001, base_generation=_LLAMA31_GENERATION,
                                 instruct_generation=_LLAMA31_GENERATION,
                                 instruct_eos=_LLAMA31_CHAT_EOS, rope_scaling_factor=32.0),
    Family.LLAMA3_3: FamilyFacts(context_length=131072, bos_token_id=128000,
                                 eos_token_id=128001, base_generation=_LLAMA31_GENERATION,
                                 instruct_generation=_LLAMA31_GENERATION,
                                 instruct_eos=_LLAMA31_CHAT_EOS, rope_scaling_factor=8.0),
    # transformers' convert_llama4_weights_to_hf.py: base context 256K, bos 200000, eos 200001;
    # Instruct generation_config do_sample/temperature 0.6/top_p 0.9 and the three stop tokens
    # of llama-models' llama4/tokenizer.py (docs/llama4_facts.md sections 4 and 5). The
    # variant-specific values (Instruct context) are in model/llama4.py.
    Family.LLAMA4: FamilyFacts(context_length=262144, bos_token_id=200000, eos_token_id=200001,
                               base_generation=(), instruct_generation=_LLAMA31_GENERATION,
                               instruct_eos=(200001, 200007, 200008)),
}


def context_length(family: Family, *, rope_theta: float) -> int:
    if family is Family.CODE_LLAMA and rope_theta != CODE_LLAMA_LONG_THETA:
        return FACTS[Family.LLAMA2].context_length
    return FACTS[family].context_length


def rope_scaling(family: Family, *, use_scaled_rope: bool) -> dict[str, Any] | None:
    """LLaMA 3.1+'s frequency scaling as Hugging Face writes it (rope_type llama3)."""
    factor = FACTS[family].rope_scaling_factor
    if factor is None or not use_scaled_rope:
        return None
    return {"factor": factor, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"}


def eos_token_ids(family: Family, *, bos_token_id: int, instruct: bool,
                  for_config: bool) -> int | list[int]:
    """The published eos ids, moved along with bos: tiktoken's special tokens follow the ranks,
    so a smaller (test) vocabulary shifts them all alike."""
    facts = FACTS[family]
    shift = bos_token_id - facts.bos_token_id
    if not instruct or facts.instruct_eos is None:
        return facts.eos_token_id + shift
    if for_config and facts.instruct_config_eos is not None:
        return facts.instruct_config_eos + shift
    return [eos + shift for eos in facts.instruct_eos]


def generation_defaults(family: Family, *, instruct: bool) -> dict[str, Any]:
    facts = FACTS[family]
    return dict(facts.instruct_generation if instruct else facts.base_generation)
