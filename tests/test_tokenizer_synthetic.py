"""Synthetic tokenizer.model files and the hand-written protobuf they are made of."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm
from tiktoken.load import load_tiktoken_bpe

from fixtures import spm_writer
from fixtures.synthetic_tokenizer import (
    CODE_LLAMA_PIECES,
    add_code_llama_pieces,
    build_sentencepiece_model,
    build_tiktoken_ranks,
    write_synthetic_tokenizer,
)
from streamconv.tokenizer import spm_proto

ENGLISH = "The model was converted and the weights were checked before they could be used."


def _load_ranks(path: Path) -> dict[bytes, int]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")
        return load_tiktoken_bpe(str(path))


@pytest.mark.parametrize("vocab_size", [355, 512, 1000, 32000])
def test_sentencepiece_exact_size_and_layout(tmp_path: Path, vocab_size: int) -> None:
    path = tmp_path / "tokenizer.model"
    write_synthetic_tokenizer(path, kind="sentencepiece", vocab_size=vocab_size, seed=0)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert sp.vocab_size() == vocab_size
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert all(sp.is_byte(i) and sp.id_to_piece(i) == f"<0x{i - 3:02X}>" for i in range(3, 259))
    pieces = [sp.id_to_piece(i) for i in range(259, vocab_size)]
    scores = [sp.get_score(i) for i in range(259, vocab_size)]
    assert len(set(pieces)) == len(pieces)
    assert scores == sorted(scores, reverse=True), "scores must not rise with the id"
    vocab = set(pieces)
    for piece in pieces:  # BPE-consistent: every multi-character piece is two pieces joined
        if len(piece) > 1:
            assert any(piece[:i] in vocab and piece[i:] in vocab for i in range(1, len(piece)))
    # Byte fallback works: an emoji the vocab lacks becomes its four UTF-8 bytes.
    assert sp.encode("😀", out_type=str)[-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert sp.decode(sp.encode("Größe 😀  x")) == "Größe 😀  x"


def test_sentencepiece_settings_are_llamas() -> None:
    settings = spm_proto.read_settings(build_sentencepiece_model(1000))
    assert settings == spm_proto.SpmSettings(
        model_type=spm_proto.MODEL_TYPE_BPE,
        byte_fallback=True,
        treat_whitespace_as_suffix=False,
        normalizer_name="identity",
        has_charsmap=False,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        escape_whitespaces=True,
    )


def test_sentencepiece_english_gets_multichar_pieces() -> None:
    sp = spm.SentencePieceProcessor(model_proto=build_sentencepiece_model(32000))
    pieces = sp.encode(ENGLISH, out_type=str)
    assert len(pieces) < len(ENGLISH) / 3, pieces
    assert "\u2581the" in pieces


def test_sentencepiece_too_small() -> None:
    with pytest.raises(ValueError, match="at least"):
        build_sentencepiece_model(300)


@pytest.mark.parametrize("vocab_size", [256, 300, 1000, 128000])
def test_tiktoken_exact_size_and_consistency(tmp_path: Path, vocab_size: int) -> None:
    path = tmp_path / "tokenizer.model"
    write_synthetic_tokenizer(path, kind="tiktoken", vocab_size=vocab_size, seed=0)
    ranks = _load_ranks(path)
    assert len(ranks) == vocab_size
    assert sorted(ranks.values()) == list(range(vocab_size))
    assert all(ranks[bytes([b])] == b for b in range(256))
    for token, rank in ranks.items():  # every token is two lower-ranked tokens joined
        if len(token) > 1:
            assert any(
                ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank
                for i in range(1, len(token))
            ), token


def test_tiktoken_english_gets_multibyte_tokens() -> None:
    ranks = build_tiktoken_ranks(128000)
    assert b" the" in ranks[:2000] and b" model" in ranks
    assert "о".encode() in ranks[:2000]  # Cyrillic: the training text has other languages


def test_tiktoken_too_small() -> None:
    with pytest.raises(ValueError, match="at least 256"):
        build_tiktoken_ranks(255)


def test_seeds(tmp_path: Path) -> None:
    for kind, size in (("sentencepiece", 5000), ("tiktoken", 5000)):
        a, b, c = (tmp_path / f"{kind}-{n}" for n in "abc")
        write_synthetic_tokenizer(a, kind=kind, vocab_size=size, seed=1)  # type: ignore[arg-type]
        write_synthetic_tokenizer(b, kind=kind, vocab_size=size, seed=1)  # type: ignore[arg-type]
        write_synthetic_tokenizer(c, kind=kind, vocab_size=size, seed=2)  # type: ignore[arg-type]
        assert a.read_bytes() == b.read_bytes()
        assert a.read_bytes() != c.read_bytes()


def test_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        write_synthetic_tokenizer(tmp_path / "x", kind="bpe", vocab_size=1000)  # type: ignore[arg-type]




def test_code_llama_pieces_appended(tmp_path: Path) -> None:
    base, code = tmp_path / "base.model", tmp_path / "code.model"
    write_synthetic_tokenizer(base, kind="sentencepiece", vocab_size=32000)
    add_code_llama_pieces(base, code, user_defined=True)
    sp = spm.SentencePieceProcessor(model_file=str(code))
    assert sp.vocab_size() == 32016
    assert [sp.id_to_piece(i) for i in range(32000, 32016)] == list(CODE_LLAMA_PIECES)
    assert sp.encode("<MID>") == [32009]  # user-defined: matched whole
    base_sp = spm.SentencePieceProcessor(model_file=str(base))
    assert [sp.id_to_piece(i) for i in range(32000)] == [
        base_sp.id_to_piece(i) for i in range(32000)
    ]


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31 - 1, 2**63, -1, -(2**31)])
def test_varint_round_trip(value: int) -> None:
    encoded = spm_writer.varint_field(7, value)
    (field,) = spm_proto.read_fields(encoded)
    assert (field.number, field.wire_type) == (7, 0)
    assert field.value == value % 2**64  # negatives are sign-extended to 64 bits
    assert field.raw == encoded


def test_read_fields_rejects_truncated_data() -> None:
    encoded = spm_writer.len_field(1, b"hello")
    for cut in range(1, len(encoded)):
        with pytest.raises(ValueError):
            spm_proto.read_fields(encoded[:cut])
    with pytest.raises(ValueError, match="wire type"):
        spm_proto.read_fields(b"\x0b")  # wire type 3 (groups) is not used by sentencepiece


def test_pieces_parse_back() -> None:
    piece = spm_writer.encode_piece("▁héllo", -2.5, spm_proto.PIECE_USER_DEFINED)
    (outer,) = spm_proto.read_fields(piece)
    assert isinstance(outer.value, bytes)
    inner = {f.number: f.value for f in spm_proto.read_fields(outer.value)}
    assert inner[spm_proto.PIECE_TEXT] == "▁héllo".encode()
    assert inner[spm_proto.PIECE_TYPE] == spm_proto.PIECE_USER_DEFINED
    assert inner[spm_proto.PIECE_SCORE] == 0xC0200000  # -2.5 as a little-endian float32
