"""Synthetic tokenizer.model files of an exact vocab size, for tests, the demo and benchmarks.

Meta's tokenizers cannot be shipped or downloaded here, yet a converted checkpoint needs a tokenizer
whose size matches the embedding. Both formats are built the way BPE training builds a vocab, so
the result is BPE-consistent (every token is two earlier tokens joined) and real English text
tokenizes into multi-character tokens:

1. the base symbols: LLaMA's reserved pieces and 256 byte pieces (SentencePiece) or the 256 single
   bytes (tiktoken);
2. merges learned by a small BPE trainer over the English text below, most frequent pair first;
3. seeded random joins of two existing tokens until the vocab has exactly ``vocab_size`` entries.

The SentencePiece model is written as protobuf by hand with LLaMA's settings (BPE, byte fallback,
identity normalization, dummy prefix, whitespace kept), including LLaMA's whitespace-run pieces
that all score -1e9. Building 32000 or 128000 entries takes well under a second.
"""

from __future__ import annotations

import base64
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, TypeVar

from . import spm_proto

_SPACE = "▁"
_MAX_TOKEN_LEN = 16  # sentencepiece's default max_sentencepiece_length
_MAX_LEARNED = 1500

# Training text: plain English first, as the bulk of LLaMA's data, then some code, markup and
# a few other languages so multi-byte characters also get merged.
TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. It is a truth universally acknowledged that a model
is only as good as the data it was trained on, and that the data is never as clean as one hopes.
When the weights of a large language model are converted from one format to another, every tensor
must keep its shape, its order and its meaning. The tokenizer must also be converted, because the
model has learned an embedding for every token, and a different tokenizer would give the model
numbers it has never seen. This is why we test the tokenizer as carefully as the weights.
There are many ways to write the same thing, and there were many more in the past. People write
letters, reports, stories, questions and answers; they write about the weather, the government,
the market, the history of their country and the things they would like to do in the future.
What should you do if the information you need is not available? You should ask, and then you
should check the answer. They said that the results were interesting, but that they could not
be reproduced without the original settings. We would like to thank everyone who contributed.
In the morning the children walked to the school, and in the evening they returned to their homes.
def convert(path, output_dir, max_memory=None):
    for index, name in enumerate(names):
        if name.startswith("layers."):
            return {"name": name, "shape": list(tensor.shape), "dtype": str(tensor.dtype)}
    print(f"converted {len(names)} tensors in {elapsed:.2f} seconds")
