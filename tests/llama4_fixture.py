"""Tiny Llama 4 checkpoints in Meta's release layout (params.json + consolidated.NN.pth).

The layout (names, per-rank splits, hidden sizes, each from Meta's llama-models 0.3.0) is
fixtures/llama4_layout.py, shared with the real-shape writers of the benchmarks; this module adds
seeded values small enough to hold in memory.

Tensors are generated one at a time from a seed derived from the Meta name, so the same spec
gives the same weights whatever the shard count: MP1 and MP8 files of one spec hold the same model,
which is what tests/test_llama4_reference.py checks with Meta's code.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

# The layout (spec, names, shapes, slicing) lives in fixtures/ so the real-shape benchmark
# writers share it; re-exported here for the tests that import it from this module.
from fixtures.llama4_layout import (
    COLUMN,
    REPLICATED,
    ROW,
    Llama4Spec,
    MetaTensor,
    VisionSpec,
    check_divisible,
    dense_hidden_dim,
    maverick_like,
    meta_tensors,
    moe_hidden_dim,
    params_json,
    rank_shapes,
    rank_slice,
    scout_like,
)

__all__ = ["COLUMN", "REPLICATED", "ROW", "Llama4Spec", "MetaTensor", "VisionSpec",
           "dense_hidden_dim", "maverick_like", "meta_tensors", "moe_hidden_dim", "params_json",
           "rank_shapes", "rank_slice", "scout_like"]


def _seed_for(spec: Llama4Spec, meta_name: str) -> int:
    digest = hashlib.sha256(f"{spec.seed}:{meta_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def full_tensor(spec: Llama4Spec, tensor: MetaTensor) -> torch.Tensor:
    """The merged float32 value of one tensor: a function of (seed, name, shape) only."""
    gen = torch.Generator().manual_seed(_seed_for(spec, tensor.meta_name))
    values = torch.randn(tensor.shape, generator=gen)
    if tensor.kind == "norm":
        return 1.0 + 0.1 * values
    if tensor.kind == "bias":
        return 0.02 * values
    fan_in = tensor.shape[-1] if len(tensor.shape) > 1 else 1
    if tensor.layout == "experts_in":  # (E, D, F): the input axis is D
        fan_in = tensor.shape[1]
    scale = 1.0 if tensor.kind == "embedding" else fan_in ** -0.5
    return values * scale


_EXTRA_STATE_SUFFIXES = ("attention.wqkv._extra_state", "attention.wo._extra_state")


def write_llama4_checkpoint(spec: Llama4Spec, out_dir: Path) -> Path:
    """Write params.json and consolidated.00..NN.pth for spec into out_dir; returns out_dir."""
    check_divisible(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "params.json").write_text(json.dumps(params_json(spec), indent=2) + "\n")
    dtype = getattr(torch, spec.dtype)
    ranks: list[dict[str, Any]] = [{} for _ in range(spec.n_shards)]
    for tensor in meta_tensors(spec):
        full = full_tensor(spec, tensor).to(dtype)
        for shard_idx, rank in enumerate(ranks):
            # clone: each rank file owns its storage, like Meta's files (no shared views).
            rank[tensor.meta_name] = rank_slice(spec, tensor, full, shard_idx).clone()
        del full
    if spec.extra_state:
        for layer_idx in range(spec.n_layers):
            for suffix in _EXTRA_STATE_SUFFIXES:
                for rank in ranks:
                    rank[f"layers.{layer_idx}.{suffix}"] = io.BytesIO(b"extra state")
    for shard_idx, rank in enumerate(ranks):
        torch.save(rank, out_dir / f"consolidated.{shard_idx:02d}.pth")
    return out_dir


def merged_state(spec: Llama4Spec) -> dict[str, torch.Tensor]:
    """The merged float32 tensors in Meta's names and orientation (for mapping tests)."""
    return {t.meta_name: full_tensor(spec, t) for t in meta_tensors(spec)}


def fixed_image(vision: VisionSpec, *, seed: int = 1) -> torch.Tensor:
    """One seeded image tile, (1, 3, H, W) float32, for vision comparisons."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, vision.image_size, vision.image_size, generator=gen)


def image_positions(vision: VisionSpec, *, batch: int, seq_len: int,
                    start: int = 2) -> torch.Tensor:
    """A bool (batch, seq_len) mask of the tokens one tile's patch embeddings replace:
    (grid * pixel_shuffle_ratio)^2 of them (Meta's PixelShuffle merges 2x2 patches at 0.5)."""
    grid = vision.image_size // vision.patch_size
    n_image_tokens = int(grid * grid * vision.pixel_shuffle_ratio ** 2)
    positions = torch.zeros(batch, seq_len, dtype=torch.bool)
    positions[:, start:start + n_image_tokens] = True
    return positions


# The inputs both oracle tests feed the models: a batch of 2, three attention chunks of 8 tokens
# (the chunked mask of the rope layers then differs from the causal mask of the nope layers).
BATCH = 2
SEQ_LEN = 24


def fixed_tokens(vocab_size: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (BATCH, SEQ_LEN), generator=gen)


def batch_image_positions(vision: VisionSpec) -> torch.Tensor:
    return image_positions(vision, batch=BATCH, seq_len=SEQ_LEN)
