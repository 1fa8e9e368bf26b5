"""The models of the GGUF tests: a Meta-format checkpoint, streamconv's Hugging Face folder of it
(named like the published repo, since llama.cpp takes general.name and friends from the folder's
name) and llama.cpp's own GGUF of that folder, each built once per session.

LLaMA 1/2 use Meta's real SentencePiece model and LLaMA 3.x Meta's real tiktoken ranks
(../shared/data): llama.cpp's converter names a BPE pre-tokenizer by hashing the ids of a fixed
text and refuses vocabularies it does not know, so a synthetic tiktoken vocabulary cannot reach
it. Code Llama uses a synthetic SentencePiece model (its 32016-piece model is not in
../shared/data). Shapes are tiny apart from the vocabulary: 2 layers, width 64.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SHARED_DATA, in_process_budget
from gguf_oracle import gguf_python, llama_cpp_convert

from fixtures.synthetic import SyntheticSpec, tiny, write_checkpoint
from streamconv.cli.main import main
from streamconv.model.family import Family

LLAMA2_TOKENIZER = SHARED_DATA / "llama2_tokenizer.model"
LLAMA3_TOKENIZER = SHARED_DATA / "llama3_tokenizer.model"
# Made from LLAMA2_TOKENIZER in the case's folder (write_code_llama_tokenizer).
CODE_LLAMA_TOKENIZER = Path("code-llama-like.model")
# Found in .venv-meta (tests/test_tokenizer_llama4.py, LLAMA4_MODEL) when a case is built.
LLAMA4_TOKENIZER = Path("llama4-meta.model")


@dataclass(frozen=True)
class GGUFCase:
    case_id: str
    family: Family
    instruct: bool
    hf_name: str  # the published repo's name: llama.cpp's general.name comes from it
    outtype: str
    real_tokenizer: Path | None  # None: the fixture's synthetic tokenizer
    llama4: str | None = None  # "scout" / "maverick": fixtures/llama4_layout.py's shapes
    ranks: int = 1  # Llama 4: rank files (more than one: the experts' bands come from each)

    @property
    def checkpoint_spec(self) -> SyntheticSpec:
        if self.real_tokenizer is None:
            return tiny(self.family)
        vocab = 128256 if self.family.is_llama3 else (
            32016 if self.real_tokenizer == CODE_LLAMA_TOKENIZER else 32000)
        return tiny(self.family, vocab_size=vocab, params_vocab_size=vocab if
                    self.family.is_llama3 else -1, with_tokenizer=False)

    @property
    def unknown_pre_tokenizer(self) -> str | None:
        """What llama_cpp_convert must name the pre-tokenizer (a synthetic Llama 4 vocabulary:
        gguf_oracle.llama_cpp_convert says why)."""
        return "llama4" if self.family is Family.LLAMA4 and self.real_tokenizer is None else None

    @property
    def convert_args(self) -> list[str]:
        variant = "--instruct" if self.instruct else "--base"
        if self.family is Family.LLAMA4:  # always detected from params.json
            return [variant]
        return ["--llama-version", self.family.value, variant]


# Every outtype once, every family, base and instruct, the tied 3.2 and the scaled-rope 3.1.
CASES = (
    GGUFCase("llama1", Family.LLAMA1, False, "llama-7b", "f16", LLAMA2_TOKENIZER),
    GGUFCase("llama2-chat", Family.LLAMA2, True, "Llama-2-7b-chat-hf", "bf16", LLAMA2_TOKENIZER),
    GGUFCase("codellama-instruct", Family.CODE_LLAMA, True, "CodeLlama-7b-Instruct-hf", "f32",
             None),
    # 32016 ids: llama.cpp's infilling branch (eot id 32010) for Code Llama's vocabulary size.
    GGUFCase("codellama-32016", Family.CODE_LLAMA, False, "CodeLlama-7b-hf", "q8_0",
             CODE_LLAMA_TOKENIZER),
    GGUFCase("llama3-instruct", Family.LLAMA3, True, "Meta-Llama-3-8B-Instruct", "f16",
             LLAMA3_TOKENIZER),
    GGUFCase("llama3.1", Family.LLAMA3_1, False, "Llama-3.1-8B", "q8_0", LLAMA3_TOKENIZER),
    GGUFCase("llama3.2-instruct", Family.LLAMA3_2, True, "Llama-3.2-1B-Instruct", "bf16",
             LLAMA3_TOKENIZER),
    # Llama 4's text model (llama.cpp's llama4 architecture). Scout with Meta's tokenizer as
    # llama-models ships it (in .venv-meta); Maverick with a synthetic Llama-4-style tiktoken
    # file, whose pre-tokenizer llama.cpp is told (gguf_oracle.llama_cpp_convert,
    # unknown_pre_tokenizer) since it knows only the hashes of real vocabularies.
    GGUFCase("llama4-scout-instruct", Family.LLAMA4, True, "Llama-4-Scout-17B-16E-Instruct",
             "bf16", LLAMA4_TOKENIZER, llama4="scout"),
    GGUFCase("llama4-maverick", Family.LLAMA4, False, "Llama-4-Maverick-17B-128E", "f16",
             None, llama4="maverick", ranks=2),
)
LLAMA4_RANKS = 3000  # + 2048 specials


@dataclass(frozen=True)
class BuiltCase:
    case: GGUFCase
    checkpoint: Path
    hf_dir: Path
    llama_cpp_gguf: Path


class CaseBuilder:
    """case -> BuiltCase, each step done once per session (llama.cpp's converter takes ~20 s on a
    128k vocabulary)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._built: dict[str, BuiltCase] = {}

    def __call__(self, case: GGUFCase) -> BuiltCase:
        if case.case_id not in self._built:
            self._built[case.case_id] = self._build(case)
        return self._built[case.case_id]

    def _build(self, case: GGUFCase) -> BuiltCase:
        gguf_python()  # skip before building anything when llama.cpp cannot run
        folder = self._root / case.case_id
        source = case.real_tokenizer
        if source == CODE_LLAMA_TOKENIZER:
            source = write_code_llama_tokenizer(folder / CODE_LLAMA_TOKENIZER.name)
        elif source == LLAMA4_TOKENIZER:
            from test_tokenizer_llama4 import LLAMA4_MODEL

            source = LLAMA4_MODEL
        if source is not None and not source.is_file():
            pytest.skip(f"{source} not available (../shared/data, or .venv-meta for Llama 4)")
        if case.llama4 is not None:
            checkpoint = _write_llama4(case.llama4, folder / "meta", real=source is not None,
                                       n_ranks=case.ranks)
        else:
            checkpoint = write_checkpoint(case.checkpoint_spec, folder / "meta")
        if source is not None:
            shutil.copyfile(source, checkpoint / "tokenizer.model")
        hf_dir = folder / case.hf_name
        argv = [str(checkpoint), str(hf_dir), "--quiet", "--max-ram", in_process_budget(),
                *case.convert_args]
        assert main(argv) == 0
        theirs = llama_cpp_convert(
            hf_dir, folder / f"llama-cpp-{case.outtype}.gguf", outtype=case.outtype,
            unknown_pre_tokenizer=case.unknown_pre_tokenizer)
        return BuiltCase(case, checkpoint, hf_dir, theirs)


