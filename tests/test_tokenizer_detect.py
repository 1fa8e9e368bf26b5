"""detect_tokenizer_kind, tokenizer_vocab_size and the errors a bad tokenizer.model gives."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures import spm_writer
from fixtures.synthetic_tokenizer import (
    add_code_llama_pieces,
    build_sentencepiece_model,
    write_synthetic_tokenizer,
)
from streamconv.errors import TokenizerError
from streamconv.model.family import Family
from streamconv.tokenizer import spm_proto
from streamconv.tokenizer.files import (
    detect_tokenizer_kind,
    tokenizer_vocab_size,
    write_tokenizer_files,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spm") / "tokenizer.model"
    write_synthetic_tokenizer(path, kind="sentencepiece", vocab_size=777, seed=0)
    return path


@pytest.fixture(scope="module")
def tiktoken_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiktoken") / "tokenizer.model"
    write_synthetic_tokenizer(path, kind="tiktoken", vocab_size=1000, seed=0)
    return path


def test_detects_generated_files(spm_model: Path, tiktoken_model: Path) -> None:
    assert detect_tokenizer_kind(spm_model) == "sentencepiece"
    assert detect_tokenizer_kind(tiktoken_model) == "tiktoken"


@pytest.mark.parametrize(
    ("file_name", "kind"),
    [("llama2_tokenizer.model", "sentencepiece"), ("llama3_tokenizer.model", "tiktoken")],
)
def test_detects_real_files(file_name: str, kind: str) -> None:
    path = SHARED_DATA / file_name
    if not path.is_file():
        pytest.skip(f"{path} not available (no ../shared/data)")
    assert detect_tokenizer_kind(path) == kind


def test_vocab_sizes(spm_model: Path, tiktoken_model: Path, tmp_path: Path) -> None:
    assert tokenizer_vocab_size(spm_model, family=Family.LLAMA2) == 777
    assert tokenizer_vocab_size(spm_model, family=Family.LLAMA1) == 777
    assert tokenizer_vocab_size(tiktoken_model, family=Family.LLAMA3_2) == 1000 + 256
    code = tmp_path / "code.model"
    add_code_llama_pieces(spm_model, code)
    assert tokenizer_vocab_size(code, family=Family.CODE_LLAMA) == 777 + 16


def test_real_vocab_sizes() -> None:
    llama2, llama3 = SHARED_DATA / "llama2_tokenizer.model", SHARED_DATA / "llama3_tokenizer.model"
    if not (llama2.is_file() and llama3.is_file()):
        pytest.skip(f"{SHARED_DATA} does not hold the real tokenizers")
    assert tokenizer_vocab_size(llama2, family=Family.LLAMA2) == 32000
    assert tokenizer_vocab_size(llama3, family=Family.LLAMA3_1) == 128256


def _raises_naming(path: Path, *fragments: str) -> None:
    """Every entry point raises TokenizerError with the path and the given words."""
    calls: list[Callable[[], object]] = [
        lambda: detect_tokenizer_kind(path),
        lambda: tokenizer_vocab_size(path, family=Family.LLAMA2),
        lambda: write_tokenizer_files(
            path, path.parent, family=Family.LLAMA2, instruct=False, model_max_length=4096
        ),
    ]
    for call in calls:
        with pytest.raises(TokenizerError) as info:
            call()
        message = str(info.value)
        assert str(path) in message
        for fragment in fragments:
            assert fragment in message
        assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    _raises_naming(tmp_path / "tokenizer.model", "does not exist")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    folder = tmp_path / "tokenizer.model"
    folder.mkdir()
    _raises_naming(folder, "is a folder")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"")
    _raises_naming(path, "is empty")


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda good: good[: len(good) // 2], id="truncated"),
        pytest.param(lambda good: b"\x00\xff" * 500, id="garbage"),
        pytest.param(lambda good: b"\x0a\x03abc", id="not-a-model"),
        pytest.param(lambda good: b"<html>404 Not Found</html>\n", id="html"),
    ],
)
def test_corrupt_sentencepiece(tmp_path: Path, spm_model: Path, corrupt: object) -> None:
    assert callable(corrupt)
    path = tmp_path / "tokenizer.model"
    path.write_bytes(corrupt(spm_model.read_bytes()))
    _raises_naming(path, "SentencePiece model", "replace it with the tokenizer.model")


def _line(token: bytes, rank: int) -> str:
    return f"{base64.b64encode(token).decode()} {rank}\n"


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        pytest.param(["IQ== 0\n", "!!notbase64 1\n"], "line 2", id="bad-base64"),
        pytest.param(["IQ== 0\n", "Ig== x\n"], "line 2", id="bad-rank"),
        pytest.param(["IQ== 0\n", "Ig== 1 extra\n"], "line 2", id="extra-field"),
        pytest.param([_line(bytes([b]), b + 1) for b in range(256)], "without gaps", id="gap"),
        pytest.param([_line(bytes([b]), b) for b in range(255)], "single-byte", id="no-byte-255"),
        pytest.param(["IQ== 0\n", "IQ== 1\n"], "repeats", id="duplicate"),
    ],
)
def test_corrupt_tiktoken(tmp_path: Path, lines: list[str], fragment: str) -> None:
    path = tmp_path / "tokenizer.model"
    path.write_text("".join(lines), encoding="ascii")
    with pytest.raises(TokenizerError, match=fragment) as info:
        detect_tokenizer_kind(path)
    assert str(path) in str(info.value)


def test_family_mismatch(spm_model: Path, tiktoken_model: Path, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="sentencepiece tokenizer but LLaMA 3.1 uses tiktoken"):
        tokenizer_vocab_size(spm_model, family=Family.LLAMA3_1)
    with pytest.raises(
        TokenizerError, match="tiktoken tokenizer but Code Llama uses sentencepiece"
    ):
        write_tokenizer_files(
            tiktoken_model, tmp_path, family=Family.CODE_LLAMA, instruct=False, model_max_length=1
        )
    assert list(tmp_path.iterdir()) == []  # nothing written before the check


def _with_normalizer(model: bytes, number: int, value: int) -> bytes:
    # A second NormalizerSpec occurrence is merged into the first, as protobuf does.
    extra = spm_writer.len_field(
        spm_proto.MODEL_NORMALIZER_SPEC, spm_writer.varint_field(number, value)
    )
    return model + extra


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            lambda m: _with_normalizer(m, spm_proto.NORMALIZER_REMOVE_EXTRA_WHITESPACES, 1),
            "remove_extra_whitespaces",
        ),
        (
            lambda m: (
                m
                + spm_writer.len_field(
                    spm_proto.MODEL_TRAINER_SPEC,
                    spm_writer.varint_field(spm_proto.TRAINER_MODEL_TYPE, 1),
                )
            ),
            "only BPE",
        ),
        (
            lambda m: (
                m
                + spm_writer.len_field(
                    spm_proto.MODEL_TRAINER_SPEC,
                    spm_writer.varint_field(spm_proto.TRAINER_BYTE_FALLBACK, 0),
                )
            ),
            "byte_fallback",
        ),
        (
            lambda m: spm_writer.insert_pieces(
                m, [spm_writer.encode_piece("zzz", -1.0, spm_proto.PIECE_UNUSED)]
            ),
            "UNUSED",
        ),
    ],
)
def test_unsupported_sentencepiece_settings(tmp_path: Path, change: object, fragment: str) -> None:
    assert callable(change)
    path = tmp_path / "tokenizer.model"
    path.write_bytes(change(build_sentencepiece_model(600)))
    with pytest.raises(TokenizerError, match=fragment) as info:
        detect_tokenizer_kind(path)
    assert str(path) in str(info.value)
