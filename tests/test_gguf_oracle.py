"""The llama.cpp harness itself (tests/gguf_oracle.py), before other tests lean on it.

- gguf_differences finds a flipped byte in one tensor and a changed value of one key, and
  nothing between a file and itself: an empty diff means equal, not "did not look".
- read_gguf (the fast reader) reads what gguf-py's GGUFReader reads.
- llama.cpp run through the gguf venv gives, on its own f32 GGUF of a model, the logits and the
  greedy tokens transformers' LlamaForCausalLM gives on the Hugging Face folder it came from.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf_cases import CASES, BuiltCase, CaseBuilder
from gguf_oracle import (
    gguf_differences,
    llama_cpp_greedy,
    llama_cpp_logits,
    read_gguf,
)

F32_CASE = next(c for c in CASES if c.outtype == "f32")
TOKENS = [1, 17, 300, 5, 42, 99, 250, 7, 511, 64, 3, 128]


@pytest.fixture(scope="module")
def f32_case(built_case: CaseBuilder) -> BuiltCase:
    return built_case(F32_CASE)


def test_differences_find_one_flipped_byte_and_one_changed_value(f32_case: BuiltCase,
                                                                  tmp_path: Path) -> None:
    original = f32_case.llama_cpp_gguf
    assert gguf_differences(original, original) == []
    contents = read_gguf(original)
    tensor = contents.tensors[len(contents.tensors) // 2]
    flipped = tmp_path / "flipped.gguf"
    shutil.copyfile(original, flipped)
    with flipped.open("r+b") as f:
        f.seek(tensor.offset + tensor.n_bytes // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    assert gguf_differences(flipped, original) == [f"tensor {tensor.name}: bytes differ"]

    data = original.read_bytes()
    needle = b"llama.context_length"
    at = data.index(needle) + len(needle) + 4  # after the key and its uint32 type
    changed = tmp_path / "changed.gguf"
    changed.write_bytes(data[:at] + (1234).to_bytes(4, "little") + data[at + 4:])
    assert gguf_differences(changed, original) == [
        f"llama.context_length: 1234, llama.cpp has {int.from_bytes(data[at:at + 4], 'little')}"]


def test_fast_reader_reads_what_gguf_py_reads(f32_case: BuiltCase) -> None:
    path = f32_case.llama_cpp_gguf
    reader = gguf.GGUFReader(path)
    expected = [(name, tuple(int(t) for t in field.types), field.contents())
                for name, field in reader.fields.items() if not name.startswith("GGUF.")]
    contents = read_gguf(path)
    assert contents.metadata == expected
    assert [(t.name, t.shape, t.ggml_type, t.offset, t.n_bytes) for t in contents.tensors] == [
        (t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), int(t.data_offset),
         int(t.n_bytes)) for t in reader.tensors]


def _transformers_logits(hf_dir: Path, tokens: list[int]) -> np.ndarray:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        logits: np.ndarray = model(torch.tensor([tokens])).logits[0].numpy()
    return logits


def test_llama_cpp_logits_and_greedy_tokens_equal_transformers(f32_case: BuiltCase) -> None:
    ours = llama_cpp_logits(f32_case.llama_cpp_gguf, TOKENS)
    want = _transformers_logits(f32_case.hf_dir, TOKENS)
    assert ours.shape == want.shape
    scale = float(np.abs(want).max())
    assert float(np.abs(ours - want).max()) <= 1e-4 * max(scale, 1.0)

    prompt, n_new = TOKENS[:4], 6
    sequence = list(prompt)
    for _ in range(n_new):  # transformers' greedy continuation
        sequence.append(int(np.argmax(_transformers_logits(f32_case.hf_dir, sequence)[-1])))
    assert llama_cpp_greedy(f32_case.llama_cpp_gguf, prompt, n_new=n_new) == sequence[len(prompt):]


def test_auto_outtype_is_llama_cpp_guess(f32_case: BuiltCase, tmp_path: Path) -> None:
    """llama.cpp's --outtype auto on an f32 folder writes what auto_outtype(FLOAT32) names."""
    from gguf_oracle import llama_cpp_convert

    from streamconv.model.gguf_metadata import GGUF_FILE_TYPES, auto_outtype
    from streamconv.system.dtypes import FLOAT32

    out = llama_cpp_convert(f32_case.hf_dir, tmp_path / "auto.gguf", outtype="auto")
    file_type = next(v for k, _, v in read_gguf(out).metadata if k == "general.file_type")
    assert file_type == int(GGUF_FILE_TYPES[auto_outtype(FLOAT32)])
