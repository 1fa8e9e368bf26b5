"""A family registered only here converts end to end: adding a family is registering one
description (model/families/), with nothing else in the package to change.

The toy family has its own Meta tensor names (blk.N.q.weight, ...), its own Hugging Face names,
no rotary permute, its own facts and its own config builders; it is recognised by a params.json
key of its own (toy_args), as Llama 4 is by moe_args. The checkpoint is a LLaMA 2 fixture with
its tensors renamed, so its values are known.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import in_process_budget
from rich.console import Console
from safetensors.torch import load_file

from fixtures.synthetic import SyntheticSpec, tiny
from streamconv.cli.main import main
from streamconv.errors import StreamconvError
from streamconv.model.families.description import (
    FamilyDescription,
    FamilyFacts,
    TokenizerScheme,
)
from streamconv.model.families.registry import describe, register, registered
from streamconv.model.family import Family
from streamconv.model.spec import ModelSpec
from streamconv.model.tensor_table import Split, TensorEntry, TensorTable
from streamconv.pipeline.conversion import ConvertOptions, convert

MakeCkpt = Callable[[SyntheticSpec], Path]


def _layer(role: str, hf: str, meta: str, shape: tuple[str, ...], split: Split) -> TensorEntry:
    return TensorEntry(role, f"toy.blocks.{{layer}}.{hf}.weight", f"blk.{{layer}}.{meta}.weight",
                       shape, split)


# (LLaMA name in the fixture, toy Meta name): the fixture is renamed into the toy's names.
_RENAMED = {"tok_embeddings": "embed", "attention.wq": "q", "attention.wk": "k",
            "attention.wv": "v", "attention.wo": "o", "feed_forward.w1": "gate",
            "feed_forward.w3": "up", "feed_forward.w2": "down", "attention_norm": "ln1",
            "ffn_norm": "ln2", "norm": "final_norm", "output": "head"}

TOY_TENSORS = TensorTable(entries=(
    TensorEntry("embedding", "toy.embed.weight", "embed.weight", ("vocab_size", "dim"),
                Split.EMBEDDING),
    _layer("q", "q", "q", ("q_rows", "dim"), Split.ROWS),
    _layer("k", "k", "k", ("kv_rows", "dim"), Split.ROWS),
    _layer("v", "v", "v", ("kv_rows", "dim"), Split.ROWS),
    _layer("o", "o", "o", ("dim", "q_rows"), Split.COLS),
    _layer("gate", "gate", "gate", ("ffn_dim", "dim"), Split.ROWS),
    _layer("up", "up", "up", ("ffn_dim", "dim"), Split.ROWS),
    _layer("down", "down", "down", ("dim", "ffn_dim"), Split.COLS),
    _layer("attention_norm", "ln1", "ln1", ("dim",), Split.REPLICATED),
    _layer("ffn_norm", "ln2", "ln2", ("dim",), Split.REPLICATED),
    TensorEntry("norm", "toy.final_norm.weight", "final_norm.weight", ("dim",),
                Split.REPLICATED),
    TensorEntry("output", "toy.head.weight", "head.weight", ("vocab_size", "dim"), Split.ROWS,
                unless_tied=True, optional=True),
))
TOY_FACTS = FamilyFacts(context_length=777, bos_token_id=3, eos_token_id=4,
                        base_generation=(("toy_temperature", 0.25),), instruct_generation=())


def _toy_config(spec: ModelSpec, dtype_name: str) -> dict[str, Any]:
    return {"architectures": ["ToyForCausalLM"], "model_type": "toy", "width": spec.dim,
            "depth": spec.n_layers, "context": spec.max_position_embeddings,
            "bos": spec.bos_token_id, "torch_dtype": dtype_name}


def _toy_generation(spec: ModelSpec) -> dict[str, Any]:
    return {"bos_token_id": spec.bos_token_id, **describe(spec.family).generation_defaults(
        instruct=spec.instruct)}


TOY = FamilyDescription(
    key="toy", label="Toy", facts=TOY_FACTS, tensors=TOY_TENSORS,
    tokenizer=TokenizerScheme(kind="sentencepiece"), config=_toy_config,
    generation_config=_toy_generation,
    recognise=lambda params, ckpt: "toy_args" in params.raw)


def _options() -> ConvertOptions:
    return ConvertOptions(tokenizer=False, max_ram_bytes=int(in_process_budget()))


def _toy_checkpoint(make_checkpoint: MakeCkpt, tmp_path: Path) -> Path:
    """A 2-rank LLaMA 2 fixture, its tensors renamed to the toy's and toy_args added."""
    src = make_checkpoint(tiny(Family.LLAMA2, n_ranks=2, with_tokenizer=False))
    out = tmp_path / "toy-model"
    out.mkdir()
    for rank_path in sorted(src.glob("consolidated.*.pth")):
        state = torch.load(rank_path, map_location="cpu", weights_only=True)
        renamed = {}
        for name, tensor in state.items():
            if name == "rope.freqs":
                continue
            parts = name.removesuffix(".weight").split(".")
            if parts[0] == "layers":
                renamed[f"blk.{parts[1]}.{_RENAMED['.'.join(parts[2:])]}.weight"] = tensor
            else:
                renamed[f"{_RENAMED['.'.join(parts)]}.weight"] = tensor
        torch.save(renamed, out / rank_path.name)
    params = json.loads((src / "params.json").read_text())
    (out / "params.json").write_text(json.dumps({**params, "toy_args": {"kind": "toy"}}))
    return out


