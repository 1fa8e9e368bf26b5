"""SentencePiece tokenizer.model (LLaMA 1, LLaMA 2, Code Llama) -> Hugging Face tokenizer files.

The tokenizer.json built here makes the `tokenizers` library segment text exactly as sentencepiece
does for LLaMA's model (BPE, byte fallback, identity normalization, a dummy ``▁`` prefix, spaces
escaped as ``▁``). sentencepiece is the reference, not an older tokenizer.json: with transformers
4.47.1's pinned tokenizers, the LLaMA-2 conversion dropped the leading ``▁`` ("Hello world" ->
[1, 10994, 3186] where sentencepiece gives [1, 15043, 3186]).

How each part reproduces sentencepiece:

* normalizer ``Prepend("▁")`` then ``Replace(" ", "▁")``: sentencepiece's add_dummy_prefix and
  escape_whitespaces. ``Prepend`` adds the prefix even when the text already starts with a space
  (" Hello" -> "▁▁Hello"), as sentencepiece does; the ``Metaspace`` pre-tokenizer would not.
* BPE merges: sentencepiece merges, at each step, the adjacent pair whose concatenation is the
  highest-scoring piece, whatever way that piece splits. So every split of every normal piece into
  two pieces is a merge, ranked by the score of the result, in the order transformers' converter
  writes them (see ``derive_merges``).
* byte_fallback: characters missing from the vocab become ``<0xXX>`` pieces in both.
* user-defined pieces (sentencepiece matches them in the normalized text before BPE) become added
  tokens with ``normalized: true``; control and unknown pieces become special added tokens. With
  user-defined pieces, text that starts with a literal ``▁`` gets no dummy prefix (see
  ``build_tokenizer_json``); that is the one input where the output differs from sentencepiece.

One convention differs on purpose, the Hugging Face one: sentencepiece reads "<s>" in text as three
characters, Hugging Face as the BOS token. The text is split at special-token strings and each
piece is encoded as sentencepiece encodes it on its own (with its own dummy prefix), which is how
Meta's chat code builds prompts from separately encoded pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import sentencepiece

from streamconv.errors import TokenizerError
from streamconv.tokenizer import spm_proto
from streamconv.tokenizer.tokenizer_json import JsonDict, added_token, bos_template

_SPACE = "▁"  # U+2581, sentencepiece's escaped space


@dataclass(frozen=True)
class SpmModel:
    """The pieces of a SentencePiece model, indexed by id, and the settings that matter."""

    pieces: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]
    settings: spm_proto.SpmSettings
    bos_id: int
    eos_id: int
    unk_id: int

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)


def load_spm(path: Path, data: bytes) -> SpmModel:
    """Parse and validate a SentencePiece model whose bytes were read from ``path``."""
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(data)
        fields = spm_proto.read_fields(data)
        # The proto is read by hand for what the processor does not expose: USER_DEFINED piece
        # types and the normalizer settings.
        types = spm_proto.piece_types(fields)
        settings = spm_proto.read_settings(fields)
    except (RuntimeError, ValueError) as e:
        raise TokenizerError(
            f"{path} {_describe_load_error(e)}; replace it with the tokenizer.model shipped with "
            "the checkpoint"
        ) from e
    size = processor.GetPieceSize()
    if len(types) != size or size == 0:
        raise TokenizerError(
            f"{path} holds {len(types)} pieces but sentencepiece reads {size}; the file is "
            "corrupt, replace it with the tokenizer.model shipped with the checkpoint"
        )
    model = SpmModel(
        pieces=tuple(processor.IdToPiece(i) for i in range(size)),
        scores=tuple(processor.GetScore(i) for i in range(size)),
        types=tuple(types),
        settings=settings,
        bos_id=processor.bos_id(),
        eos_id=processor.eos_id(),
        unk_id=processor.unk_id(),
    )
    _check_supported(path, model)
    return model


def _describe_load_error(error: Exception) -> str:
    reason = str(error).strip()
    # When the protobuf does not parse, sentencepiece names only its own source line.
    if "ParseFromArray" in reason or isinstance(error, ValueError):
        return "is neither a tiktoken ranks file nor a readable SentencePiece model"
    return f"is not a usable SentencePiece model ({reason.removeprefix('INTERNAL: ')})"


def _check_supported(path: Path, model: SpmModel) -> None:
    """Refuse settings that this converter cannot reproduce, rather than convert them wrongly."""
    s = model.settings
    problems = []
    if s.model_type != spm_proto.MODEL_TYPE_BPE:
        problems.append(f"model type {s.model_type} (only BPE, 2, is supported)")
    if not s.byte_fallback:
        problems.append("byte_fallback is off")
    if s.treat_whitespace_as_suffix:
        problems.append("treat_whitespace_as_suffix is on")
    if s.has_charsmap or s.normalizer_name not in ("", "identity"):
        problems.append(f"normalizer {s.normalizer_name!r} is not the identity")
    if s.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces is on")
    if not s.escape_whitespaces:
        problems.append("escape_whitespaces is off")
    if spm_proto.PIECE_UNUSED in model.types:
        problems.append("it has UNUSED pieces")
    if min(model.bos_id, model.eos_id, model.unk_id) < 0:
        problems.append("it lacks a BOS, EOS or unknown piece")
    if problems:
        raise TokenizerError(
            f"{path} is a SentencePiece model unlike LLaMA's: {'; '.join(problems)}; "
            "only the tokenizer.model of LLaMA 1, LLaMA 2 or Code Llama can be converted"
        )


def derive_merges(model: SpmModel) -> list[tuple[str, str]]:
    """Every split of every normal piece into two normal pieces, in transformers' order.

    transformers 4.47.1's ``generate_merges`` (convert_slow_tokenizer.py) sorts by the score of
    the piece made, then by the length of the left part and of the right part, all descending,
    keeping piece-id order and then (left id, right id) order among equals. Among LLaMA's pieces
    only the 15 whitespace runs share a score (-1e9); longer left parts first grows a run of
    ``▁`` from the left, as sentencepiece's leftmost-first tie-break does.
    """
    normal = {
        piece: idx
        for idx, (piece, piece_type) in enumerate(zip(model.pieces, model.types, strict=True))
        if piece_type == spm_proto.PIECE_NORMAL
    }
    ranked: list[tuple[float, int, int, int, int, int, str, str]] = []
    for piece, idx in normal.items():
        for cut in range(1, len(piece)):
            left_id = normal.get(piece[:cut])
            right_id = normal.get(piece[cut:])
            if left_id is not None and right_id is not None:
                ranked.append((-model.scores[idx], -cut, cut - len(piece), idx, left_id,
                               right_id, piece[:cut], piece[cut:]))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def added_tokens(model: SpmModel) -> list[JsonDict]:
    special_types = (spm_proto.PIECE_UNKNOWN, spm_proto.PIECE_CONTROL)
    return [
        added_token(idx, piece, special=piece_type in special_types,
                    # user-defined pieces are matched after normalization, as sentencepiece does
                    normalized=piece_type not in special_types)
        for idx, (piece, piece_type) in enumerate(zip(model.pieces, model.types, strict=True))
        if piece_type in (*special_types, spm_proto.PIECE_USER_DEFINED)
    ]


def _replace(old: str, new: str) -> JsonDict:
    return {"type": "Replace", "pattern": {"String": old}, "content": new}


def build_tokenizer_json(model: SpmModel) -> JsonDict:
    """The tokenizer.json document (tokenizers' serialization format, version 1.0)."""
    normalizers: list[JsonDict] = []
    decoders: list[JsonDict] = [_replace(_SPACE, " "), {"type": "ByteFallback"}, {"type": "Fuse"}]
    if model.settings.add_dummy_prefix:
        normalizers.append({"type": "Prepend", "prepend": _SPACE})
        if spm_proto.PIECE_USER_DEFINED in model.types:
            # tokenizers normalizes a normalized added token's own text before matching it, so
            # "▁<PRE>" would be sought as "▁▁<PRE>". Undoing the prefix on text that already
            # starts with "▁" keeps such pieces intact, at the cost of one "▁" on text that
            # starts with a literal "▁" (sentencepiece would add its prefix there too).
            normalizers.append(
                {"type": "Replace", "pattern": {"Regex": rf"\A{_SPACE}{_SPACE}"}, "content": _SPACE}
            )
        # sentencepiece drops the dummy prefix of the first piece when decoding.
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    normalizers.append(_replace(" ", _SPACE))
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens(model),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        "post_processor": bos_template(model.pieces[model.bos_id], model.bos_id),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": model.pieces[model.unk_id],
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": {piece: idx for idx, piece in enumerate(model.pieces)},
            "merges": [list(pair) for pair in derive_merges(model)],
        },
    }


