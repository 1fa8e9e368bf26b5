"""tiktoken ranks file (LLaMA 3, 3.1, 3.2, 3.3, Llama 4) -> Hugging Face tokenizer files.

Meta's tokenizer.model for LLaMA 3 and Llama 4 is text, one ``<base64 token bytes> <rank>`` line
per token (128,000 and 200,000 lines); the special tokens (256 and 2,048) and the split regex are
in Meta's code, restated per family in tiktoken_specials.py. The tokenizer.json built here is
byte-level BPE that segments text exactly as tiktoken does:

* pre-tokenizer: the family's split regex, then the GPT-2 byte-to-unicode mapping (``ByteLevel``
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
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Any

import numpy as np

from streamconv.errors import TokenizerError
from streamconv.tokenizer.from_sentencepiece import added_tokens_decoder, special_token_entry
from streamconv.tokenizer.tiktoken_specials import TiktokenScheme
from streamconv.tokenizer.tokenizer_json import IndexedMerges, JsonDict, added_token, bos_template


def _special_tokens(scheme: TiktokenScheme, n_ranks: int) -> list[JsonDict]:
    """The specials take the ids right after the ranks (128000... / 200000... in Meta's files)."""
    return [added_token(n_ranks + i, name, special=True, normalized=False)
            for i, name in enumerate(scheme.special_names)]


def read_ranks(path: Path, data: bytes) -> dict[bytes, int]:
    """Parse a ranks file; ranks must be 0..n-1 and every single byte must be a token."""
    ranks = _read_canonical_ranks(data)
    if ranks is None:
        ranks = _read_ranks_by_line(path, data)
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerError(
            f"{path} lacks single-byte tokens (e.g. byte {missing[0]}), so some text could not be "
            "encoded; replace it with the tokenizer.model shipped with the checkpoint"
        )
    return ranks


# What a ranks file as Meta writes it is made of: base64 characters, decimal digits, " ", "\n".
_RANKS_ALPHABET = (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \n")


def _read_canonical_ranks(data: bytes) -> dict[bytes, int] | None:
    """The ranks of a file laid out as Meta writes it, else None.

    Meta's file is ``<base64> <rank>\\n`` per line, ranks 0, 1, 2, ... in order. Such a file is
    checked with a few passes over the whole text (numpy for the layout) and decoded token by
    token in C: 0.07 s for 128,000 lines, against 0.2-0.6 s line by line. Anything else (other
    whitespace, blank lines, ranks out of order, a repeated token, a bad line) returns None, and
    the line-by-line parser accepts it or says which line is wrong. What passes here is what
    ``base64.b64decode(validate=True)`` accepts, so both parsers give the same tokens.
    """
    if data.translate(None, _RANKS_ALPHABET):
        return None
    parts = data.split()
    tokens_b64, rank_text = parts[0::2], parts[1::2]
    n_ranks = len(rank_text)
    if n_ranks == 0 or len(tokens_b64) != n_ranks:
        return None
    if rank_text != [b"%d" % i for i in range(n_ranks)]:
        return None
    text = np.frombuffer(data, dtype=np.uint8)
    spaces, newlines = np.flatnonzero(text == ord(" ")), np.flatnonzero(text == ord("\n"))
    if len(spaces) != n_ranks or len(newlines) != n_ranks or newlines[-1] != len(data) - 1:
        return None
    # One space per line, with a token before it and a rank after it.
    line_starts = np.concatenate(([0], newlines[:-1] + 1))
    if not bool(((line_starts < spaces) & (spaces + 1 < newlines)).all()):
        return None
    # Base64 in whole groups of four, "=" only as the last one or two characters of a token.
    equals = np.flatnonzero(text == ord("="))
    after, after_two = text[equals + 1], text[np.minimum(equals + 2, len(text) - 1)]
    if (bool(((spaces - line_starts) % 4).any())
            or not bool(((after == ord(" ")) | ((after == ord("=")) & (after_two == ord(" "))))
                        .all())):
        return None
    tokens = list(map(binascii.a2b_base64, tokens_b64))
    ranks = dict(zip(tokens, range(n_ranks), strict=False))
    return ranks if len(ranks) == n_ranks else None


def _read_ranks_by_line(path: Path, data: bytes) -> dict[bytes, int]:
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
    return dict(zip(mapped_tokens(list(ranks)), ranks.values(), strict=True))


def mapped_tokens(tokens: Sequence[bytes]) -> list[str]:
    """``tokens`` mapped through the byte-to-unicode table, in one numpy pass over all bytes."""
    table = np.array([ord(c) for c in byte_to_unicode()], dtype="<u4")
    text = table[np.frombuffer(b"".join(tokens), dtype=np.uint8)].tobytes().decode("utf-32-le")
    ends = list(accumulate(map(len, tokens)))
    return [text[start:end] for start, end in pairwise([0, *ends])]


def tokens_by_rank(ranks: dict[bytes, int]) -> list[bytes]:
    """The tokens in rank order (Meta's file already lists them so)."""
    tokens = list(ranks)
    if list(ranks.values()) == list(range(len(tokens))):
        return tokens
    return sorted(tokens, key=ranks.__getitem__)


_HASH_BASE = 0x100000001B3  # odd, so invertible modulo 2**64 (FNV-1's 64-bit prime)


def _powers(value: int, count: int) -> Any:
    """value**0 .. value**(count - 1) modulo 2**64."""
    with np.errstate(over="ignore"):
        tail = np.cumprod(np.full(count - 1, value, dtype=np.uint64))
    return np.concatenate((np.ones(1, dtype=np.uint64), tail))


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[int, int]]:
    """Every split of every token into two tokens, as (left rank, right rank), in transformers'
    order: by the rank of the token made, then by the rank of the left part (a token's splits
    all have different left parts). ``merge_arrays`` does the work."""
    lefts, rights = merge_arrays(ranks, tokens_by_rank(ranks))
    return list(zip(lefts.tolist(), rights.tolist(), strict=True))


def merge_arrays(ranks: dict[bytes, int], by_rank: Sequence[bytes]) -> tuple[Any, Any]:
    """``derive_merges`` as two numpy arrays of ranks (left parts, right parts); ``by_rank`` is
    ``tokens_by_rank(ranks)``.

    Vectorized (0.1-0.2 s for LLaMA 3's 830,000 candidate splits, against 0.6-1 s for the loop
    in ``derive_merges_by_loop``): every token and every candidate part gets a 64-bit polynomial
    hash, and parts are looked up in a hash table of the tokens. Equal bytes give equal hashes, so
    no split is missed; each split found is checked on the bytes, and if two tokens ever shared a
    hash the loop is used instead, so the result is exact.
    """
    lengths = np.fromiter(map(len, by_rank), dtype=np.int64, count=len(by_rank))
    joined = np.frombuffer(b"".join(by_rank), dtype=np.uint8)
    # Bytes + 1, so that leading zero bytes change the hash.
    buf = joined.astype(np.uint64) + np.uint64(1)
    inverse = pow(_HASH_BASE, -1, 2**64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64 on purpose
        powers = _powers(_HASH_BASE, len(buf) + 1)  # base**i
        prefix = np.concatenate(([np.uint64(0)], np.cumsum(buf * _powers(inverse, len(buf)))))

        def span_hash(start: Any, stop: Any) -> Any:
            # sum of buf[j] * base**(stop - 1 - j) for j in [start, stop)
            return powers[stop - 1] * (prefix[stop] - prefix[start])

        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        stops = starts + lengths
        n_cuts = np.maximum(lengths - 1, 0)
        owner = np.repeat(np.arange(len(by_rank), dtype=np.int64), n_cuts)
        cut = np.arange(len(owner), dtype=np.int64) + np.repeat(
            starts + 1 - (np.cumsum(n_cuts) - n_cuts), n_cuts)
        table = _HashTable(span_hash(starts, stops))
        if table.has_duplicates:
            return _as_arrays(derive_merges_by_loop(ranks))
        left = table.find(span_hash(starts[owner], cut))
        found = left >= 0
        owner, left, cut = owner[found], left[found], cut[found]
        right = table.find(span_hash(cut, stops[owner]))
    found = right >= 0
    owner, left, right = owner[found], left[found], right[found]
    # By the token made (already in order), then by the left part's rank.
    order = np.argsort(owner * len(by_rank) + left, kind="stable")
    owner, left, right = owner[order], left[order], right[order]
    if not _splits_hold(joined, starts, lengths, owner, left, right):
        return _as_arrays(derive_merges_by_loop(ranks))
    return left, right


def _splits_hold(joined: Any, starts: Any, lengths: Any, made: Any, left: Any, right: Any) -> bool:
    """Whether the bytes of ``left`` then ``right`` are those of ``made``, for every merge."""
    if not np.array_equal(lengths[left] + lengths[right], lengths[made]):
        return False
    parts = np.stack((left, right), axis=1).ravel()
    return bool(np.array_equal(joined[_gather(starts[parts], lengths[parts])],
                               joined[_gather(starts[made], lengths[made])]))


def _gather(starts: Any, lengths: Any) -> Any:
    """The indexes of the spans [starts[i], starts[i] + lengths[i]), one after the other (int32:
    half the memory traffic; the bytes of all tokens number far fewer than 2**31)."""
    offsets = np.cumsum(lengths) - lengths
    return (np.arange(int(lengths.sum()), dtype=np.int32)
            + np.repeat((starts - offsets).astype(np.int32), lengths))


def _as_arrays(pairs: list[tuple[int, int]]) -> tuple[Any, Any]:
    array = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return array[:, 0].copy(), array[:, 1].copy()


class _HashTable:
    """Open addressing over 64-bit hashes, probed for many keys at once: each round handles every
    key still unresolved (2-3 rounds on average at this load), where a binary search would take 17
    dependent steps per key."""

    def __init__(self, hashes: Any) -> None:
        size = 1 << max(4, (2 * len(hashes)).bit_length())  # load factor below 1/2
        self._mask = size - 1
        self._shift = np.uint64(64 - (size.bit_length() - 1))
        self._keys = np.zeros(size, dtype=np.uint64)
        self._values = np.full(size, -1, dtype=np.int64)
        ordered = np.sort(hashes)
        self.has_duplicates = bool((ordered[1:] == ordered[:-1]).any())
        if self.has_duplicates:
            return
        pending = np.arange(len(hashes), dtype=np.int64)
        slots = self._slots(hashes)
        while len(pending):
            free = np.flatnonzero(self._values[slots] < 0)
            _, first = np.unique(slots[free], return_index=True)
            winners = free[first]
            self._values[slots[winners]] = pending[winners]
            self._keys[slots[winners]] = hashes[pending[winners]]
            rest = np.ones(len(pending), dtype=bool)
            rest[winners] = False
            pending, slots = pending[rest], (slots[rest] + 1) & self._mask

    def _slots(self, hashes: Any) -> Any:
        with np.errstate(over="ignore"):  # Fibonacci hashing: the top bits of hash * 2**64/phi
            mixed = hashes * np.uint64(0x9E3779B97F4A7C15)
        return (mixed >> self._shift).astype(np.int64)

    def find(self, hashes: Any) -> Any:
        """The value stored for each hash, or -1."""
        result = np.full(len(hashes), -1, dtype=np.int64)
        pending = np.arange(len(hashes), dtype=np.int64)
        slots = self._slots(hashes)
        while len(pending):
            values = self._values[slots]
            hit = (values >= 0) & (self._keys[slots] == hashes[pending])
            result[pending[hit]] = values[hit]
            rest = (values >= 0) & ~hit
            pending, slots = pending[rest], (slots[rest] + 1) & self._mask
        return result


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


def build_tokenizer_json(ranks: dict[bytes, int], scheme: TiktokenScheme) -> JsonDict:
    """The tokenizer.json document (tokenizers' serialization format, version 1.0)."""
    tokens = tokens_by_rank(ranks)
    pieces = mapped_tokens(tokens)
    n_ranks = len(ranks)
    # In the file's order, as before (Meta's file is in rank order: the same list).
    in_order = tokens == list(ranks)
    vocab = dict(zip(pieces, range(n_ranks), strict=True)) if in_order else mapped_vocab(ranks)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _special_tokens(scheme, n_ranks),
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": scheme.pattern},
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
                bos_template(scheme.bos, scheme.special_id(scheme.bos, n_ranks=n_ranks)),
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
            "merges": IndexedMerges(pieces, *merge_arrays(ranks, tokens)),
        },
    }


def build_tokenizer_config(
    scheme: TiktokenScheme, *, n_ranks: int, instruct: bool, model_max_length: int,
    chat_template: str | None
) -> JsonDict:
    """tokenizer_config.json.

    ``clean_up_tokenization_spaces`` is false although Meta's Hugging Face repos ship true: the
    clean-up deletes the space in " ." or " 's" after decoding, so "a ." would decode as "a.",
    while tiktoken (the original) decodes every id sequence back to its exact text.
    """
    config: JsonDict = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": scheme.bos,
        "eos_token": scheme.instruct_eos if instruct else scheme.eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": added_tokens_decoder(_special_tokens(scheme, n_ranks)),
    }
    if scheme.pad is not None:
        config["pad_token"] = scheme.pad
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def build_special_tokens_map(scheme: TiktokenScheme, *, instruct: bool) -> JsonDict:
    tokens = {"bos_token": scheme.bos, "eos_token": scheme.instruct_eos if instruct else scheme.eos}
    if scheme.pad is not None:
        tokens["pad_token"] = scheme.pad
    return {key: special_token_entry(content) for key, content in tokens.items()}
