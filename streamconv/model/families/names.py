"""The keys of the built-in families (ModelSpec.family, --llama-version's values).

A key is only a name: everything known about the family is in its description
(families/llama.py, families/llama4.py, families/llama32_vision.py), looked up with
registry.describe. Family is a str enum so a family registered elsewhere (a test's toy family)
can use a plain string key.
"""

from __future__ import annotations

import enum


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
    # Llama 3.2 Vision (11B, 90B, Guard 3 11B Vision): told by vision_chunk_size > 0.
    LLAMA3_2_VISION = "3.2-vision"

    @property
    def is_llama3(self) -> bool:
        return self in LLAMA3_FAMILIES

    @property
    def uses_tiktoken(self) -> bool:
        from streamconv.model.families.registry import describe

        return describe(self).tokenizer.kind == "tiktoken"

    @property
    def label(self) -> str:
        from streamconv.model.families.registry import describe

        return describe(self).label


LLAMA3_FAMILIES = frozenset({Family.LLAMA3, Family.LLAMA3_1, Family.LLAMA3_2, Family.LLAMA3_3})
SENTENCEPIECE_FAMILIES = frozenset({Family.LLAMA1, Family.LLAMA2, Family.CODE_LLAMA})
SCALED_ROPE_FAMILIES = frozenset({Family.LLAMA3_1, Family.LLAMA3_2, Family.LLAMA3_3})
# The families the LLaMA 1-3 evidence rules choose among (Llama 4 is recognised before them).
EVIDENCE_FAMILIES = SENTENCEPIECE_FAMILIES | LLAMA3_FAMILIES