def _write_llama4(shape: str, folder: Path, *, real: bool, n_ranks: int) -> Path:
    from fixtures.llama4_checkpoint import write_llama4_checkpoint
    from fixtures.llama4_layout import VisionSpec, maverick_like, scout_like
    from fixtures.synthetic_tokenizer import write_synthetic_tokenizer

    like = scout_like if shape == "scout" else maverick_like
    ranks = 200000 if real else LLAMA4_RANKS  # Meta's: 200,000 ranks + 2,048 specials
    spec = like(vision=VisionSpec(), n_ranks=n_ranks, vocab_size=ranks + 2048)
    checkpoint = write_llama4_checkpoint(spec, folder)
    if not real:
        write_synthetic_tokenizer(checkpoint / "tokenizer.model", kind="tiktoken",
                                  vocab_size=LLAMA4_RANKS, style="llama4")
    return checkpoint


def write_code_llama_tokenizer(path: Path) -> Path:
    """Meta's LLaMA 2 SentencePiece model with 16 pieces appended, as Code Llama's has (32016
    ids; its infilling pieces are 32007-32010). The appended pieces' texts are stand-ins: Code
    Llama's own model is not in ../shared/data. Returns ``path`` (LLAMA2_TOKENIZER's path when
    that file is missing, so the caller skips)."""
    if not LLAMA2_TOKENIZER.is_file():
        return LLAMA2_TOKENIZER
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    model = model_pb2.ModelProto()
    model.ParseFromString(LLAMA2_TOKENIZER.read_bytes())
    names = {7: "\u2581<PRE>", 8: "\u2581<SUF>", 9: "\u2581<MID>", 10: "\u2581<EOT>"}
    for i in range(16):
        piece = model.pieces.add()
        piece.piece = names.get(i, f"<code-{i}>")
        piece.score = 0.0
        piece.type = model_pb2.ModelProto.SentencePiece.USER_DEFINED
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
