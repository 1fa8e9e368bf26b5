"""Synthetic Meta-format checkpoints: exact real shapes, seeded random weights.

Models cannot be downloaded here, so tests, the demo and the benchmarks convert checkpoints made by
this module. They follow Meta's layout (transformers' convert script and Meta's llama repos agree):
one ``consolidated.NN.pth`` per model-parallel rank, column-parallel weights (wq, wk, wv, w1, w3,
output) split on dim 0, row-parallel weights (wo, w2) on dim 1, the embedding on dim 1 for
LLaMA 1/2 (fairscale ParallelEmbedding) and on dim 0 for LLaMA 3 (VocabParallelEmbedding), norms
replicated on every rank. When ranks outnumber kv heads (LLaMA 3.1 405B in 16 shards), each rank
holds a copy of one kv head.

Shards are written one at a time and each tensor is generated just before it is needed, so memory
stays near one tensor even for 7B-sized shards: torch.save streams storages that live in a
scratch file mapped from disk.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from .family import Family


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything needed to write one checkpoint folder; field names follow params.json."""

    family: Family
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None
    vocab_size: int
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float | None = None
    use_scaled_rope: bool = False
    n_shards: int = 1
    dtype: str = "bfloat16"
    seed: int = 0
    # Meta shipped LLaMA 1/2 params.json with vocab_size -1; the embedding shape carries it.
    params_vocab_size: int | None = -1
    # Meta's LLaMA 3.2 1B/3B files carry output.weight equal to tok_embeddings.weight.
    tied_output: bool = False
    # Pack every tensor of a rank into one storage (some Meta files share storages).
    share_storage: bool = False
    # Write a tokenizer.model with as many ids as embedding rows.
    with_tokenizer: bool = True
    # Where the checkpoint carries rotary frequencies: "top" (rope.freqs, LLaMA 2 files),
    # "per-layer" (layers.N.attention.inner_attention.rope.freqs, LLaMA 1 files), "none", or
    # None for the family's own layout (docs/releases.md).
    rope_freqs: str | None = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def ffn_dim(self) -> int:
        """Meta's FeedForward sizing (llama/model.py)."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @property
    def rope_freqs_layout(self) -> str:
        if self.rope_freqs is not None:
            return self.rope_freqs
        return {Family.LLAMA1: "per-layer", Family.LLAMA2: "top"}.get(self.family, "none")

    def params_json(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "dim": self.dim,
            "multiple_of": self.multiple_of,
            "n_heads": self.n_heads,
            "n_layers": self.n_layers,
            "norm_eps": self.norm_eps,
        }
        if self.n_kv_heads is not None:
            params["n_kv_heads"] = self.n_kv_heads
        if self.ffn_dim_multiplier is not None:
            params["ffn_dim_multiplier"] = self.ffn_dim_multiplier
        if self.rope_theta is not None:
            params["rope_theta"] = self.rope_theta
        if self.use_scaled_rope:
            params["use_scaled_rope"] = True
        if self.params_vocab_size is not None:
            params["vocab_size"] = self.params_vocab_size
        return params


PRESETS: dict[str, SyntheticSpec] = {
    "llama1-7b": SyntheticSpec(Family.LLAMA1, 4096, 32, 32, None, 32000, norm_eps=1e-6,
                               dtype="float16"),
    "llama2-7b": SyntheticSpec(Family.LLAMA2, 4096, 32, 32, None, 32000),
    "llama2-13b": SyntheticSpec(Family.LLAMA2, 5120, 40, 40, None, 32000, n_shards=2),
    "llama2-70b": SyntheticSpec(Family.LLAMA2, 8192, 80, 64, 8, 32000, multiple_of=4096,
                                ffn_dim_multiplier=1.3, n_shards=8),
    "codellama-7b": SyntheticSpec(Family.CODE_LLAMA, 4096, 32, 32, None, 32016,
                                  ffn_dim_multiplier=1.0, rope_theta=1e6, params_vocab_size=32016),
    "llama3-8b": SyntheticSpec(Family.LLAMA3, 4096, 32, 32, 8, 128256, multiple_of=1024,
                               ffn_dim_multiplier=1.3, rope_theta=500000.0,
                               params_vocab_size=128256),
    "llama3.1-8b": SyntheticSpec(Family.LLAMA3_1, 4096, 32, 32, 8, 128256, multiple_of=1024,
                                 ffn_dim_multiplier=1.3, rope_theta=500000.0,
                                 use_scaled_rope=True, params_vocab_size=128256),
    "llama3.1-405b": SyntheticSpec(Family.LLAMA3_1, 16384, 126, 128, 8, 128256,
                                   multiple_of=4096, ffn_dim_multiplier=1.2,
                                   rope_theta=500000.0, use_scaled_rope=True,
                                   params_vocab_size=128256, n_shards=8),
    "llama3.2-1b": SyntheticSpec(Family.LLAMA3_2, 2048, 16, 32, 8, 128256, multiple_of=256,
                                 ffn_dim_multiplier=1.5, rope_theta=500000.0,
                                 use_scaled_rope=True, params_vocab_size=128256,
                                 tied_output=True),
    # Tiny shapes for tests and the demo: every split dimension divides by 8 shards.
    "tiny-llama2": SyntheticSpec(Family.LLAMA2, 64, 2, 4, None, 512, multiple_of=32),
}


def shard_shapes(spec: SyntheticSpec) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors in each consolidated.NN.pth, in Meta's order."""
    n = spec.n_shards
    hd = spec.head_dim
    kv_rows = max(spec.kv_heads // n, 1) * hd  # a rank holds at least one kv head
    emb = ((spec.vocab_size // n, spec.dim) if spec.family.is_llama3
           else (spec.vocab_size, spec.dim // n))
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": emb}
    for layer_idx in range(spec.n_layers):
        p = f"layers.{layer_idx}."
        shapes[p + "attention.wq.weight"] = (spec.n_heads * hd // n, spec.dim)
        shapes[p + "attention.wk.weight"] = (kv_rows, spec.dim)
        shapes[p + "attention.wv.weight"] = (kv_rows, spec.dim)
        shapes[p + "attention.wo.weight"] = (spec.dim, spec.n_heads * hd // n)
        shapes[p + "feed_forward.w1.weight"] = (spec.ffn_dim // n, spec.dim)
        shapes[p + "feed_forward.w2.weight"] = (spec.dim, spec.ffn_dim // n)
        shapes[p + "feed_forward.w3.weight"] = (spec.ffn_dim // n, spec.dim)
        shapes[p + "attention_norm.weight"] = (spec.dim,)
        shapes[p + "ffn_norm.weight"] = (spec.dim,)
    shapes["norm.weight"] = (spec.dim,)
    shapes["output.weight"] = (spec.vocab_size // n, spec.dim)
    if spec.rope_freqs_layout == "top":
        shapes["rope.freqs"] = (hd // 2,)
    elif spec.rope_freqs_layout == "per-layer":
        for layer_idx in range(spec.n_layers):
            shapes[f"layers.{layer_idx}.attention.inner_attention.rope.freqs"] = (hd // 2,)
    return shapes


def _full_tensor(spec: SyntheticSpec, meta_name: str, shape: tuple[int, ...],
                 shard_idx: int) -> torch.Tensor:
    """One rank's slice, generated from a seed that depends on what must be equal across ranks.

    Replicated tensors (norms, rope.freqs, copies of a kv head) are seeded without the rank so the
    copies agree, as they do in Meta's files.
    """
    replicated = len(shape) == 1
    kv_copy = (meta_name.endswith(("wk.weight", "wv.weight"))
               and spec.n_shards > spec.kv_heads)
    if kv_copy:
        rank_key = shard_idx * spec.kv_heads // spec.n_shards
    else:
        rank_key = 0 if replicated else shard_idx
    if spec.tied_output and meta_name == "output.weight":
        meta_name = "tok_embeddings.weight"
    seed = (hash_name(meta_name) * 1_000_003 + rank_key * 7919 + spec.seed) % (2**63)
    gen = torch.Generator().manual_seed(seed)
    if meta_name.endswith("rope.freqs"):
        hd = spec.head_dim
        return 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    if replicated:
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    fan_in = shape[1] * (spec.n_shards if meta_name.endswith(("wo.weight", "w2.weight")) else 1)
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def hash_name(text: str) -> int:
    """A stable hash (Python's str hash is salted per process)."""
    value = 0
    for char in text.encode():
        value = (value * 131 + char) % (2**61 - 1)
    return value


def _rank_tensors(spec: SyntheticSpec, shard_idx: int) -> Iterator[tuple[str, torch.Tensor]]:
    dtype = getattr(torch, spec.dtype)
    for meta_name, shape in shard_shapes(spec).items():
        tensor = _full_tensor(spec, meta_name, shape, shard_idx)
        yield meta_name, tensor.to(dtype)


def _save_rank(spec: SyntheticSpec, shard_idx: int, path: Path) -> None:
    """torch.save one rank with tensors living in a mapped scratch file, not in RAM."""
    dtype = getattr(torch, spec.dtype)
    shapes = shard_shapes(spec)
    itemsize = torch.empty((), dtype=dtype).element_size()
    total = sum(math.prod(s) for s in shapes.values())
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch_dir:
        scratch = Path(scratch_dir) / "storage.bin"
        with open(scratch, "wb") as f:
            f.truncate(total * itemsize)
        flat = torch.from_file(str(scratch), shared=True, size=total, dtype=dtype)
        state: dict[str, torch.Tensor] = {}
        offset = 0
        for meta_name, tensor in _rank_tensors(spec, shard_idx):
            n = tensor.numel()
            view = flat[offset:offset + n].view(tensor.shape)
            view.copy_(tensor)
            del tensor
            state[meta_name] = view
            offset += n
        if not spec.share_storage:
            # Meta's files usually hold one storage per tensor; views of one mapping would be
            # saved as a single shared storage.
            state = {k: _own_storage(v, scratch_dir) for k, v in state.items()}
        torch.save(state, path)
        del state, flat


def _own_storage(view: torch.Tensor, scratch_dir: str) -> torch.Tensor:
    """A tensor with its own storage backed by a fresh mapped file (keeps RAM near zero)."""
    fd, name = tempfile.mkstemp(dir=scratch_dir)
    os.close(fd)
    nbytes = view.numel() * view.element_size()
    with open(name, "wb") as f:
        f.truncate(max(nbytes, 1))
    own = torch.from_file(name, shared=True, size=view.numel(), dtype=view.dtype)
    own.copy_(view.reshape(-1))
    return own.view(view.shape)


def write_checkpoint(spec: SyntheticSpec, out_dir: Path) -> Path:
    """Write params.json, consolidated.NN.pth and (optionally) tokenizer.model into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for shard_idx in range(spec.n_shards):
        _save_rank(spec, shard_idx, out_dir / f"consolidated.{shard_idx:02d}.pth")
    (out_dir / "params.json").write_text(json.dumps(spec.params_json()))
    if spec.with_tokenizer:
        from .tokenizer import write_synthetic_tokenizer

        kind: Literal["sentencepiece", "tiktoken"] = (
            "tiktoken" if spec.family.is_llama3 else "sentencepiece")
        pieces = spec.vocab_size - 256 if kind == "tiktoken" else spec.vocab_size
        write_synthetic_tokenizer(out_dir / "tokenizer.model", kind=kind, vocab_size=pieces,
                                  seed=spec.seed)
    return out_dir


def spec_summary(spec: SyntheticSpec) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, Family) else v) for k, v in asdict(spec).items()}


# LLaMA 3 tiny models: 1024 tiktoken ranks + 256 specials, so special ids start at 1024.
_TINY3: dict[str, Any] = {"rope_theta": 500000.0, "vocab_size": 1280, "params_vocab_size": 1280}


def tiny(family: Family, **changes: Any) -> SyntheticSpec:
    """A tiny spec of the given family whose splits divide by up to 8 shards."""
    base = SyntheticSpec(family, 64, 2, 8, None, 512, multiple_of=32, dtype="float32")
    per_family: dict[Family, dict[str, Any]] = {
        Family.LLAMA1: {"norm_eps": 1e-6, "dtype": "float16"},
        Family.LLAMA2: {},
        Family.CODE_LLAMA: {"rope_theta": 1e6, "ffn_dim_multiplier": 1.0, "vocab_size": 528,
                            "params_vocab_size": 528},
        Family.LLAMA3: {"n_kv_heads": 2, **_TINY3},
        Family.LLAMA3_1: {"n_kv_heads": 2, "use_scaled_rope": True, **_TINY3},
        Family.LLAMA3_2: {"n_kv_heads": 2, "use_scaled_rope": True, "tied_output": True, **_TINY3},
        Family.LLAMA3_3: {"n_kv_heads": 2, "use_scaled_rope": True, **_TINY3},
    }
    return replace(base, **{**per_family[family], **changes})