int main(int argc, char **argv) { return argc > 1 ? atoi(argv[1]) : 0; }
<div class="content"> <p> The page </p> <a href="/index.html"> <span> home </span> </a> </div>
Die Größe der Datei wird überprüft, bevor sie geöffnet wird. Le modèle a été entraîné très
rapidement. Модель была обучена на большом корпусе текста. Η γλώσσα είναι όμορφη.
"""

# Single characters beyond the training text, so common text in other scripts is not all bytes.
_EXTRA_CHARS = (
    "ÀÁÂÄÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÖØÙÚÛÜßàáâãäåæçèéêëìíîïñòóôõöøùúûüÿœŒ€£¥©°±²³µ¶·¼½¾¿¡«»–—‘’“”•…"
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ"
    "αβγδεζηθικλμνξοπρστυφχψωάέήίόύώΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ"
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年日本語中文字"
    "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"
    "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワヲン"
    "가나다라마바사아자차카타파하한국어는이의에를"
    "ابتثجحخدذرزسشصضطظعغفقكلمنهوي"
    "अआइईउऊएऐओऔकखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह"
)

_T = TypeVar("_T", str, bytes)


def _learn_merges(words: Counter[tuple[_T, ...]], max_merges: int) -> list[_T]:
    """Plain BPE training: repeatedly join the most frequent adjacent pair (ties: first seen)."""
    learned: list[_T] = []
    seen: set[_T] = set()
    current = dict(words)
    while len(learned) < max_merges:
        pairs: Counter[tuple[_T, _T]] = Counter()
        for word, count in current.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        best = next((p for p, n in pairs.most_common() if n >= 2 and p[0] + p[1] not in seen), None)
        if best is None:
            break
        joined = best[0] + best[1]
        if len(joined) <= _MAX_TOKEN_LEN:
            learned.append(joined)
        seen.add(joined)
        current = {_join(word, best): count for word, count in current.items()}
    return learned


def _join(word: tuple[_T, ...], pair: tuple[_T, _T]) -> tuple[_T, ...]:
    out: list[_T] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _random_joins(
    pool: list[_T],
    known: set[_T],
    count: int,
    rng: random.Random,
    *,
    right_ok: Callable[[_T], bool],
) -> Iterator[_T]:
    """``count`` new tokens, each two tokens of ``pool`` joined.

    Only tokens up to half the maximum length are drawn (and new ones that short join the pool),
    so a join never runs over the maximum and almost every draw gives a new token.
    """
    half = _MAX_TOKEN_LEN // 2
    pool = [t for t in pool if len(t) <= half]
    draw = rng.random
    made = 0
    while made < count:
        left = pool[int(draw() * len(pool))]
        right = pool[int(draw() * len(pool))]
        token = left + right
        if token in known or not right_ok(right):
            continue
        known.add(token)
        if len(token) <= half:
            pool.append(token)
        made += 1
        yield token


def _no_space(piece: str) -> bool:
    # SentencePiece: ``▁`` only starts a piece, as LLaMA's split_by_whitespace training made it.
    return _SPACE not in piece


def _any(token: bytes) -> bool:
    return True


def build_sentencepiece_model(vocab_size: int, seed: int = 0) -> bytes:
    """A serialized LLaMA-like BPE ModelProto with exactly ``vocab_size`` pieces."""
    specials = [("<unk>", spm_proto.PIECE_UNKNOWN), ("<s>", spm_proto.PIECE_CONTROL)]
    specials.append(("</s>", spm_proto.PIECE_CONTROL))
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    base_chars = [chr(c) for c in range(0x21, 0x7F)] + [_SPACE]
    room = vocab_size - len(specials) - len(byte_pieces) - len(base_chars)
    if room < 0:
        raise ValueError(f"a SentencePiece vocab needs at least {vocab_size - room} pieces")
    # Up to a quarter of the room goes to more characters: the training text's first.
    candidates = sorted(set().union(*TRAINING_TEXT.split())) + list(_EXTRA_CHARS)
    extra = [c for c in dict.fromkeys(candidates) if c not in base_chars][: room // 4]
    chars = base_chars + extra
    runs = [_SPACE * n for n in range(2, 17)][: max(0, room - len(extra)) // 8]
    n_merges = room - len(extra) - len(runs)

    in_vocab = set(chars)
    words = Counter(tuple(_SPACE + w) for w in TRAINING_TEXT.split() if in_vocab.issuperset(w))
    merged = _learn_merges(words, min(n_merges, _MAX_LEARNED))[:n_merges]
    known = set(chars) | set(merged)
    pool = [*chars, *merged]
    merged += _random_joins(
        pool, known, n_merges - len(merged), random.Random(seed), right_ok=_no_space
    )

    # Scores fall with the id, as sentencepiece writes them; the whitespace runs score -1e9 as in
    # LLaMA's model, so merges that tie are exercised too.
    normal = [*merged, *chars]
    kind = spm_proto.PIECE_NORMAL
    body = b"".join(spm_proto.encode_piece(p, 0.0, t) for p, t in specials)
    body += b"".join(spm_proto.encode_piece(p, 0.0, spm_proto.PIECE_BYTE) for p in byte_pieces)
    body += b"".join(spm_proto.encode_piece(p, -float(i + 1), kind) for i, p in enumerate(normal))
    body += b"".join(spm_proto.encode_piece(p, -1e9, kind) for p in runs)
    return body + _trainer_spec(vocab_size) + _normalizer_spec()


def _trainer_spec(vocab_size: int) -> bytes:
    p = spm_proto
    fields = p.varint_field(p.TRAINER_MODEL_TYPE, p.MODEL_TYPE_BPE)
    fields += p.varint_field(p.TRAINER_VOCAB_SIZE, vocab_size)
    fields += p.varint_field(p.TRAINER_SPLIT_DIGITS, 1)
    fields += p.varint_field(p.TRAINER_BYTE_FALLBACK, 1)
    for number, value in [(p.TRAINER_UNK_ID, 0), (p.TRAINER_BOS_ID, 1), (p.TRAINER_EOS_ID, 2)]:
        fields += p.varint_field(number, value)
    fields += p.varint_field(p.TRAINER_PAD_ID, -1)
    return p.len_field(p.MODEL_TRAINER_SPEC, fields)


def _normalizer_spec() -> bytes:
    p = spm_proto
    fields = p.len_field(p.NORMALIZER_NAME, b"identity")
    fields += p.varint_field(p.NORMALIZER_ADD_DUMMY_PREFIX, 1)
    fields += p.varint_field(p.NORMALIZER_REMOVE_EXTRA_WHITESPACES, 0)
    fields += p.varint_field(p.NORMALIZER_ESCAPE_WHITESPACES, 1)
    return p.len_field(p.MODEL_NORMALIZER_SPEC, fields)


# Close to LLaMA 3's split regex, in what the stdlib ``re`` can express (ASCII letters only).
_WORD_SPLIT = re.compile(
    r"'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_tiktoken_ranks(vocab_size: int, seed: int = 0) -> list[bytes]:
    """Tokens in rank order: the 256 bytes, learned merges, then seeded random joins."""
    if vocab_size < 256:
        raise ValueError(f"a tiktoken vocab needs at least 256 ranks, not {vocab_size}")
    singles = [bytes([b]) for b in range(256)]
    split = _WORD_SPLIT.findall(TRAINING_TEXT)
    words = Counter(tuple(bytes([b]) for b in w.encode()) for w in split)
    n_merges = vocab_size - 256
    merged = _learn_merges(words, min(n_merges, _MAX_LEARNED))[:n_merges]
    known = set(singles) | set(merged)
    pool = [*singles, *merged]
    merged += _random_joins(pool, known, n_merges - len(merged), random.Random(seed), right_ok=_any)
    return singles + merged


def write_synthetic_tokenizer(
    path: Path, *, kind: Literal["sentencepiece", "tiktoken"], vocab_size: int, seed: int = 0
) -> None:
    """Write a usable tokenizer.model with exactly ``vocab_size`` pieces (SentencePiece) or ranks
    (tiktoken; the 256 specials LLaMA 3 adds in code are not in the file)."""
    if kind == "sentencepiece":
        path.write_bytes(build_sentencepiece_model(vocab_size, seed))
    elif kind == "tiktoken":
        tokens = build_tiktoken_ranks(vocab_size, seed)
        lines = [f"{base64.b64encode(t).decode('ascii')} {rank}\n" for rank, t in enumerate(tokens)]
        path.write_text("".join(lines), encoding="ascii")
    else:
        raise ValueError(f"kind must be 'sentencepiece' or 'tiktoken', not {kind!r}")


# Code Llama's tokenizer.model is LLaMA 2's plus 16 pieces (vocab 32016). Ids 32007-32010 are the
# infilling pieces ▁<PRE>, ▁<SUF>, ▁<MID>, ▁<EOT> (the ids llama.cpp and transformers'
# CodeLlamaTokenizer use). The other 12 are ASSUMED, since Meta's file is not available here: the
# prefixes that let BPE build each infilling piece from LLaMA 2's "▁<".
CODE_LLAMA_PIECES = (
    "▁<P", "▁<PR", "▁<PRE", "▁<S", "▁<SU", "▁<SUF", "▁<M",
    "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>",
    "▁<MI", "▁<MID", "▁<E", "▁<EO", "▁<EOT",
)  # fmt: skip
CODE_LLAMA_INFILL = ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>")


def add_code_llama_pieces(src: Path, dst: Path, *, user_defined: bool = False) -> None:
    """Write ``src``'s SentencePiece model plus Code Llama's 16 pieces to ``dst``.

    The infilling pieces are NORMAL pieces, or USER_DEFINED ones (matched whole in the text by
    sentencepiece) with ``user_defined``. Scores sit just below 0 and fall with the id, so the
    chains merge before LLaMA's own pieces (all negative) and never tie.
    """
    infill_type = spm_proto.PIECE_USER_DEFINED if user_defined else spm_proto.PIECE_NORMAL
    pieces = [
        spm_proto.encode_piece(
            piece,
            -0.001 * (i + 1),
            infill_type if piece in CODE_LLAMA_INFILL else spm_proto.PIECE_NORMAL,
        )
        for i, piece in enumerate(CODE_LLAMA_PIECES)
    ]
    dst.write_bytes(spm_proto.insert_pieces(src.read_bytes(), pieces))
