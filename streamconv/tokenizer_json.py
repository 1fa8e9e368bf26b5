"""Pieces of tokenizer.json shared by the SentencePiece and tiktoken conversions.

Field names and shapes follow the `tokenizers` library's serialization, which
`tokenizers.Tokenizer.from_file` and transformers' fast tokenizers read.
"""

from __future__ import annotations

from typing import Any

JsonDict = dict[str, Any]


def added_token(idx: int, content: str, *, special: bool, normalized: bool) -> JsonDict:
    return {"id": idx, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": normalized, "special": special}


def bos_template(bos: str, bos_id: int) -> JsonDict:
    """A post-processor that puts BOS before each sequence, as LLaMA's tokenizers do."""

    def special(type_id: int) -> JsonDict:
        return {"SpecialToken": {"id": bos, "type_id": type_id}}

    def sequence(name: str, type_id: int) -> JsonDict:
        return {"Sequence": {"id": name, "type_id": type_id}}

    return {
        "type": "TemplateProcessing",
        "single": [special(0), sequence("A", 0)],
        "pair": [special(0), sequence("A", 0), special(1), sequence("B", 1)],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