def special_token_entry(content: str) -> JsonDict:
    """How transformers writes an AddedToken into special_tokens_map.json."""
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }


def added_tokens_decoder(tokens: Sequence[JsonDict]) -> JsonDict:
    """tokenizer_config.json's ``added_tokens_decoder``: the added tokens keyed by id."""
    return {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in tokens}


def build_tokenizer_config(
    model: SpmModel, *, model_max_length: int, chat_template: str | None = None
) -> JsonDict:
    """tokenizer_config.json.

    ``tokenizer_class`` is PreTrainedTokenizerFast, not LlamaTokenizerFast: transformers 5
    rebuilds a LlamaTokenizer from vocab and merges with a ``Metaspace`` pre-tokenizer that skips
    the dummy prefix when the text already starts with a space, so " Hello" would lose a token.
    PreTrainedTokenizerFast uses tokenizer.json as written, in transformers 4 and 5 alike.
    ``legacy: true`` records that a dummy prefix follows every special token (see the module doc).
    """
    config: JsonDict = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": model.pieces[model.bos_id],
        "eos_token": model.pieces[model.eos_id],
        "unk_token": model.pieces[model.unk_id],
        "pad_token": None,
        "legacy": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": added_tokens_decoder(added_tokens(model)),
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def build_special_tokens_map(model: SpmModel) -> JsonDict:
    return {
        "bos_token": special_token_entry(model.pieces[model.bos_id]),
        "eos_token": special_token_entry(model.pieces[model.eos_id]),
        "unk_token": special_token_entry(model.pieces[model.unk_id]),
    }
