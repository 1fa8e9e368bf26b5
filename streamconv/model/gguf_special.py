"""gguf.SpecialVocab as llama.cpp b10573 has it: merges, special ids, add_* flags, chat template.

Why not gguf-py's class itself: the gguf 0.19.0 wheel on PyPI predates the gguf-py that llama.cpp
b10573 vendors under the same version number, and the two disagree on exactly the files streamconv
writes. b10573 reads a ByteLevel post-processor (LLaMA 3's tokenizer.json) as "add no eos", so
its files carry tokenizer.ggml.add_eos_token; the wheel writes no such key. It also lets the
post-processor win over tokenizer_config.json's add_*_token, and reads normalizer flags. This
module is b10573's gguf-py/gguf/vocab.py SpecialVocab (_try_load_from_tokenizer_json,
_try_load_from_config_json, add_to_gguf) for the cases a LLaMA folder can hold, with the
same order of keys; tests/test_gguf_metadata.py compares the result with llama.cpp's file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

__all__ = ["DEFAULT_SPECIAL_TYPES", "SpecialVocab", "load_special_vocab"]

# A space inside a merge's part, as gguf-py stores it: chr(ord(" ") + 256).
_SPACE = "\u0120"
DEFAULT_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


@dataclass
class SpecialVocab:
    """What add_to_gguf writes, in the order it writes it (dicts keep insertion order)."""

    merges: list[str] = field(default_factory=list)
    special_token_ids: dict[str, int] = field(default_factory=dict)
    add_special_token: dict[str, bool] = field(default_factory=dict)
    chat_template: str | list[Any] | None = None
    normalizer_lowercase: bool | None = None
    normalizer_strip_accents: bool | None = None
    n_vocab: int | None = None
    special_token_types: tuple[str, ...] = DEFAULT_SPECIAL_TYPES

    def set_special_token(self, typ: str, token_id: Any) -> None:
        """The first id found for a type wins; ids outside the vocabulary are skipped."""
        if not isinstance(token_id, int) or isinstance(token_id, bool):
            return
        if token_id < 0:
            raise ValueError(f"invalid value for special token type {typ}: {token_id}")
        if (self.n_vocab is None or token_id < self.n_vocab) \
                and typ not in self.special_token_ids:
            self.special_token_ids[typ] = token_id

    def add_to_gguf(self, writer: gguf.GGUFWriter) -> None:
        """Through the writer's add_<type>_token_id / add_add_<type>_token methods, as gguf-py
        does: a type the writer has no method for is skipped there too (Code Llama's prefix,
        suffix and middle ids: only its eot id reaches the file)."""
        if self.merges:
            writer.add_token_merges(self.merges)
        for typ, token_id in self.special_token_ids.items():
            if (add_id := getattr(writer, f"add_{typ}_token_id", None)) is not None:
                add_id(token_id)
        for typ, value in self.add_special_token.items():
            if (add_flag := getattr(writer, f"add_add_{typ}_token", None)) is not None:
                add_flag(value)
        if self.chat_template is not None:
            writer.add_chat_template(self.chat_template)
        if self.normalizer_lowercase is not None:
            writer.add_bool("tokenizer.ggml.normalizer.lowercase", self.normalizer_lowercase)
        if self.normalizer_strip_accents is not None:
            writer.add_bool("tokenizer.ggml.normalizer.strip_accents",
                            self.normalizer_strip_accents)


def load_special_vocab(folder: Path, *, load_merges: bool = False, n_vocab: int | None = None,
                       special_token_types: Sequence[str] | None = None,
                       tokenizer_json: dict[str, Any] | None = None) -> SpecialVocab:
    """SpecialVocab(folder, ...) of b10573: tokenizer.json and tokenizer_config.json, then
    config.json's <type>_token_id for the types still unset. ``tokenizer_json``: the folder's
    tokenizer.json already parsed (LLaMA 3's is 9 MB; one parse, not two, in memory)."""
    vocab = SpecialVocab(n_vocab=n_vocab,
                         special_token_types=tuple(special_token_types or DEFAULT_SPECIAL_TYPES))
    _load_tokenizer_files(vocab, folder, load_merges=load_merges, tokenizer=tokenizer_json)
    config = _read_json(folder / "config.json")
    if config is not None:
        for typ in vocab.special_token_types:
            token_id = config.get(f"{typ}_token_id")
            if token_id is None and "text_config" in config:
                token_id = config["text_config"].get(f"{typ}_token_id")
            vocab.set_special_token(typ, token_id)
    return vocab


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _merges(tokenizer: dict[str, Any]) -> list[str]:
    merges = tokenizer.get("model", {}).get("merges")
    if not isinstance(merges, list) or not merges:
        return []
    if isinstance(merges[0], str):
        return [str(m) for m in merges]
    if isinstance(merges[0], list) and len(merges[0]) == 2 and isinstance(merges[0][0], str):
        # pairs (transformers >= 4.45); a space inside a part is stored as U+0120
        return [f"{a.replace(' ', _SPACE)} {b.replace(' ', _SPACE)}" for a, b in merges]
    raise ValueError("Unknown tokenizer merges format")


def _parse_normalizer(vocab: SpecialVocab, normalizer: dict[str, Any]) -> None:
    kind = normalizer.get("type")
    if kind == "Lowercase":
        vocab.normalizer_lowercase = True
    elif kind == "StripAccents":
        vocab.normalizer_strip_accents = True
    elif kind == "BertNormalizer":
        if "lowercase" in normalizer:
            vocab.normalizer_lowercase = normalizer["lowercase"]
        if "strip_accents" in normalizer:
            vocab.normalizer_strip_accents = normalizer["strip_accents"]
    elif kind == "Sequence":
        for inner in normalizer.get("normalizers", []):
            _parse_normalizer(vocab, inner)


def _load_tokenizer_files(vocab: SpecialVocab, folder: Path, *, load_merges: bool,
                          tokenizer: dict[str, Any] | None) -> None:
    if tokenizer is None:
        tokenizer = _read_json(folder / "tokenizer.json")
    added_tokens: list[dict[str, Any]] = []
    if tokenizer is not None:
        if load_merges:
            vocab.merges = _merges(tokenizer)
        if normalizer := tokenizer.get("normalizer"):
            _parse_normalizer(vocab, normalizer)
        added_tokens = tokenizer.get("added_tokens", [])
    config = _read_json(folder / "tokenizer_config.json")
    if tokenizer:
        _read_post_processor(vocab, tokenizer, config)
    if not config:
        return
    template = config.get("chat_template")
    if template is None or isinstance(template, (str, list)):
        vocab.chat_template = template
    for typ in vocab.special_token_types:
        add_entry = config.get(f"add_{typ}_token")
        if isinstance(add_entry, bool) and typ not in vocab.add_special_token:
            vocab.add_special_token[typ] = add_entry
        entry = config.get(f"{typ}_token")
        content = entry.get("content") if isinstance(entry, dict) else entry
        if not isinstance(content, str):
            continue
        token_id = next((t.get("id") for t in added_tokens if t.get("content") == content), None)
        vocab.set_special_token(typ, token_id)


def _special_id(item: dict[str, Any]) -> Any:
    return item.get("SpecialToken", {}).get("id")


def _read_post_processor(vocab: SpecialVocab, tokenizer: dict[str, Any],
                         config: dict[str, Any] | None) -> None:
    """The post-processor's ByteLevel and TemplateProcessing steps (b10573's crude parse)."""
    post_processor = tokenizer.get("post_processor")
    if not post_processor:
        return
    names = config or {}
    special_bos, special_cls = names.get("bos_token"), names.get("cls_token")
    special_eos, special_sep = names.get("eos_token"), names.get("sep_token")
    if not special_bos and special_cls and config:
        config["bos_token"] = special_bos = special_cls
    if not special_eos and special_sep and config:
        config["eos_token"] = special_eos = special_sep
    for processor in post_processor.get("processors", [post_processor]):
        kind = processor.get("type")
        if kind == "ByteLevel":
            vocab.add_special_token.setdefault("bos", False)
            vocab.add_special_token.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            vocab.add_special_token.update(bos=True, eos=True, sep=True)
        elif kind == "TemplateProcessing":
            _read_template(vocab, processor, config,
                           special=(special_bos, special_cls, special_eos, special_sep))


def _read_template(vocab: SpecialVocab, processor: dict[str, Any],
                   config: dict[str, Any] | None, *, special: tuple[Any, Any, Any, Any]) -> None:
    """TemplateProcessing: a leading special token of the bos/cls name means add_bos, a
    trailing one of the eos name add_eos, a separator between A and B add_sep."""
    special_bos, special_cls, special_eos, special_sep = special
    single, pair = processor.get("single", []), processor.get("pair", [])
    first = last = None
    if len(single) > 1:
        if first := _special_id(single[0]):
            if not config:
                special_bos = first
            elif first not in (special_bos, special_cls):
                if not special_bos:
                    config["bos_token"] = special_bos = first
                if not special_cls:
                    config["cls_token"] = special_cls = first
            vocab.add_special_token["bos"] = first in (special_bos, special_cls)
        if last := _special_id(single[-1]):
            if not config:
                special_eos = last
            elif last != special_eos:
                for fallback in ("eot", "eom"):
                    if fallback not in vocab.special_token_types:
                        vocab.special_token_types += (fallback,)
                        config[f"{fallback}_token"] = special_eos
                        break
                config["eos_token"] = special_eos = last
            vocab.add_special_token["eos"] = last == special_eos
    if not pair:
        return
    start = 1 if first and _special_id(pair[0]) == first else 0
    stop = -1 if last and _special_id(pair[-1]) == last else None
    middle = pair[slice(start, stop)]
    if not middle:
        return
    seq_a, seq_b = (middle[0].get("Sequence", {}).get("id"),
                    middle[-1].get("Sequence", {}).get("id"))
    middle = middle[1:-1]
    if seq_a != "A" or seq_b != "B" or not middle:
        return
    add_sep = False
    entry = _special_id(middle[0])
    if entry and entry in (special_sep, special_eos) and not last:
        add_sep = True
    if len(middle) == 2 and (entry := _special_id(middle[1])) \
            and entry in (special_sep, special_eos):
        add_sep = True
    vocab.add_special_token["sep"] = add_sep
    if add_sep and not special_sep and config:
        config["sep_token"] = special_eos
