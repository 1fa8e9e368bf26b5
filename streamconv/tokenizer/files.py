"""tokenizer.model -> the Hugging Face tokenizer files of a converted model.

LLaMA 1, LLaMA 2 and Code Llama ship a SentencePiece model; LLaMA 3.x and Llama 4 ship a tiktoken
ranks file under the same name. This module tells them apart and dispatches; from_sentencepiece.py
and from_tiktoken.py build the files (tiktoken_specials.py says what each tiktoken family adds to
its ranks), chat_templates.py loads the published chat templates (templates/*.jinja); the fixtures'
fixtures/synthetic_tokenizer.py makes tokenizer.model files for tests and demos.
Nothing here imports tokenizers, transformers or tiktoken: the output is plain JSON in the
formats those libraries read.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from streamconv.errors import TokenizerError
from streamconv.model.families.registry import describe
from streamconv.tokenizer import from_sentencepiece as tokenizer_spm
from streamconv.tokenizer import from_tiktoken as tokenizer_tiktoken
from streamconv.tokenizer import tokenizer_json
from streamconv.tokenizer.chat_templates import chat_template
from streamconv.tokenizer.tiktoken_specials import tiktoken_scheme

__all__ = [
    "chat_template",
    "detect_tokenizer_kind",
    "tokenizer_vocab_size",
    "write_tokenizer_files",
]

log = logging.getLogger(__name__)

TokenizerKind = Literal["sentencepiece", "tiktoken"]

# The first line of a tiktoken ranks file: base64 token, one space, decimal rank.
_TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2} [0-9]+\r?\n")


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise TokenizerError(
            f"{path} does not exist; copy the tokenizer.model shipped with the checkpoint there"
        ) from e
    except IsADirectoryError as e:
        raise TokenizerError(f"{path} is a folder; pass the tokenizer.model file itself") from e
    except OSError as e:
        raise TokenizerError(f"{path} cannot be read ({e.strerror}); check its permissions") from e
    if not data:
        raise TokenizerError(
            f"{path} is empty; replace it with the tokenizer.model shipped with the checkpoint"
        )
    return data


def _kind_of(data: bytes) -> TokenizerKind:
    # A ranks file is ASCII text; a serialized ModelProto starts with a protobuf tag byte.
    return "tiktoken" if _TIKTOKEN_LINE.match(data[:200]) else "sentencepiece"


@dataclass(frozen=True)
class _Parsed:
    kind: TokenizerKind
    spm: tokenizer_spm.SpmModel | None = None
    ranks: dict[bytes, int] | None = None


@functools.lru_cache(maxsize=1)
def _parse_bytes(path: Path, data: bytes) -> _Parsed:
    if _kind_of(data) == "tiktoken":
        return _Parsed("tiktoken", ranks=tokenizer_tiktoken.read_ranks(path, data))
    return _Parsed("sentencepiece", spm=tokenizer_spm.load_spm(path, data))


def _parse(path: Path) -> _Parsed:
    """The parsed file. A conversion asks three times (kind, vocab size, files): the last parse
    is kept, keyed by path and content, so the file is parsed once. It stays in memory until
    the next tokenizer is parsed; prepare() measures the baseline RSS after it, so the plan
    counts it."""
    return _parse_bytes(path, _read(path))


def detect_tokenizer_kind(path: Path) -> Literal["sentencepiece", "tiktoken"]:
    """Which format ``path`` is in, after checking that it parses completely."""
    return _parse(path).kind


def _check_family(path: Path, kind: TokenizerKind, family: str) -> None:
    description = describe(family)
    expected: TokenizerKind = description.tokenizer.kind
    if kind != expected:
        raise TokenizerError(
            f"{path} is a {kind} tokenizer but {description.label} uses {expected}; pass the "
            "family this checkpoint belongs to, or the tokenizer.model shipped with it"
        )


def tokenizer_vocab_size(path: Path, *, family: str) -> int:
    """How many ids the model's embedding must have rows for.

    SentencePiece: every piece (32000 for LLaMA 1/2; Code Llama's model already holds its 16
    infilling pieces, 32016). tiktoken: the ranks plus the specials Meta adds in code (LLaMA 3.x:
    256, 128256 in all; Llama 4: 2048, 202048 in all).
    """
    parsed = _parse(path)
    _check_family(path, parsed.kind, family)
    if parsed.ranks is not None:
        return len(parsed.ranks) + tiktoken_scheme(family).embedding_rows
    assert parsed.spm is not None
    return parsed.spm.vocab_size


def tokenizer_files(
    path: Path, *, family: str, instruct: bool, model_max_length: int
) -> dict[str, bytes]:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json (and, for SentencePiece, a
    copy of tokenizer.model) as file name -> bytes, ready to publish with the shards."""
    parsed = _parse(path)
    kind = parsed.kind
    _check_family(path, kind, family)
    template = chat_template(family, instruct=instruct)
    if instruct and template is None:
        log.info("%s has no published chat template; none written", describe(family).label)
    documents: dict[str, Any]
    if parsed.spm is not None:
        model = parsed.spm
        documents = {
            "tokenizer.json": tokenizer_spm.build_tokenizer_json(model),
            "tokenizer_config.json": tokenizer_spm.build_tokenizer_config(
                model, model_max_length=model_max_length, chat_template=template
            ),
            "special_tokens_map.json": tokenizer_spm.build_special_tokens_map(model),
        }
    else:
        assert parsed.ranks is not None
        ranks = parsed.ranks
        scheme = tiktoken_scheme(family)
        documents = {
            "tokenizer.json": tokenizer_tiktoken.build_tokenizer_json(ranks, scheme),
            "tokenizer_config.json": tokenizer_tiktoken.build_tokenizer_config(
                scheme,
                n_ranks=len(ranks),
                instruct=instruct,
                model_max_length=model_max_length,
                chat_template=template,
            ),
            "special_tokens_map.json": tokenizer_tiktoken.build_special_tokens_map(
                scheme, instruct=instruct
            ),
        }
    files = {name: tokenizer_json.to_text(document).encode("utf-8")
             for name, document in documents.items()}
    if kind == "sentencepiece":
        # Kept for tools that read the SentencePiece model itself (LlamaTokenizer, llama.cpp).
        files["tokenizer.model"] = path.read_bytes()
    log.info("built %s tokenizer files: %s", kind, ", ".join(files))
    return files


def write_tokenizer_files(
    path: Path, out_dir: Path, *, family: str, instruct: bool, model_max_length: int
) -> list[str]:
    """tokenizer_files() written into ``out_dir``; returns the file names written."""
    files = tokenizer_files(path, family=family, instruct=instruct,
                            model_max_length=model_max_length)
    for name, content in files.items():
        (out_dir / name).write_bytes(content)
    return list(files)
