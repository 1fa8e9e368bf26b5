"""Pieces of tokenizer.json shared by the SentencePiece and tiktoken conversions.

Field names and shapes follow the `tokenizers` library's serialization, which
`tokenizers.Tokenizer.from_file` and transformers' fast tokenizers read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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


@dataclass(frozen=True)
class IndexedMerges:
    """A merge list as two arrays of vocab ids into ``pieces``, so that ``to_text`` writes it
    without building a Python pair per merge (LLaMA 3 has 280,147)."""

    pieces: Sequence[str]  # vocab entries by id
    left: Any  # numpy integer arrays of equal length
    right: Any

    def pairs(self) -> list[list[str]]:
        """The merges as tokenizers' JSON has them: [left piece, right piece] each."""
        return [[self.pieces[a], self.pieces[b]]
                for a, b in zip(self.left.tolist(), self.right.tolist(), strict=True)]


_ENTRY_SEP = ",\n      "


def _rows(columns: Sequence[Sequence[str]], joints: Sequence[str], *, prefix: str = "") -> str:
    """One line per row i: prefix + columns[0][i] + joints[0] + columns[1][i] + joints[1] + ...,
    lines joined by _ENTRY_SEP.

    One str.join over a list filled by slice assignment: a few C passes instead of a formatted
    string per row."""
    n_rows, width = len(columns[0]), len(columns)
    if n_rows == 0:
        return ""
    parts: list[str] = [""] * (2 * width * n_rows)
    for i, (column, joint) in enumerate(zip(columns, joints, strict=False)):
        parts[2 * i::2 * width] = column
        parts[2 * i + 1::2 * width] = [joint] * n_rows
    parts[2 * width - 1::2 * width] = [joints[-1] + _ENTRY_SEP + prefix] * n_rows
    parts[-1] = joints[-1]
    return prefix + "".join(parts)


def _merges_body(merges: Any, vocab: dict[str, int], quoted_vocab: list[str]) -> str:
    quote = json.encoder.encode_basestring  # JSON string literal, non-ASCII kept as is
    if isinstance(merges, IndexedMerges):
        # The vocab is usually in id order already: its quoted keys serve again.
        same = len(vocab) == len(merges.pieces) and list(vocab) == list(merges.pieces)
        quoted = np.array(quoted_vocab if same else list(map(quote, merges.pieces)), dtype=object)
        left, right = quoted[merges.left].tolist(), quoted[merges.right].tolist()
    else:
        left = [quote(pair[0]) for pair in merges]
        right = [quote(pair[1]) for pair in merges]
    return _rows([left, right], [", ", "]"], prefix="[")


def to_text(document: JsonDict) -> str:
    """``document`` as indented JSON, the tokenizer.json model's vocab and merges one entry a line.

    json.dumps with an indent runs the pure-Python encoder, 2-3 s on LLaMA 3's 128,256 vocab
    entries and 280,147 merges; rendering those two with the C string escaper and one join each
    takes a twentieth of that. The result parses to ``document`` (IndexedMerges as its pairs).
    """
    model = document.get("model")
    if not isinstance(model, dict) or "vocab" not in model:
        return json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    # Placeholders no JSON document of ours contains: a NUL is escaped inside any string.
    slots = {"vocab": "\x00vocab\x00", "merges": "\x00merges\x00"}
    skeleton = json.dumps({**document, "model": {**model, **slots}}, ensure_ascii=False, indent=2)
    head, rest = skeleton.split(json.dumps(slots["vocab"]))
    middle, tail = rest.split(json.dumps(slots["merges"]))
    vocab = model["vocab"]
    quoted_vocab = list(map(json.encoder.encode_basestring, vocab))
    blocks = []
    for body, (opening, closing) in (
        (_rows([quoted_vocab, list(map(str, vocab.values()))], [": ", ""]), "{}"),
        (_merges_body(model["merges"], vocab, quoted_vocab), "[]"),
    ):
        blocks.append(f"{opening}\n      {body}\n    {closing}" if body else opening + closing)
    return "".join([head, blocks[0], middle, blocks[1], tail, "\n"])
