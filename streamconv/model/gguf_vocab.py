"""The tokenizer.* GGUF keys, from a Hugging Face folder, as llama.cpp's converter writes them.

In model/ beside gguf_metadata.py (not tokenizer/, a later stage): it reads the tokenizer files
the tokenizer stage already wrote, as bytes, and imports nothing from there.

Follows conversion/llama.py LlamaModel.set_vocab of llama.cpp b10573: a folder with
tokenizer.model is a SentencePiece vocabulary (conversion/base.py _create_vocab_sentencepiece,
read with the sentencepiece package exactly as there); one without is a byte-level BPE vocabulary
(_set_vocab_gpt2 / get_vocab_base). gguf_special.py's copy of b10573's gguf.SpecialVocab then adds
the merges, special ids, add_bos/add_eos and the chat template.

get_vocab_base reads the BPE vocabulary through transformers' AutoTokenizer; here it is read
from tokenizer.json itself (model.vocab plus added_tokens, which is what the fast tokenizer's
get_vocab / get_added_vocab return). llama.cpp re-encodes added tokens that are not normalized
(decode(encode(t))); for special tokens that round trip is the identity, and every added token of
a LLaMA tokenizer is special, so it is left out. Its pre-tokenizer name comes from hashing the
token ids of a fixed text; llama.cpp knows the hash of Meta's LLaMA 3 tokenizer as "llama-bpe"
and of Llama 4's as "llama4" (get_vocab_base_pre), and refuses vocabularies whose hash it does
not know, so the name here comes from the family.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf

from streamconv.model.families.registry import describe
from streamconv.model.gguf_special import load_special_vocab

__all__ = ["add_vocab"]

# Code Llama's infilling tokens (conversion/llama.py, for a 32016-token vocabulary).
_CODE_LLAMA_VOCAB_SIZE = 32016
_CODE_LLAMA_INFILL = (("prefix", 32007), ("suffix", 32008), ("middle", 32009), ("eot", 32010))
_SPIECE_SPACE = "\u2581"


def add_vocab(writer: gguf.GGUFWriter, folder: Path, *, hparams: Mapping[str, Any],
              family: str) -> None:
    """LlamaModel.set_vocab for the folders streamconv writes (Llama4Model.set_vocab: the
    BPE vocabulary only)."""
    if describe(family).gguf_bpe_only:
        _add_bpe(writer, folder, hparams=hparams, family=family)
        return
    tokenizer_config = _load_json(folder / "tokenizer_config.json")
    if (add_prefix_space := tokenizer_config.get("add_prefix_space")) is not None:
        writer.add_add_space_prefix(add_prefix_space)
    if (folder / "tokenizer.model").is_file():
        _add_sentencepiece(writer, folder, hparams=hparams, tokenizer_config=tokenizer_config)
    else:
        _add_bpe(writer, folder, hparams=hparams, family=family)
    if hparams.get("vocab_size", 32000) == _CODE_LLAMA_VOCAB_SIZE:
        special_vocab = load_special_vocab(
            folder, special_token_types=[t for t, _ in _CODE_LLAMA_INFILL])
        for token_type, token_id in _CODE_LLAMA_INFILL:
            special_vocab.set_special_token(token_type, token_id)
        special_vocab.add_to_gguf(writer)


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _looks_special(token: str) -> bool:
    """TextModel.does_token_look_special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _add_sentencepiece(writer: gguf.GGUFWriter, folder: Path, *, hparams: Mapping[str, Any],
                       tokenizer_config: Mapping[str, Any]) -> None:
    """_set_vocab_sentencepiece with _create_vocab_sentencepiece."""
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor()
    processor.LoadFromFile(str(folder / "tokenizer.model"))
    vocab_size = hparams.get("vocab_size") or processor.vocab_size()
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for token_id in range(min(processor.vocab_size(), vocab_size)):
        tokens[token_id] = processor.IdToPiece(token_id).encode("utf-8")
        scores[token_id] = processor.GetScore(token_id)
        types[token_id] = int(_spm_type(processor, token_id))
    # added_tokens.json: streamconv never writes one.
    for key, data in tokenizer_config.get("added_tokens_decoder", {}).items():
        token_id, content = int(key), str(data["content"])
        if token_id >= vocab_size:
            continue
        if data.get("special") or _looks_special(content):
            types[token_id] = int(gguf.TokenType.CONTROL)
        else:
            content = content.replace(_SPIECE_SPACE, " ")
            types[token_id] = int(gguf.TokenType.USER_DEFINED)
        scores[token_id] = -1000.0
        tokens[token_id] = content.encode("utf-8")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    load_special_vocab(folder, n_vocab=len(tokens)).add_to_gguf(writer)


def _spm_type(processor: Any, token_id: int) -> gguf.TokenType:
    if processor.IsUnknown(token_id):
        return gguf.TokenType.UNKNOWN
    if processor.IsControl(token_id):
        return gguf.TokenType.CONTROL
    if processor.IsUnused(token_id):
        return gguf.TokenType.UNUSED
    if processor.IsByte(token_id):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def _add_bpe(writer: gguf.GGUFWriter, folder: Path, *, hparams: Mapping[str, Any],
             family: str) -> None:
    """_set_vocab_gpt2 with get_vocab_base, reading tokenizer.json instead of AutoTokenizer."""
    document = _load_json(folder / "tokenizer.json")
    added = {int(t["id"]): t for t in document.get("added_tokens", [])}
    reverse = {int(i): str(t) for t, i in document["model"]["vocab"].items()}
    reverse.update({i: str(t["content"]) for i, t in added.items()})
    vocab_size = int(hparams.get("vocab_size", len(reverse)))
    tokens: list[str] = []
    types: list[int] = []
    for token_id in range(vocab_size):
        token = reverse.get(token_id)
        if token is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(int(gguf.TokenType.UNUSED))
            continue
        if token_id in added:
            if added[token_id].get("special") or _looks_special(token):
                types.append(int(gguf.TokenType.CONTROL))
            else:
                token = token.replace(_SPIECE_SPACE, " ")
                types.append(int(gguf.TokenType.USER_DEFINED))
        else:
            types.append(int(gguf.TokenType.NORMAL))
        tokens.append(token)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(describe(family).gguf_pre_tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special_vocab = load_special_vocab(folder, load_merges=True, tokenizer_json=document)
    del document, added, reverse  # the merges list is built; the rest can go
    special_vocab.add_to_gguf(writer)
