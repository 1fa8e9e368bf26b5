"""Weights from a real training run: karpathy's stories260K, rebuilt as a Meta checkpoint.

Random weights can hide errors that trained ones expose (attention patterns, norm scales).
../shared/data/stories260K.bin is llama2.c's legacy export of a trained tiny LLaMA in Meta's
layout (q/k not permuted, llama2.c rotates interleaved pairs as Meta does). It is split here
into 1 and 2 model-parallel shards the way Meta's fairscale layers split them, converted, and
transformers' logits are compared with the Meta-architecture reference on the same input.
Skipped when ../shared/data is absent (a fresh clone has no ../shared).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA
from meta_reference import meta_logits
from transformers import LlamaForCausalLM

from streamconv.cli.main import main

BIN = SHARED_DATA / "stories260K.bin"
pytestmark = pytest.mark.skipif(not BIN.is_file(), reason=f"{BIN} not present")
LAYER_TENSORS = ("attention_norm", "attention.wq", "attention.wk", "attention.wv",
                 "attention.wo", "ffn_norm", "feed_forward.w1", "feed_forward.w2",
                 "feed_forward.w3")
SPLIT_DIM = {"attention.wq": 0, "attention.wk": 0, "attention.wv": 0, "feed_forward.w1": 0,
             "feed_forward.w3": 0, "attention.wo": 1, "feed_forward.w2": 1}


def read_stories(path: Path) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """llama2.c's v0 export: 7 int32 then float32 tensors, grouped by kind across layers."""
    raw = path.read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[:28])
    cfg = {"dim": dim, "hidden": hidden, "n_layers": n_layers, "n_heads": n_heads,
           "n_kv_heads": n_kv, "vocab": abs(vocab), "seq_len": seq_len}
    data = torch.frombuffer(bytearray(raw[28:]), dtype=torch.float32)
    kv_dim = dim * n_kv // n_heads
    shapes = {"attention_norm": (dim,), "attention.wq": (dim, dim),
              "attention.wk": (kv_dim, dim), "attention.wv": (kv_dim, dim),
              "attention.wo": (dim, dim), "ffn_norm": (dim,), "feed_forward.w1": (hidden, dim),
              "feed_forward.w2": (dim, hidden), "feed_forward.w3": (hidden, dim)}
    state: dict[str, torch.Tensor] = {}
    offset = 0

    def take(shape: tuple[int, ...]) -> torch.Tensor:
        nonlocal offset
        n = 1
        for size in shape:
            n *= size
        tensor = data[offset:offset + n].view(shape).clone()
        offset += n
        return tensor

    state["tok_embeddings.weight"] = take((cfg["vocab"], dim))
    for kind in LAYER_TENSORS:
        for layer_idx in range(n_layers):
            state[f"layers.{layer_idx}.{kind}.weight"] = take(shapes[kind])
    state["norm.weight"] = take((dim,))
    state["output.weight"] = state["tok_embeddings.weight"].clone()  # classifier is tied
    return cfg, state


def write_meta(cfg: dict[str, int], state: dict[str, torch.Tensor], out: Path,
               n_ranks: int) -> None:
    out.mkdir()
    for rank_idx in range(n_ranks):
        shard = {}
        for name, tensor in state.items():
            kind = name.split(".", 2)[-1].removesuffix(".weight") if name.startswith(
                "layers.") else name.removesuffix(".weight")
            dim = SPLIT_DIM.get(kind, 1 if kind == "tok_embeddings" else 0)
            if tensor.dim() == 1:
                shard[name] = tensor.clone()
            else:
                shard[name] = tensor.chunk(n_ranks, dim=dim)[rank_idx].clone()
        torch.save(shard, out / f"consolidated.{rank_idx:02d}.pth")
    params = {"dim": cfg["dim"], "n_layers": cfg["n_layers"], "n_heads": cfg["n_heads"],
              "n_kv_heads": cfg["n_kv_heads"], "vocab_size": cfg["vocab"], "multiple_of": 4,
              "norm_eps": 1e-5}
    (out / "params.json").write_text(json.dumps(params))


@pytest.mark.parametrize("n_ranks", [1, 2])
def test_trained_model_logits_match_meta_reference(n_ranks: int, tmp_path: Path) -> None:
    cfg, state = read_stories(BIN)
    assert (cfg["dim"], cfg["n_layers"], cfg["n_heads"], cfg["n_kv_heads"]) == (64, 5, 8, 4)
    src = tmp_path / "meta"
    write_meta(cfg, state, src, n_ranks)
    assert main([str(src), str(tmp_path / "hf"), "--no-tokenizer", "--quiet",
                 "--max-ram", "2G"]) == 0
    model = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    tokens = torch.randint(0, cfg["vocab"], (2, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(tokens).logits
    want = meta_logits(src, tokens)
    assert want.abs().max() > 1.0  # a trained model's logits, not noise around zero
    assert torch.allclose(got, want, atol=1e-4, rtol=0), float((got - want).abs().max())