def _expected(folder: Path) -> dict[str, torch.Tensor]:
    """The toy's Hugging Face tensors from its rank files: the split axis of each entry
    (embedding by hidden columns, as LLaMA 2 files split it), no permute."""
    ranks = [torch.load(p, map_location="cpu", weights_only=True)
             for p in sorted(folder.glob("consolidated.*.pth"))]
    axis = {Split.ROWS: 0, Split.COLS: 1, Split.EMBEDDING: 1}
    expected = {}
    for meta_name in ranks[0]:
        pattern = meta_name.split(".")
        layer = pattern[1] if pattern[0] == "blk" else None
        key = meta_name if layer is None else meta_name.replace(f".{layer}.", ".{layer}.", 1)
        entry = next(e for e in TOY_TENSORS.entries if e.meta_name == key)
        hf_name = entry.hf_name.format(layer=layer)
        if entry.split is Split.REPLICATED:
            expected[hf_name] = ranks[0][meta_name]
        else:
            expected[hf_name] = torch.cat([r[meta_name] for r in ranks], dim=axis[entry.split])
    return expected


def test_a_toy_family_registered_in_a_test_converts(make_checkpoint: MakeCkpt,
                                                   tmp_path: Path) -> None:
    src = _toy_checkpoint(make_checkpoint, tmp_path)
    out = tmp_path / "out"
    with registered(TOY):
        report = convert(src, out, _options())
    assert report.family == "Toy"
    config = json.loads((out / "config.json").read_text())
    assert config == {"architectures": ["ToyForCausalLM"], "model_type": "toy", "width": 64,
                      "depth": 2, "context": 777, "bos": 3, "torch_dtype": "float32"}
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 3, "toy_temperature": 0.25}
    written: dict[str, torch.Tensor] = {}
    for shard in sorted(out.glob("*.safetensors")):
        written.update(load_file(shard))
    expected = _expected(src)
    assert sorted(written) == sorted(expected)
    assert all(torch.equal(written[name], expected[name]) for name in expected)


def test_the_cli_reads_the_registry(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    """`streamconv plan` names the registered family; after the block it is unknown again and
    the toy checkpoint is refused (its names fit no other family's table)."""
    src = _toy_checkpoint(make_checkpoint, tmp_path)
    buffer = io.StringIO()
    with registered(TOY):
        code = main(["plan", str(src), "--no-tokenizer", "--max-ram", in_process_budget()],
                    console=Console(file=buffer, width=200))
    assert code == 0, buffer.getvalue()
    assert "Toy" in buffer.getvalue()
    with pytest.raises(ValueError, match="no family 'toy'"):
        describe("toy")
    with pytest.raises(StreamconvError, match="lacks layers.0"):
        convert(src, tmp_path / "out2", _options())


def test_a_key_is_registered_once() -> None:
    with registered(TOY), pytest.raises(ValueError, match="already registered"):
        register(TOY)
    with pytest.raises(ValueError, match="already registered"):
        register(describe(Family.LLAMA2))
