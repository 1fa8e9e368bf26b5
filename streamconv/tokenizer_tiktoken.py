"""tiktoken ranks file (LLaMA 3, 3.1, 3.2, 3.3) -> Hugging Face tokenizer files.

Meta's tokenizer.model for LLaMA 3 is text, one ``<base64 token bytes> <rank>`` line per token
(128000 lines); the 256 special tokens are added by Meta's code, after the ranks. The tokenizer.json
built here is byte-level BPE that segments text exactly as tiktoken does:

* pre-tokenizer: LLaMA 3's split regex, then the GPT-2 byte-to-unicode mapping (``ByteLevel``
  without its own regex), so vocab entries are the mapped bytes of each token;
* ``ignore_merges``: tiktoken looks a whole regex piece up in the ranks before merging, and so
  does BPE with this flag, which also covers the few tokens no merge sequence reaches;
* merges: every split of every token into two tokens, ordered by the rank of the token it makes,
  then by the rank of its left part. That is the list transformers' ``TikTokenConverter`` writes
  (transformers 4.47.1, ``convert_slow_tokenizer.py``), so the file equals the one its conversion
  script writes, merges included (280,147 for LLaMA 3). BPE with these merges merges, at each
  step, the adjacent pair whose concatenation has the lowest rank, which is tiktoken's rule.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TokenizerError
from .family import Family
from .tokenizer_json import JsonDict, added_token, bos_template
from .tokenizer_spm import added_tokens_decoder, special_token_entry

# LLaMA 3's pre-tokenizer regex (Meta's llama3/tokenizer.py pat_str).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
N_SPECIAL_TOKENS = 256  # Meta's num_reserved_special_tokens
BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
EOT = "<|eot_id|>"

# The named specials after <|begin_of_text|>, <|end_of_text|>; names and order as in Meta's
# llama-models and transformers' DEFAULT_LLAMA_SPECIAL_TOKENS. LLaMA 3.0 differs from 3.1+.
_NAMED_3_0 = ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", EOT]
_NAMED_3_1 = [
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    EOT,
    "<|python_tag|>",
]

def _special_tokens(specials: Sequence[str], n_ranks: int) -> list[JsonDict]:
    """LLaMA 3's specials take the ids right after the ranks (128000... in Meta's file)."""
    return [added_token(n_ranks + i, name, special=True, normalized=False)
            for i, name in enumerate(specials)]


def special_token_names(family: Family) -> list[str]:
    """The 256 special tokens in id order (ids n_ranks .. n_ranks + 255)."""
    if family is Family.LLAMA3:
        head = [BOS, EOS, "<|reserved_special_token_0|>", "<|reserved_special_token_1|>"]
        head += ["<|reserved_special_token_2|>", "<|reserved_special_token_3|>", *_NAMED_3_0]
        next_reserved = 5
    else:
        head = [BOS, EOS, "<|reserved_special_token_0|>", "<|reserved_special_token_1|>"]
        head += _NAMED_3_1
        next_reserved = 3
    tail = N_SPECIAL_TOKENS - len(head)
    return head + [f"<|reserved_special_token_{next_reserved + i}|>" for i in range(tail)]


def read_ranks(path: Path, data: bytes) -> dict[bytes, int]:
    """Parse a ranks file; ranks must be 0..n-1 and every single byte must be a token."""
    ranks: dict[bytes, int] = {}
    for line_no, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected two fields")
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, binascii.Error) as e:
            raise TokenizerError(
                f"{path} line {line_no} is not '<base64 token> <rank>' ({e}); the tiktoken file "
                "is corrupt, replace it with the tokenizer.model shipped with the checkpoint"
            ) from e
        if token in ranks:
            raise TokenizerError(f"{path} line {line_no} repeats a token; the file is corrupt")
        ranks[token] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(
            f"{path} ranks are not 0..{len(ranks) - 1} without gaps; the file is corrupt, "
            "replace it with the tokenizer.model shipped with the checkpoint"
        )
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerError(
            f"{path} lacks single-byte tokens (e.g. byte {missing[0]}), so some text could not be "
            "encoded; replace it with the tokenizer.model shipped with the checkpoint"
        )
    return ranks


def byte_to_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable character table, indexed by byte.

    Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, ...) map to
    U+0100 onwards in byte order, so no vocab entry contains whitespace or control characters.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    for offset, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(0x100 + offset)
    return [table[b] for b in range(256)]


def mapped_vocab(ranks: dict[bytes, int]) -> dict[str, int]:
    """Each token as its byte-to-unicode characters (one character per byte), with its rank."""
    table = dict(enumerate(byte_to_unicode()))
    # latin-1 turns each byte into the code point of the same value; translate maps those.
    return {token.decode("latin-1").translate(table): rank for token, rank in ranks.items()}


_HASH_BASE = 0x100000001B3  # odd, so invertible modulo 2**64 (FNV-1's 64-bit prime)


def _powers(value: int, count: int) -> Any:
    """value**0 .. value**(count - 1) modulo 2**64."""
    with np.errstate(over="ignore"):
        tail = np.cumprod(np.full(count - 1, value, dtype=np.uint64))
    return np.concatenate((np.ones(1, dtype=np.uint64), tail))


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[int, int]]:
    """Every split of every token into two tokens, as (left rank, right rank), in transformers'
    order: by the rank of the token made, then by the rank of the left part (a token's splits
    all have different left parts).

    Vectorized with numpy (0.1 s for LLaMA 3's 830,000 candidate splits, against 0.6-1 s for
    the loop in ``derive_merges_by_loop``): every token and every candidate part gets a 64-bit
    polynomial hash, and parts are looked up among the tokens' hashes. Equal bytes give equal
    hashes, so no split is missed; each split found is checked on the bytes, and if two tokens
    ever shared a hash the loop is used instead, so the result is exact.
    """
    by_rank = sorted(ranks, key=ranks.__getitem__)
    lengths = np.fromiter(map(len, by_rank), dtype=np.int64, count=len(by_rank))
    # Bytes + 1, so that leading zero bytes change the hash.
    buf = np.frombuffer(b"".join(by_rank), dtype=np.uint8).astype(np.uint64) + np.uint64(1)
    base = _HASH_BASE
    inverse = pow(base, -1, 2**64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64 on purpose
        powers = _powers(base, len(buf) + 1)  # base**i
        inverse_powers = _powers(inverse, len(buf))
        prefix = np.concatenate(([np.uint64(0)], np.cumsum(buf * inverse_powers)))

        def span_hash(start: Any, stop: Any) -> Any:
            # sum of buf[j] * base**(stop - 1 - j) for j in [start, stop)
            return powers[stop - 1] * (prefix[stop] - prefix[start])

        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        stops = starts + lengths
        token_hash = span_hash(starts, stops)
        n_cuts = np.maximum(lengths - 1, 0)
        owner = np.repeat(np.arange(len(by_rank), dtype=np.int64), n_cuts)
        offset = np.arange(len(owner), dtype=np.int64) - np.repeat(np.cumsum(n_cuts) - n_cuts,
                                                                    n_cuts)
        cut = starts[owner] + 1 + offset
        left_hash = span_hash(starts[owner], cut)
        right_hash = span_hash(cut, stops[owner])
    order = np.argsort(token_hash, kind="stable")
    sorted_hash = token_hash[order]
    if len(sorted_hash) > 1 and bool((sorted_hash[1:] == sorted_hash[:-1]).any()):
        return derive_merges_by_loop(ranks)

    def find(hashes: Any) -> tuple[Any, Any]:
        idx = np.minimum(np.searchsorted(sorted_hash, hashes), len(sorted_hash) - 1)
        return order[idx], sorted_hash[idx] == hashes

    left, found = find(left_hash)
    owner, left, right_hash = owner[found], left[found], right_hash[found]
    right, found = find(right_hash)
    owner, left, right = owner[found], left[found], right[found]
    merge_order = np.lexsort((left, owner))
    lefts, rights, made = (a[merge_order].tolist() for a in (left, right, owner))
    if len(made) < 2:
        return derive_merges_by_loop(ranks)
    # The exact check, in C loops: left + right is the token made, for every merge.
    joined = list(map(bytes.__add__, itemgetter(*lefts)(by_rank), itemgetter(*rights)(by_rank)))
    if joined != list(itemgetter(*made)(by_rank)):
        return derive_merges_by_loop(ranks)
    pairs = list(zip(lefts, rights))
    return pairs


def derive_merges_by_loop(ranks: dict[bytes, int]) -> list[tuple[int, int]]:
    """``derive_merges`` as a plain loop: the definition, and the fallback on a hash collision."""
    merges: list[tuple[int, int]] = []
    for token in sorted(ranks, key=ranks.__getitem__):
        cuts = [i for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        cuts.sort(key=lambda i: ranks[token[:i]])
        merges.extend([(ranks[token[:i]], ranks[token[i:]]) for i in cuts])
    return merges


def _byte_level(*, add_prefix_space: bool, trim_offsets: bool, use_regex: bool) -> JsonDict:
    return {
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": trim_offsets,
        "use_regex": use_regex,
    }


def build_tokenizer_json(ranks: dict[bytes, int], specials: Sequence[str]) -> JsonDict:
    """The tokenizer.json document (tokenizers' serialization format, version 1.0)."""
    vocab = mapped_vocab(ranks)
    by_rank = sorted(vocab, key=vocab.__getitem__)
    n_ranks = len(ranks)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _special_tokens(specials, n_ranks),
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": LLAMA3_PATTERN},
                    "behavior": "Isolated",
                    "invert": False,
                },
                _byte_level(add_prefix_space=False, trim_offsets=True, use_regex=False),
            ],
        },
        "post_processor": {
            "type": "Sequence",
            "processors": [
                _byte_level(add_prefix_space=True, trim_offsets=False, use_regex=True),
                bos_template(BOS, n_ranks + specials.index(BOS)),
            ],
        },
        "decoder": _byte_level(add_prefix_space=True, trim_offsets=True, use_regex=True),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": [[by_rank[left], by_rank[right]] for left, right in derive_merges(ranks)],
        },
    }


def build_tokenizer_config(
    specials: Sequence[str], *, n_ranks: int, instruct: bool, model_max_length: int,
    chat_template: str | None
) -> JsonDict:
    """tokenizer_config.json.

    ``clean_up_tokenization_spaces`` is false although Meta's Hugging Face repos ship true: the
    clean-up deletes the space in " ." or " 's" after decoding, so "a ." would decode as "a.",
    while tiktoken (the original) decodes every id sequence back to its exact text.
    """
    config: JsonDict = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOT if instruct else EOS,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": added_tokens_decoder(
            _special_tokens(specials, n_ranks)
        ),
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def build_special_tokens_map(*, instruct: bool) -> JsonDict:
    return {
        "bos_token": special_token_entry(BOS),
        "eos_token": special_token_entry(EOT if instruct else EOS),
    }
