"""Pieces of tokenizer.json shared by the SentencePiece and tiktoken conversions.

Field names and shapes follow the `tokenizers` library's serialization, which
`tokenizers.Tokenizer.from_file` and transformers' fast tokenizers read.
"""

from __future__ import annotations

import json
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


def to_text(document: JsonDict) -> str:
    """``document`` as indented JSON, the tokenizer.json model's vocab and merges one entry a line.

    json.dumps with an indent runs the pure-Python encoder, 2-3 s on LLaMA 3's 128,256 vocab
    entries and 280,147 merges; rendering those two line by line with the C string escaper takes
    a tenth of that. The result parses to ``document``.
    """
    model = document.get("model")
    if not isinstance(model, dict) or "vocab" not in model:
        return json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    # Placeholders no JSON document of ours contains: a NUL is escaped inside any string.
    slots = {"vocab": "\x00vocab\x00", "merges": "\x00merges\x00"}
    text = json.dumps({**document, "model": {**model, **slots}}, ensure_ascii=False, indent=2)
    quote = json.encoder.encode_basestring  # JSON string literal, non-ASCII kept as is
    sep = ",\n      "
    vocab = sep.join([f"{quote(piece)}: {idx}" for piece, idx in model["vocab"].items()])
    merges = sep.join([f"[{quote(left)}, {quote(right)}]" for left, right in model["merges"]])
    for key, body, (opening, closing) in (("vocab", vocab, "{}"), ("merges", merges, "[]")):
        block = f"{opening}\n      {body}\n    {closing}" if body else opening + closing
        text = text.replace(json.dumps(slots[key]), block, 1)
    return text + "\n"
