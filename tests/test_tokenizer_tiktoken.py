"""tiktoken ranks files (LLaMA 3.x) converted to tokenizer.json.

tiktoken is the oracle: an Encoding built from the same ranks file with the family's regex and
special tokens (LLaMA 3's 256 here; tests/test_tokenizer_llama4.py has Llama 4's),
`encode(text, allowed_special="all")` with BOS prepended, must equal what
`tokenizers.Tokenizer.from_file` and `AutoTokenizer.from_pretrained` give on the output.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tokenizer_corpus import SAMPLES, fuzz_samples
from tokenizers import Tokenizer, models
from transformers import AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase

from fixtures.synthetic_tokenizer import write_synthetic_tokenizer
from streamconv.model.family import Family
from streamconv.tokenizer.files import tokenizer_vocab_size, write_tokenizer_files
from streamconv.tokenizer.from_tiktoken import (
    byte_to_unicode,
    derive_merges,
    derive_merges_by_loop,
    mapped_vocab,
)
from streamconv.tokenizer.tiktoken_specials import special_token_names, tiktoken_scheme

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LLAMA3_MODEL = SHARED_DATA / "llama3_tokenizer.model"
needs_llama3 = pytest.mark.skipif(
    not LLAMA3_MODEL.is_file(), reason=f"{LLAMA3_MODEL} not available (no ../shared/data)"
)

CORPUS = SAMPLES + fuzz_samples(400, seed=11)


@dataclass(frozen=True)
class Converted:
    model_path: Path
    out_dir: Path
    family: Family
    written: list[str]
    enc: tiktoken.Encoding
    bos_id: int
    fast: Tokenizer
    auto: PreTrainedTokenizerBase


def _oracle(path: Path, family: Family) -> tuple[tiktoken.Encoding, int]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken caches by path; tmp paths get reused
        ranks = load_tiktoken_bpe(str(path))
    specials = {name: len(ranks) + i for i, name in enumerate(special_token_names(family))}
    enc = tiktoken.Encoding(
        f"test-{path.stem}-{family.value}",
        pat_str=tiktoken_scheme(family).pattern,
        mergeable_ranks=ranks,
        special_tokens=specials,
    )
    return enc, specials["<|begin_of_text|>"]


def _synthetic(vocab_size: int, seed: int) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / "tokenizer.model"
        write_synthetic_tokenizer(path, kind="tiktoken", vocab_size=vocab_size, seed=seed)
        return path

    return make


MODELS: dict[str, tuple[Callable[[Path], Path], Family, bool]] = {
    "synthetic-1000-3.1-instruct": (_synthetic(1000, 0), Family.LLAMA3_1, True),
    "synthetic-128000-3": (_synthetic(128000, 2), Family.LLAMA3, False),
    "llama3-3.1-instruct": (lambda tmp: LLAMA3_MODEL, Family.LLAMA3_1, True),
    "llama3-3": (lambda tmp: LLAMA3_MODEL, Family.LLAMA3, False),
}


def _params(names: list[str]) -> list[object]:
    return [pytest.param(n, marks=needs_llama3 if "llama3" in n else ()) for n in names]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Converted]]:
    cache: dict[str, Converted] = {}

    def get(name: str) -> Converted:
        if name not in cache:
            make, family, instruct = MODELS[name]
            tmp = tmp_path_factory.mktemp(name)
            path = make(tmp)
            out = tmp / "hf"
            out.mkdir()
            written = write_tokenizer_files(
                path, out, family=family, instruct=instruct, model_max_length=8192
            )
            enc, bos_id = _oracle(path, family)
            cache[name] = Converted(
                model_path=path,
                out_dir=out,
                family=family,
                written=written,
                enc=enc,
                bos_id=bos_id,
                fast=Tokenizer.from_file(str(out / "tokenizer.json")),
                auto=AutoTokenizer.from_pretrained(out),
            )
        return cache[name]

    yield get


@pytest.mark.parametrize("name", _params(list(MODELS)))
def test_ids_match_tiktoken(converted: Callable[[str], Converted], name: str) -> None:
    conv = converted(name)
    bad = []
    for sample, text in CORPUS:
        want = [conv.bos_id, *conv.enc.encode(text, allowed_special="all")]
        fast = conv.fast.encode(text).ids
        auto = conv.auto.encode(text)
        if fast != want or auto != want:
            bad.append(f"{sample} {text!r}: tiktoken {want}, tokenizers {fast}, auto {auto}")
    assert not bad, f"{len(bad)} of {len(CORPUS)} samples differ:\n" + "\n".join(bad[:10])


@pytest.mark.parametrize("name", _params(list(MODELS)))
def test_decode_round_trips(converted: Callable[[str], Converted], name: str) -> None:
    conv = converted(name)
    bad = []
    for sample, text in CORPUS:
        ids = conv.enc.encode(text, allowed_special="all")
        assert conv.enc.decode(ids) == text
        # Special-token strings in the text are tokens, so they must not be skipped here.
        fast = conv.fast.decode(ids, skip_special_tokens=False)
        auto = conv.auto.decode(ids, skip_special_tokens=False)
        if fast != text or auto != text:
            bad.append(f"{sample}: {text!r} -> tokenizers {fast!r}, auto {auto!r}")
        with_bos = [conv.bos_id, *ids]
        assert conv.auto.decode(with_bos, skip_special_tokens=True) == conv.enc.decode(
            [i for i in ids if i < conv.bos_id]
        )
    assert not bad, "\n".join(bad[:10])


@pytest.mark.parametrize("name", _params(["synthetic-128000-3", "llama3-3"]))
def test_every_vocab_token_as_text(converted: Callable[[str], Converted], name: str) -> None:
    # Each token's own text, where it is valid UTF-8: hits the tokens no merge sequence reaches
    # (only ignore_merges produces them) and every merge at least once.
    conv = converted(name)
    texts = []
    for rank in range(conv.enc.n_vocab - 256):
        try:
            texts.append(conv.enc.decode_single_token_bytes(rank).decode("utf-8"))
        except UnicodeDecodeError:
            continue
    want = [[conv.bos_id, *ids] for ids in conv.enc.encode_ordinary_batch(texts)]
    got = [e.ids for e in conv.fast.encode_batch(texts)]
    bad = [(t, w, g) for t, w, g in zip(texts, want, got, strict=True) if w != g]
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[:5]}"


@needs_llama3
def test_llama3_known_ids(converted: Callable[[str], Converted]) -> None:
    conv = converted("llama3-3.1-instruct")
    assert conv.fast.encode("Hello world").ids == [128000, 9906, 1917]
    # clean_up_tokenization_spaces is off, so spaces before punctuation survive decoding.
    for text in ("a . b", "don 't", "x , y ! z ?"):
        assert conv.auto.decode(conv.auto.encode(text), skip_special_tokens=True) == text


def test_special_token_ids() -> None:
    # Ids from Meta's llama-models (tokenizer.py) and transformers' DEFAULT_LLAMA_SPECIAL_TOKENS.
    v31 = special_token_names(Family.LLAMA3_1)
    v30 = special_token_names(Family.LLAMA3)
    for names in (v30, v31):
        assert len(names) == len(set(names)) == 256
        assert names[:2] == ["<|begin_of_text|>", "<|end_of_text|>"]
        assert names[2:4] == ["<|reserved_special_token_0|>", "<|reserved_special_token_1|>"]
        assert (names[6], names[7], names[9]) == (
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        )
    assert v31[4:6] == ["<|finetune_right_pad_id|>", "<|reserved_special_token_2|>"]
    assert (v31[8], v31[10], v31[11]) == (
        "<|eom_id|>",
        "<|python_tag|>",
        "<|reserved_special_token_3|>",
    )
    assert v31[255] == "<|reserved_special_token_247|>"
    assert v30[4:6] == ["<|reserved_special_token_2|>", "<|reserved_special_token_3|>"]
    assert (v30[8], v30[10]) == ("<|reserved_special_token_4|>", "<|reserved_special_token_5|>")
    assert v30[255] == "<|reserved_special_token_250|>"
    for family in (Family.LLAMA3_2, Family.LLAMA3_3):
        assert special_token_names(family) == v31


@needs_llama3
def test_special_tokens_in_output(converted: Callable[[str], Converted]) -> None:
    conv = converted("llama3-3.1-instruct")
    assert tokenizer_vocab_size(conv.model_path, family=Family.LLAMA3_1) == 128256
    expected = {128000: "<|begin_of_text|>", 128004: "<|finetune_right_pad_id|>"}
    expected.update({128008: "<|eom_id|>", 128009: "<|eot_id|>", 128010: "<|python_tag|>"})
    expected[128255] = "<|reserved_special_token_247|>"
    for idx, content in expected.items():
        assert conv.fast.id_to_token(idx) == content
        assert conv.auto.convert_ids_to_tokens(idx) == content
    assert len(conv.auto) == 128256
    assert conv.fast.encode("<|eom_id|>", add_special_tokens=False).ids == [128008]


def test_config_base_vs_instruct(converted: Callable[[str], Converted]) -> None:
    base = converted("synthetic-128000-3")
    inst = converted("synthetic-1000-3.1-instruct")
    assert sorted(base.written) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    for conv, eos in ((base, "<|end_of_text|>"), (inst, "<|eot_id|>")):
        config = json.loads((conv.out_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        special = json.loads((conv.out_dir / "special_tokens_map.json").read_text(encoding="utf-8"))
        assert config["bos_token"] == "<|begin_of_text|>" and config["eos_token"] == eos
        assert special["eos_token"]["content"] == eos
        assert config["model_max_length"] == 8192
        assert conv.auto.eos_token == eos and conv.auto.bos_token_id == conv.bos_id
        assert list(conv.auto("hi")) == ["input_ids", "attention_mask"]
    assert "chat_template" not in json.loads((base.out_dir / "tokenizer_config.json").read_text())


def test_chat_template(converted: Callable[[str], Converted]) -> None:
    conv = converted("synthetic-1000-3.1-instruct")
    messages = [
        {"role": "system", "content": "  Be brief. "},
        {"role": "user", "content": "Hi there"},
    ]
    text = conv.auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert isinstance(text, str)
    assert text == (  # Meta's 3.1 template; tests/test_tokenizer_chat.py has the rest
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    no_prompt = conv.auto.apply_chat_template(messages, tokenize=False)
    assert isinstance(no_prompt, str)
    assert text.startswith(no_prompt) and no_prompt.endswith("Hi there<|eot_id|>")
    encoded = conv.auto.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    # transformers 5 returns a BatchEncoding, transformers 4 a list of ids.
    ids = encoded["input_ids"] if isinstance(encoded, BatchEncoding) else encoded
    assert isinstance(ids, list)
    assert ids == conv.enc.encode(text, allowed_special="all")  # one BOS, from the template
    assert [i for i in ids if i == conv.bos_id] == [conv.bos_id]




def _tiny_ranks(*tokens: bytes) -> dict[bytes, int]:
    singles = [bytes([b]) for b in range(256)]
    return {t: r for r, t in enumerate(singles + list(tokens))}


def test_derive_merges_lists_every_split_in_transformers_order() -> None:
    # transformers' TikTokenConverter: all splits of each token into two tokens, by the rank of
    # the token made, then by the rank of the left part.
    ranks = _tiny_ranks(b"bc", b"ab", b"abc", b"xyz")
    a, b, c, bc, ab = ranks[b"a"], ranks[b"b"], ranks[b"c"], ranks[b"bc"], ranks[b"ab"]
    want = [(b, c), (a, b), (a, bc), (ab, c)]  # "abc": left "a" (97) before "ab" (257)
    # "xyz": neither "xy" nor "yz" is a token, so no merge; ignore_merges still finds it whole.
    assert derive_merges(ranks) == derive_merges_by_loop(ranks) == want


@pytest.mark.parametrize("name", _params(["synthetic-128000-3", "llama3-3"]))
def test_hashed_merges_equal_the_loop(converted: Callable[[str], Converted], name: str) -> None:
    ranks = load_tiktoken_bpe(str(converted(name).model_path))
    assert derive_merges(ranks) == derive_merges_by_loop(ranks)


def test_hash_collision_falls_back_to_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import streamconv.tokenizer.from_tiktoken as tt

    ranks = _tiny_ranks(b"ab", b"abc", b"bc")
    calls = []
    real = tt.derive_merges_by_loop

    def loop(r: dict[bytes, int]) -> list[tuple[int, int]]:
        calls.append(1)
        return real(r)

    monkeypatch.setattr(tt, "derive_merges_by_loop", loop)
    # With base 1 a hash is the sum of the bytes + 1: "ab" collides with the byte 196.
    monkeypatch.setattr(tt, "_HASH_BASE", 1)
    assert tt.derive_merges(ranks) == real(ranks) and calls


def test_mapped_vocab_uses_gpt2_byte_table() -> None:
    ranks = _tiny_ranks(b" \n\xff")
    vocab = mapped_vocab(ranks)
    assert vocab["\u0120\u010a\u00ff"] == 256  # space -> U+0120, newline -> U+010A
    assert len(vocab) == 257 and sorted(vocab.values()) == list(range(257))


def test_merges_reproduce_tiktoken_on_ties_and_unreachable_tokens() -> None:
    ranks = _tiny_ranks(b"aa", b"aaa", b"aaaa", b"ab", b"bc", b"abc", b"xyz", b"bca", b"cab")
    vocab = mapped_vocab(ranks)
    by_rank = sorted(vocab, key=vocab.__getitem__)
    merges = [(by_rank[a], by_rank[b]) for a, b in derive_merges(ranks)]
    bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=True)
    enc = tiktoken.Encoding("tiny", pat_str=r"\S+", mergeable_ranks=ranks, special_tokens={})
    table = byte_to_unicode()
    for word in (b"aaaaaaa", b"abcabc", b"bcabca", b"xyz", b"xyzxyz", b"aabca", b"abcaaab",
                 b"cabcab", b"bcab"):
        mapped = "".join(table[b] for b in word)
        assert [t.id for t in bpe.tokenize(mapped)] == enc.encode(word.decode()), word


def _ranks_file(tokens: list[bytes]) -> bytes:
    return b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(tokens))


def test_canonical_reader_agrees_with_line_reader() -> None:
    # Random edits of a small ranks file: whatever the whole-text reader accepts, the line
    # reader reads the same way; the rest goes to the line reader (which may accept it too).
    import streamconv.tokenizer.from_tiktoken as tt

    good = _ranks_file([bytes([b]) for b in range(256)] + [b"ab", b"abc", b"\x00\x01", b"hey"])
    assert list(tt._read_canonical_ranks(good) or {}) == list(tt._read_ranks_by_line(Path(), good))
    rng = random.Random(3)
    alphabet = b"AQg=+/ \n\t\r019"
    accepted = 0
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            i, op = rng.randrange(len(data)), rng.random()
            if op < 0.4:
                data[i] = rng.choice(alphabet)
            elif op < 0.7:
                data.insert(i, rng.choice(alphabet))
            else:
                del data[i]
        fast = tt._read_canonical_ranks(bytes(data))
        if fast is not None:
            accepted += 1
            assert list(fast.items()) == list(tt._read_ranks_by_line(Path(), bytes(data)).items())
    assert accepted > 20  # edits such as a changed base64 character keep the layout


@needs_llama3
def test_metas_file_takes_the_whole_text_reader() -> None:
    import streamconv.tokenizer.from_tiktoken as tt

    data = LLAMA3_MODEL.read_bytes()
    assert tt._read_canonical_ranks(data) == tt._read_ranks_by_line(LLAMA3_MODEL, data)


def test_hash_table_lookups() -> None:
    import numpy as np

    from streamconv.tokenizer.from_tiktoken import _HashTable

    rng = np.random.default_rng(0)
    # 5000 keys in 16384 slots: hundreds share a home slot and are placed in the same round.
    keys = rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True)
    table = _HashTable(keys)
    assert not table.has_duplicates
    misses = rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True)
    queries = np.concatenate((keys, misses))
    position = {int(k): i for i, k in enumerate(keys.tolist())}
    want = [position.get(int(q), -1) for q in queries.tolist()]
    assert table.find(queries).tolist() == want
    # A hash shared by two keys is reported even when both arrive in the same round.
    assert _HashTable(np.array([5, 9, 5], dtype=np.uint64)).has_duplicates


def test_indexed_merges_render_as_their_pairs() -> None:
    import numpy as np

    from streamconv.tokenizer.tokenizer_json import IndexedMerges, to_text

    pieces = ["a", "b", "ab", "\u0120\"q\\", "é"]
    merges = IndexedMerges(pieces, np.array([0, 2, 3]), np.array([1, 4, 0]))
    for vocab in ({p: i for i, p in enumerate(pieces)},  # id order: quoted keys reused
                  {p: i for i, p in reversed(list(enumerate(pieces)))}):
        document = {"version": "1.0", "model": {"type": "BPE", "vocab": vocab, "merges": merges}}
        plain = {"version": "1.0", "model": {"type": "BPE", "vocab": vocab,
                                             "merges": merges.pairs()}}
        text = to_text(document)
        assert text == to_text(plain)
        want = [["a", "b"], ["ab", "é"], ["\u0120\"q\\", "a"]]
        assert json.loads(text)["model"]["merges"] == want
        assert json.loads(text) == json.loads(json.dumps(plain))
