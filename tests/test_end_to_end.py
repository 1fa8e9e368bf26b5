"""Whole folders as users get them: tokenizer files included, loaded by the Auto classes."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sentencepiece
import torch
from conftest import in_process_budget
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from fixtures.synthetic import SyntheticSpec, tiny
from streamconv.cli.main import main
from streamconv.model.family import Family

MakeCkpt = Callable[[SyntheticSpec], Path]
TEXT = "Hello world, streaming conversion: 3 shards in 400M."


@pytest.mark.parametrize("family", [Family.LLAMA2, Family.CODE_LLAMA, Family.LLAMA3,
                                    Family.LLAMA3_1, Family.LLAMA3_2])
def test_auto_classes_load_the_folder(family: Family, make_checkpoint: MakeCkpt,
                                      tmp_path: Path) -> None:
    src = make_checkpoint(tiny(family, n_ranks=2, vocab_size=1280, params_vocab_size=1280)
                          if family.is_llama3 else tiny(family, n_ranks=2))
    assert main([str(src), str(tmp_path), "--quiet"]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json",
            "generation_config.json", "model.safetensors.index.json"} <= names
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer(TEXT)["input_ids"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert ids[0] == config["bos_token_id"]
    if not family.is_llama3:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
        assert ids == [sp.bos_id(), *sp.encode(TEXT)]
    assert tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert model.config.tie_word_embeddings == (family is Family.LLAMA3_2)
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), config["vocab_size"])
    assert torch.isfinite(logits).all()


def test_instruct_llama3_has_chat_eos_and_template(make_checkpoint: MakeCkpt,
                                                   tmp_path: Path) -> None:
    src = make_checkpoint(tiny(Family.LLAMA3_1))
    assert main([str(src), str(tmp_path), "--quiet", "--instruct"]) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    bos = config["bos_token_id"]
    assert config["eos_token_id"] == [bos + 1, bos + 8, bos + 9]
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == config["eos_token_id"]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert "<|start_header_id|>user<|end_header_id|>" in chat
    assert chat.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_plan_prints_detection_and_writes_nothing(make_checkpoint: MakeCkpt) -> None:
    src = make_checkpoint(tiny(Family.LLAMA3_2, n_ranks=2))
    before = sorted(p.name for p in src.iterdir())
    buffer = io.StringIO()
    assert main(["plan", str(src), "--max-ram", in_process_budget()],
                console=Console(file=buffer, width=400)) == 0
    out = buffer.getvalue()
    for expected in ("LLaMA 3.2", "equal to the embedding (tied)", "smallest workable budget",
                     "predicted peak RSS", "model-00001-of-00001.safetensors", "tiktoken"):
        assert expected in out
    assert sorted(p.name for p in src.iterdir()) == before
