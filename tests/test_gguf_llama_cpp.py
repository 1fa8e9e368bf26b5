"""The GGUF file from Meta's files equals llama.cpp's own conversion of the Hugging Face folder.

The oracle is llama.cpp itself (tests/gguf_oracle.py, the gguf venv): its convert_hf_to_gguf.py
run on streamconv's Hugging Face conversion of the same checkpoint (tests/gguf_cases.py), at the
same outtype. Equal means every metadata key (position, type, value; general.name given with
--model-name as llama.cpp takes it from the folder's name) and every tensor (name, position,
type, shape, bytes). llama.cpp's logits and greedy tokens are then compared on both files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import in_process_budget
from gguf_cases import CASES, LLAMA3_TOKENIZER, BuiltCase, CaseBuilder, GGUFCase
from gguf_oracle import (
    gguf_differences,
    gguf_python,
    llama_cpp_convert,
    llama_cpp_greedy,
    llama_cpp_logits,
)

from streamconv.cli.main import main
from streamconv.model.family import Family

CASE_PARAMS = [pytest.param(case, id=case.case_id) for case in CASES]
BY_ID = {case.case_id: case for case in CASES}


@pytest.fixture(scope="session")
def gguf_builder(built_case: CaseBuilder) -> CaseBuilder:
    """conftest's builder: each case is converted once per session for every GGUF module."""
    return built_case


def ours(built: BuiltCase, out: Path, *, outtype: str) -> Path:
    argv = [str(built.checkpoint), str(out), "--quiet", "--outtype", outtype, "--model-name",
            built.hf_dir.name, "--max-ram", in_process_budget(), *built.case.convert_args]
    assert main(argv) == 0
    return out


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_file_equals_llama_cpp(case: GGUFCase, gguf_builder: CaseBuilder,
                               tmp_path: Path) -> None:
    built = gguf_builder(case)
    mine = ours(built, tmp_path / "ours.gguf", outtype=case.outtype)
    assert gguf_differences(mine, built.llama_cpp_gguf) == []


# With CASES, every outtype for SentencePiece (LLaMA 1 f16, LLaMA 2 the rest) and tiktoken
# (3 f16, 3.1 q8_0 and f32, 3.2 bf16) families: tensors and metadata again. The rest of the
# family x outtype matrix runs with `make slow` (about 2 more minutes).
_DEFAULT_PAIRS = {("llama2-chat", "f32"), ("llama2-chat", "q8_0"), ("llama3.1", "f32"),
                  ("llama4-scout-instruct", "q8_0")}
_OUTTYPES = ("bf16", "f16", "f32", "q8_0")


@pytest.mark.parametrize("case_id,outtype", [
    pytest.param(case.case_id, outtype, id=f"{case.case_id}-{outtype}",
                 marks=() if (case.case_id, outtype) in _DEFAULT_PAIRS else pytest.mark.slow)
    for case in CASES
    for outtype in _OUTTYPES if outtype != case.outtype
])
def test_other_outtypes_equal_llama_cpp(case_id: str, outtype: str, gguf_builder: CaseBuilder,
                                        tmp_path: Path) -> None:
    built = gguf_builder(BY_ID[case_id])
    theirs = llama_cpp_convert(built.hf_dir, tmp_path / "theirs.gguf", outtype=outtype,
                               unknown_pre_tokenizer=built.case.unknown_pre_tokenizer)
    mine = ours(built, tmp_path / "ours.gguf", outtype=outtype)
    assert gguf_differences(mine, theirs) == []


@pytest.mark.parametrize("case_id", ["llama2-chat", "llama3.1"])
def test_llama_cpp_runs_both_files_alike(case_id: str, gguf_builder: CaseBuilder,
                                         tmp_path: Path) -> None:
    built = gguf_builder(BY_ID[case_id])
    mine = ours(built, tmp_path / "ours.gguf", outtype=built.case.outtype)
    prompt = [1, 450, 4996, 17354, 1701] if case_id.startswith("llama2") else [
        128000, 791, 4062, 14198, 39935]
    logits = llama_cpp_logits(mine, prompt)
    assert logits.shape == (len(prompt), 128256 if case_id == "llama3.1" else 32000)
    assert np.isfinite(logits).all() and logits.std() > 0
    assert np.array_equal(logits, llama_cpp_logits(built.llama_cpp_gguf, prompt))
    assert (llama_cpp_greedy(mine, prompt, n_new=8)
            == llama_cpp_greedy(built.llama_cpp_gguf, prompt, n_new=8))


@pytest.fixture(scope="module")
def fp8_mp8(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Meta's FP8 405B release in miniature (fixtures/fp8_checkpoint.py: row-scaled fp8 feed-forward
    weights in the middle layers) in 8 rank files holding 2 kv heads (each kv head on 4 ranks,
    as 405B's 8 kv heads in its 16 rank files), with Meta's real LLaMA 3 tokenizer; and
    streamconv's Hugging Face folder of it, which llama.cpp converts."""
    from fixtures.fp8_checkpoint import write_fp8_checkpoint
    from fixtures.synthetic import tiny

    tokenizer = LLAMA3_TOKENIZER
    if not tokenizer.is_file():
        pytest.skip(f"{tokenizer} not available")
    gguf_python()
    root = tmp_path_factory.mktemp("fp8-gguf")
    spec = tiny(Family.LLAMA3_1, n_ranks=8, n_layers=3, dtype="bfloat16", vocab_size=128256,
                params_vocab_size=128256, with_tokenizer=False)
    checkpoint = write_fp8_checkpoint(spec, root / "meta")
    shutil.copyfile(tokenizer, checkpoint / "tokenizer.model")
    hf_dir = root / "Llama-3.1-405B-FP8-mini"
    assert main([str(checkpoint), str(hf_dir), "--quiet", "--base",
                 "--max-ram", in_process_budget()]) == 0
    return checkpoint, hf_dir


@pytest.mark.parametrize("outtype", [pytest.param("f16", marks=pytest.mark.slow), "q8_0"])
def test_fp8_mp8_equals_llama_cpp(outtype: str, fp8_mp8: tuple[Path, Path],
                                  tmp_path: Path) -> None:
    checkpoint, hf_dir = fp8_mp8
    theirs = llama_cpp_convert(hf_dir, tmp_path / "theirs.gguf", outtype=outtype)
    mine = tmp_path / "ours.gguf"
    assert main([str(checkpoint), str(mine), "--quiet", "--base", "--outtype", outtype,
                 "--model-name", hf_dir.name, "--max-ram", in_process_budget()]) == 0
    assert gguf_differences(mine, theirs) == []
