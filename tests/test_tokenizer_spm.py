"""SentencePiece tokenizers (LLaMA 1/2, Code Llama) converted to tokenizer.json.

sentencepiece itself is the oracle: `tokenizers.Tokenizer.from_file` and
`AutoTokenizer.from_pretrained` on the output must give `[bos] + sp.encode(text)` for every sample
and decode back to what sentencepiece decodes. Runs on generated models always, and on Meta's real
LLaMA 2 tokenizer.model when ../shared/data holds it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sentencepiece as spm
from tokenizer_corpus import SAMPLES, SPM_SPECIAL_STRINGS, fuzz_samples
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fixtures import spm_writer
from fixtures.synthetic_tokenizer import (
    CODE_LLAMA_INFILL,
    CODE_LLAMA_PIECES,
    add_code_llama_pieces,
    build_sentencepiece_model,
    write_synthetic_tokenizer,
)
from streamconv.model.family import Family
from streamconv.tokenizer import spm_proto
from streamconv.tokenizer.files import tokenizer_vocab_size, write_tokenizer_files

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LLAMA2_MODEL = SHARED_DATA / "llama2_tokenizer.model"
needs_llama2 = pytest.mark.skipif(
    not LLAMA2_MODEL.is_file(), reason=f"{LLAMA2_MODEL} not available (no ../shared/data)"
)

FUZZ = fuzz_samples(400, seed=7)
_SPECIAL_SPLIT = re.compile("(" + "|".join(map(re.escape, SPM_SPECIAL_STRINGS)) + ")")


def _plain(text: str) -> bool:
    return not any(s in text for s in SPM_SPECIAL_STRINGS)


PLAIN = [(n, t) for n, t in SAMPLES + FUZZ if _plain(t)]
WITH_SPECIALS = [(n, t) for n, t in SAMPLES + FUZZ if not _plain(t)]


@dataclass(frozen=True)
class Converted:
    model_path: Path
    out_dir: Path
    written: list[str]
    sp: spm.SentencePieceProcessor
    fast: Tokenizer
    auto: PreTrainedTokenizerBase


def _convert(model_path: Path, out_dir: Path, family: Family) -> Converted:
    out_dir.mkdir()
    written = write_tokenizer_files(
        model_path, out_dir, family=family, instruct=False, model_max_length=4096
    )
    return Converted(
        model_path=model_path,
        out_dir=out_dir,
        written=written,
        sp=spm.SentencePieceProcessor(model_file=str(model_path)),
        fast=Tokenizer.from_file(str(out_dir / "tokenizer.json")),
        auto=AutoTokenizer.from_pretrained(out_dir),
    )


def _synthetic(vocab_size: int, seed: int) -> Callable[[Path], tuple[Path, Family]]:
    def make(tmp: Path) -> tuple[Path, Family]:
        path = tmp / "tokenizer.model"
        write_synthetic_tokenizer(path, kind="sentencepiece", vocab_size=vocab_size, seed=seed)
        return path, Family.LLAMA2

    return make


def _real_llama2(tmp: Path) -> tuple[Path, Family]:
    return LLAMA2_MODEL, Family.LLAMA2


def _code_llama(base: str, *, user_defined: bool) -> Callable[[Path], tuple[Path, Family]]:
    def make(tmp: Path) -> tuple[Path, Family]:
        src = LLAMA2_MODEL
        if base == "synthetic":
            src = tmp / "base.model"
            write_synthetic_tokenizer(src, kind="sentencepiece", vocab_size=32000, seed=3)
        path = tmp / "tokenizer.model"
        add_code_llama_pieces(src, path, user_defined=user_defined)
        return path, Family.CODE_LLAMA

    return make


MODELS = {
    "synthetic-512": _synthetic(512, 0),
    "synthetic-32000": _synthetic(32000, 1),
    "llama2": _real_llama2,
    "code-synthetic-normal": _code_llama("synthetic", user_defined=False),
    "code-synthetic-userdef": _code_llama("synthetic", user_defined=True),
    "code-llama2-normal": _code_llama("llama2", user_defined=False),
    "code-llama2-userdef": _code_llama("llama2", user_defined=True),
}
NEEDS_REAL = {"llama2", "code-llama2-normal", "code-llama2-userdef"}


def _model_params(names: list[str]) -> list[object]:
    return [pytest.param(n, marks=needs_llama2 if n in NEEDS_REAL else ()) for n in names]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Converted]]:
    cache: dict[str, Converted] = {}

    def get(name: str) -> Converted:
        if name not in cache:
            tmp = tmp_path_factory.mktemp(name)
            path, family = MODELS[name](tmp)
            cache[name] = _convert(path, tmp / "hf", family)
        return cache[name]

    yield get


def _mismatches(conv: Converted, samples: list[tuple[str, str]]) -> list[str]:
    bos = conv.sp.bos_id()
    bad = []
    for name, text in samples:
        want = [bos, *conv.sp.encode(text)]
        fast = conv.fast.encode(text).ids
        auto = conv.auto.encode(text)
        if fast != want or auto != want:
            bad.append(f"{name} {text!r}: sentencepiece {want}, tokenizers {fast}, auto {auto}")
    return bad


def _comparable(name: str) -> list[tuple[str, str]]:
    """PLAIN, minus text starting with a literal "▁" for models with user-defined pieces (the
    documented exception, tested in test_user_defined_pieces_and_literal_space_char)."""
    if not name.endswith("userdef"):
        return PLAIN
    return [(n, t) for n, t in PLAIN if not t.startswith("\u2581")]


@pytest.mark.parametrize("name", _model_params(list(MODELS)))
def test_ids_match_sentencepiece(converted: Callable[[str], Converted], name: str) -> None:
    samples = _comparable(name)
    bad = _mismatches(converted(name), samples)
    assert not bad, f"{len(bad)} of {len(samples)} samples differ:\n" + "\n".join(bad[:10])


@pytest.mark.parametrize("name", _model_params(["synthetic-32000", "llama2"]))
def test_whitespace_runs_match_sentencepiece(
    converted: Callable[[str], Converted], name: str
) -> None:
    # LLaMA's 15 whitespace-run pieces all score -1e9; this is where merge ties decide.
    runs = []
    for n in range(1, 41):
        for template in ("{}", "{}x", "x{}", "x{}y", "\n{}\n", "{}\t{}"):
            runs.append((f"{n}-spaces {template!r}", template.format(" " * n, " " * n)))
    bad = _mismatches(converted(name), runs)
    assert not bad, "\n".join(bad[:10])


@pytest.mark.parametrize("name", _model_params(["synthetic-32000", "llama2"]))
def test_every_piece_as_text(converted: Callable[[str], Converted], name: str) -> None:
    # Each normal piece's own text (its "▁" as spaces) exercises every merge at least once.
    conv = converted(name)
    sp = conv.sp
    texts = [
        sp.id_to_piece(i).replace("\u2581", " ")
        for i in range(sp.vocab_size())
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))
    ]
    want = [[sp.bos_id(), *ids] for ids in sp.encode(texts)]
    got = [e.ids for e in conv.fast.encode_batch(texts)]
    bad = [(t, w, g) for t, w, g in zip(texts, want, got, strict=True) if w != g]
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[:5]}"


@pytest.mark.parametrize("name", _model_params(list(MODELS)))
def test_decode_matches_sentencepiece(converted: Callable[[str], Converted], name: str) -> None:
    conv = converted(name)
    bad = []
    for sample, text in _comparable(name):
        ids = [conv.sp.bos_id(), *conv.sp.encode(text)]
        want = conv.sp.decode(ids)
        # "▁" in the text is indistinguishable from an escaped space, for sentencepiece too.
        if "\u2581" not in text:
            assert want == text, f"sentencepiece itself does not round-trip {sample}"
        fast = conv.fast.decode(ids, skip_special_tokens=True)
        auto = conv.auto.decode(ids, skip_special_tokens=True)
        if fast != want or auto != want:
            bad.append(f"{sample}: sentencepiece {want!r}, tokenizers {fast!r}, auto {auto!r}")
    assert not bad, "\n".join(bad[:10])


def _hf_convention_ids(sp: spm.SentencePieceProcessor, text: str) -> list[int]:
    """BOS, then the text split at special-token strings, each part encoded by sentencepiece
    on its own (own dummy prefix) and each special string replaced by its id."""
    ids = [sp.bos_id()]
    for part in _SPECIAL_SPLIT.split(text):
        ids += [sp.piece_to_id(part)] if part in SPM_SPECIAL_STRINGS else sp.encode(part)
    return ids


@pytest.mark.parametrize("name", _model_params(["synthetic-32000", "llama2"]))
def test_special_strings_in_text_follow_hf_convention(
    converted: Callable[[str], Converted], name: str
) -> None:
    conv = converted(name)
    assert WITH_SPECIALS, "the corpus lost its special-token samples"
    for sample, text in WITH_SPECIALS:
        want = _hf_convention_ids(conv.sp, text)
        assert conv.fast.encode(text).ids == want, sample
        assert conv.auto.encode(text) == want, sample
        # The convention really differs from sentencepiece, which reads "<s>" as characters.
        assert want != [conv.sp.bos_id(), *conv.sp.encode(text)], sample
    # Decoding keeps the special tokens (unless skipped); each part's dummy prefix comes back
    # as the space after a special token, as documented in docs/tokenizers.md.
    ids = conv.fast.encode("x <s> y").ids
    assert conv.fast.decode(ids, skip_special_tokens=False) == "<s> x <s>  y"
    assert conv.fast.decode(ids, skip_special_tokens=True) == "x   y"


@needs_llama2
def test_llama2_known_ids(converted: Callable[[str], Converted]) -> None:
    conv = converted("llama2")
    # transformers 4.47.1's conversion lost the leading "▁" here ([1, 10994, 3186]).
    assert conv.fast.encode("Hello world").ids == [1, 15043, 3186]
    assert conv.auto.encode(" Hello") == [1, 29871, 15043]
    assert conv.auto("Hello")["input_ids"] == [1, 15043]


def test_output_files(converted: Callable[[str], Converted]) -> None:
    conv = converted("synthetic-32000")
    assert sorted(conv.written) == sorted(
        ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"]
    )
    assert sorted(p.name for p in conv.out_dir.iterdir()) == sorted(conv.written)
    assert (conv.out_dir / "tokenizer.model").read_bytes() == conv.model_path.read_bytes()
    config = json.loads((conv.out_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["add_bos_token"] is True and config["add_eos_token"] is False
    assert (config["bos_token"], config["eos_token"], config["unk_token"]) == (
        "<s>",
        "</s>",
        "<unk>",
    )
    assert config["model_max_length"] == 4096
    assert config["clean_up_tokenization_spaces"] is False
    special = json.loads((conv.out_dir / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert {k: v["content"] for k, v in special.items()} == {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
    }
    auto = conv.auto
    assert (auto.bos_token_id, auto.eos_token_id, auto.unk_token_id) == (1, 2, 0)
    assert auto.model_max_length == 4096
    assert list(auto("hi there")) == ["input_ids", "attention_mask"]  # no token_type_ids
    assert len(auto) == conv.sp.vocab_size()


@pytest.mark.parametrize(
    "name",
    _model_params(
        [
            "code-synthetic-normal",
            "code-synthetic-userdef",
            "code-llama2-normal",
            "code-llama2-userdef",
        ]
    ),
)
def test_code_llama_infilling_pieces(converted: Callable[[str], Converted], name: str) -> None:
    conv = converted(name)
    assert tokenizer_vocab_size(conv.model_path, family=Family.CODE_LLAMA) == 32016
    infill_ids = [conv.sp.piece_to_id(p) for p in CODE_LLAMA_INFILL]
    assert infill_ids == [32007, 32008, 32009, 32010]
    for idx, piece in enumerate(CODE_LLAMA_PIECES, start=32000):
        assert conv.fast.token_to_id(piece) == idx
        assert conv.auto.convert_ids_to_tokens(idx) == piece
    texts = [
        "<PRE> def f(x): <SUF>\n    return x <MID>",
        " <PRE> <SUF> <MID> <EOT>",
        "<PRE><SUF><MID><EOT>",
        "a <EOT>",
        "<PREFIX> <SU <MI <E",
    ]
    bad = _mismatches(conv, [(t, t) for t in texts])
    assert not bad, "\n".join(bad)
    # Non-vacuous: the samples really produce the infilling ids.
    produced = {i for t in texts for i in conv.sp.encode(t)}
    assert set(infill_ids) <= produced
    for text in texts:
        ids = conv.fast.encode(text).ids
        assert conv.fast.decode(ids, skip_special_tokens=True) == conv.sp.decode(ids) == text


def test_user_defined_pieces_and_literal_space_char(converted: Callable[[str], Converted]) -> None:
    conv = converted("code-synthetic-userdef")
    pre = conv.sp.piece_to_id("\u2581<PRE>")
    # sentencepiece matches user-defined pieces whole, after adding the dummy prefix.
    assert conv.sp.encode("<PRE>") == [pre]
    assert conv.fast.encode("<PRE>").ids == [1, pre]
    # The documented exception: text starting with a literal "▁" gets no dummy prefix.
    for text in ("\u2581x", "\u2581<PRE> y", "\u2581\u2581 z"):
        assert conv.fast.encode(text).ids == [1, *conv.sp.encode(text[1:])]
        assert conv.fast.encode(text).ids != [1, *conv.sp.encode(text)]
    # Models without user-defined pieces have no exception.
    plain = converted("synthetic-32000")
    assert plain.fast.encode("\u2581x").ids == [1, *plain.sp.encode("\u2581x")]


def test_model_without_dummy_prefix(tmp_path: Path) -> None:
    # Not LLaMA's setting, but a supported one: no Prepend normalizer and no Strip decoder.
    no_prefix = spm_writer.len_field(
        spm_proto.MODEL_NORMALIZER_SPEC,
        spm_writer.varint_field(spm_proto.NORMALIZER_ADD_DUMMY_PREFIX, 0),
    )
    path = tmp_path / "tokenizer.model"
    path.write_bytes(build_sentencepiece_model(2000, seed=5) + no_prefix)
    conv = _convert(path, tmp_path / "hf", Family.LLAMA2)
    assert not conv.sp.encode("Hello", out_type=str)[0].startswith("\u2581")  # setting applied
    bad = _mismatches(conv, PLAIN)
    assert not bad, "\n".join(bad[:10])
    for _, text in PLAIN[:50]:
        ids = conv.fast.encode(text).ids
        assert conv.fast.decode(ids, skip_special_tokens=True) == conv.sp.decode(ids)
