"""Tiny Llama 4 checkpoints in Meta's release layout (params.json + consolidated.NN.pth).

Every fact about the layout comes from Meta's own code in llama-models 0.3.0 (installed by
scripts/make_meta_env.sh into .venv-meta; see docs/llama4_facts.md for the full table):

- names: the load hooks of `llama_models/llama4/model.py` (fused `attention.wqkv.weight`,
  `attention.wqkv.layer_norm_weight`, `feed_forward.norm.weight`, `feed_forward.mlp.*`),
  `moe.py` (`experts.moe_w_in_eD_F`, `experts.moe_w_swiglu_eD_F`, `experts.moe_w_out_eF_D`,
  `router_DE`, `w_in_shared_FD` / `w_swiglu_FD` / `w_out_shared_DF`), `ffn.py`
  (`mlp.fc1_weight` = w1 and w3 stacked, `mlp.fc2_weight`) and `vision/` (encoder + adapter);
- the per-rank split: the inverse of `llama_models/checkpoint.py::reshard_mp` and
  `convert_moe_weights`, which is how Meta's loader merges the 8 release files. Column-parallel
  weights are split on dim 0, row-parallel ones on the last dim; the fused wqkv holds each rank's
  own [q; k; v] rows; expert tensors are split on their F axis and flattened to 2-D per rank
  ((E*D, F/mp) and (E*F/mp, D)); norms, the router and vision biases of row-parallel layers are
  replicated;
- the hidden sizes: `TransformerBlock` / `MoE.__init__` (ffn_exp, ffn_dim_multiplier,
  auto_scale_F halving for the experts, multiple_of rounding).

Tensors are generated one at a time from a seed derived from the Meta name, so the same spec
gives the same weights whatever the shard count: MP1 and MP8 files of one spec hold the same model,
which is what tests/test_llama4_reference.py checks with Meta's code.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

# Meta's per-rank split kinds.
COLUMN = "column"  # concatenated on dim 0 across ranks
ROW = "row"  # concatenated on the last dim
REPLICATED = "replicated"  # the same on every rank


@dataclass(frozen=True)
class VisionSpec:
    """vision_args of params.json, tiny. Real Scout/Maverick: 336/14, dim 1408, 34 layers,
    16 heads, mlp_ratio 4.0, output_dim 4096, pixel_shuffle_ratio 0.5."""

    image_size: int = 16
    patch_size: int = 4
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 8
    # 4.0 = 1 / pixel_shuffle_ratio**2, as in the real model: transformers sizes the adapter's
    # fc1 input from the encoder's intermediate_size (mlp_ratio * dim), Meta from
    # dim / pixel_shuffle_ratio**2; the two agree only then (docs/llama4_facts.md, section 3).
    mlp_ratio: float = 4.0
    output_dim: int = 64
    pixel_shuffle_ratio: float = 0.5

    def params(self) -> dict[str, Any]:
        return {
            "image_size": {"height": self.image_size, "width": self.image_size},
            "patch_size": {"height": self.patch_size, "width": self.patch_size},
            "dim": self.dim,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "mlp_ratio": self.mlp_ratio,
            "output_dim": self.output_dim,
            "pixel_shuffle_ratio": self.pixel_shuffle_ratio,
        }


@dataclass(frozen=True)
class Llama4Spec:
    """A tiny Llama 4 release. Defaults: Scout-like (every layer MoE, qk norm, scaled rope)."""

    dim: int = 128
    n_layers: int = 4
    n_heads: int = 16
    n_kv_heads: int = 8
    # Llama 4's 2,048 special tokens follow the ranks (64 here): config ids are ranks + offsets.
    vocab_size: int = 2048 + 64
    multiple_of: int = 16
    ffn_dim_multiplier: float = 1.2
    ffn_exp: float = 4.0
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    use_scaled_rope: bool = True
    nope_layer_interval: int | None = 4
    attention_chunk_size: int | None = 8
    use_qk_norm: bool = True
    num_experts: int = 4
    top_k: int = 1
    interleave_moe_layer_step: int = 1
    vision: VisionSpec | None = None
    n_shards: int = 1
    dtype: str = "bfloat16"
    seed: int = 0
    # Wrap params.json in {"model": {...}} (transformers' converter accepts both forms).
    nest_under_model: bool = False
    # Write the non-tensor `_extra_state` entries (io.BytesIO) that transformers' converter
    # filters out; Meta's reshard_mp cannot handle them (see docs/llama4_facts.md).
    extra_state: bool = False
    # Extra params.json keys, as (key, value) pairs (kept hashable).
    extra_params: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def is_moe_layer(self, layer_idx: int) -> bool:
        """TransformerBlock: MoE when (layer_id + 1) % interleave_moe_layer_step == 0."""
        return self.num_experts > 0 and (layer_idx + 1) % self.interleave_moe_layer_step == 0

    def is_nope_layer(self, layer_idx: int) -> bool:
        interval = self.nope_layer_interval
        return interval is not None and (layer_idx + 1) % interval == 0


def scout_like(**changes: Any) -> Llama4Spec:
    """Every layer MoE (interleave step 1), qk norm, scaled rope (Scout's params.json shape)."""
    return replace(Llama4Spec(), **changes)


def maverick_like(**changes: Any) -> Llama4Spec:
    """MoE every second layer (odd layers), no qk norm, unscaled rope (Maverick's shape)."""
    base = Llama4Spec(interleave_moe_layer_step=2, use_qk_norm=False, use_scaled_rope=False)
    return replace(base, **changes)


def moe_hidden_dim(spec: Llama4Spec) -> int:
    """llama4/moe.py MoE.__init__ with auto_scale_F=True, capacity_factor=1.0."""
    hidden = int(spec.ffn_exp * spec.dim)
    hidden = int(2 * hidden / 3)
    hidden = int(spec.ffn_dim_multiplier * hidden)
    hidden = int(hidden / 2.0)  # capacity_factor + 1
    return hidden + (-hidden % spec.multiple_of)


def dense_hidden_dim(spec: Llama4Spec) -> int:
    """llama4/model.py TransformerBlock, dense branch (4 * dim, not ffn_exp)."""
    hidden = int(2 * int(4 * spec.dim) / 3)
    hidden = int(spec.ffn_dim_multiplier * hidden)
    return spec.multiple_of * ((hidden + spec.multiple_of - 1) // spec.multiple_of)


def params_json(spec: Llama4Spec) -> dict[str, Any]:
    """params.json with the keys llama4/args.py ModelArgs reads."""
    params: dict[str, Any] = {
        "dim": spec.dim,
        "n_layers": spec.n_layers,
        "n_heads": spec.n_heads,
        "n_kv_heads": spec.n_kv_heads,
        "vocab_size": spec.vocab_size,
        "multiple_of": spec.multiple_of,
        "ffn_dim_multiplier": spec.ffn_dim_multiplier,
        "ffn_exp": spec.ffn_exp,
        "norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta,
        "use_scaled_rope": spec.use_scaled_rope,
        "nope_layer_interval": spec.nope_layer_interval,
        "attention_chunk_size": spec.attention_chunk_size,
        "use_qk_norm": spec.use_qk_norm,
        "moe_args": {
            "num_experts": spec.num_experts,
            "capacity_factor": 1.0,
            "auto_scale_F": True,
            "top_k": spec.top_k,
            "interleave_moe_layer_step": spec.interleave_moe_layer_step,
        },
        "vision_args": spec.vision.params() if spec.vision else None,
    }
    params.update(dict(spec.extra_params))
    return {"model": params} if spec.nest_under_model else params


@dataclass(frozen=True)
class MetaTensor:
    """One tensor of the merged model, in Meta's orientation, and how ranks split it."""

    meta_name: str
    shape: tuple[int, ...]
    split: str
    # How a rank's slice becomes the stored tensor ("plain", "wqkv", "fc1", "experts_in",
    # "experts_out"); the slicing rules are in rank_slice().
    layout: str = "plain"
    # Norm weights start near 1, biases and embeddings near 0.
    kind: str = "weight"


def _attention_tensors(spec: Llama4Spec, p: str) -> Iterator[MetaTensor]:
    q_rows = spec.n_heads * spec.head_dim
    kv_rows = spec.n_kv_heads * spec.head_dim
    yield MetaTensor(p + "attention.wqkv.weight", (q_rows + 2 * kv_rows, spec.dim), COLUMN,
                     layout="wqkv")
    yield MetaTensor(p + "attention.wo.weight", (spec.dim, q_rows), ROW)
    yield MetaTensor(p + "attention.wqkv.layer_norm_weight", (spec.dim,), REPLICATED, kind="norm")


def _moe_tensors(spec: Llama4Spec, p: str) -> Iterator[MetaTensor]:
    e, d, f = spec.num_experts, spec.dim, moe_hidden_dim(spec)
    yield MetaTensor(p + "feed_forward.norm.weight", (d,), REPLICATED, kind="norm")
    yield MetaTensor(p + "feed_forward.router_DE", (d, e), REPLICATED)
    # Experts.w1 / w3: (E, D, F); w2: (E, F, D); stored per rank flattened to 2-D.
    yield MetaTensor(p + "feed_forward.experts.moe_w_in_eD_F", (e, d, f), ROW, layout="experts_in")
    yield MetaTensor(p + "feed_forward.experts.moe_w_swiglu_eD_F", (e, d, f), ROW,
                     layout="experts_in")
    yield MetaTensor(p + "feed_forward.experts.moe_w_out_eF_D", (e, f, d), COLUMN,
                     layout="experts_out")
    yield MetaTensor(p + "feed_forward.w_in_shared_FD.weight", (f, d), COLUMN)
    yield MetaTensor(p + "feed_forward.w_swiglu_FD.weight", (f, d), COLUMN)
    yield MetaTensor(p + "feed_forward.w_out_shared_DF.weight", (d, f), ROW)


def _dense_tensors(spec: Llama4Spec, p: str) -> Iterator[MetaTensor]:
    d, f = spec.dim, dense_hidden_dim(spec)
    yield MetaTensor(p + "feed_forward.mlp.layer_norm_weight", (d,), REPLICATED, kind="norm")
    # fc1_weight is w1 and w3 stacked per rank: [w1_r; w3_r] (ffn.py load hook chunks it in 2).
    yield MetaTensor(p + "feed_forward.mlp.fc1_weight", (2 * f, d), COLUMN, layout="fc1")
    yield MetaTensor(p + "feed_forward.mlp.fc2_weight", (d, f), ROW)


def _vision_tensors(vision: VisionSpec, text_dim: int) -> Iterator[MetaTensor]:
    enc = "vision_embeddings.vision_encoder."
    d = vision.dim
    grid = vision.image_size // vision.patch_size
    hidden = int(vision.mlp_ratio * d)
    yield MetaTensor(enc + "conv1._linear.weight", (d, 3 * vision.patch_size ** 2), COLUMN)
    yield MetaTensor(enc + "class_embedding", (d,), REPLICATED, kind="embedding")
    yield MetaTensor(enc + "positional_embedding_vlm", (grid * grid + 1, d), REPLICATED,
                     kind="embedding")
    for norm in ("ln_pre", "ln_post"):
        yield MetaTensor(enc + f"{norm}.weight", (d,), REPLICATED, kind="norm")
        yield MetaTensor(enc + f"{norm}.bias", (d,), REPLICATED, kind="bias")
    for layer_idx in range(vision.n_layers):
        p = enc + f"transformer.resblocks.{layer_idx}."
        for proj in ("wq", "wk", "wv"):
            yield MetaTensor(p + f"attn.{proj}.weight", (d, d), COLUMN)
            yield MetaTensor(p + f"attn.{proj}.bias", (d,), COLUMN, kind="bias")
        yield MetaTensor(p + "attn.wo.weight", (d, d), ROW)
        yield MetaTensor(p + "attn.wo.bias", (d,), REPLICATED, kind="bias")  # RowParallel bias
        for norm in ("ln_1", "ln_2"):
            yield MetaTensor(p + f"{norm}.weight", (d,), REPLICATED, kind="norm")
            yield MetaTensor(p + f"{norm}.bias", (d,), REPLICATED, kind="bias")
        yield MetaTensor(p + "mlp.c_fc.weight", (hidden, d), COLUMN)
        yield MetaTensor(p + "mlp.c_fc.bias", (hidden,), COLUMN, kind="bias")
        yield MetaTensor(p + "mlp.c_proj.weight", (d, hidden), ROW)
        yield MetaTensor(p + "mlp.c_proj.bias", (d,), REPLICATED, kind="bias")
    adapter_in = int(d // (vision.pixel_shuffle_ratio ** 2))
    out = vision.output_dim
    yield MetaTensor("vision_embeddings.vision_adapter.mlp.c_fc.weight", (out, adapter_in), COLUMN)
    yield MetaTensor("vision_embeddings.vision_adapter.mlp.c_proj.weight", (out, out), ROW)
    yield MetaTensor("vision_projection.weight", (text_dim, out), COLUMN)


def meta_tensors(spec: Llama4Spec) -> Iterator[MetaTensor]:
    """Every tensor of the release, in the order Meta's state dict lists them (roughly)."""
    yield MetaTensor("tok_embeddings.weight", (spec.vocab_size, spec.dim), COLUMN,
                     kind="embedding")
    for layer_idx in range(spec.n_layers):
        p = f"layers.{layer_idx}."
        yield from _attention_tensors(spec, p)
        if spec.is_moe_layer(layer_idx):
            yield from _moe_tensors(spec, p)
        else:
            yield from _dense_tensors(spec, p)
    yield MetaTensor("norm.weight", (spec.dim,), REPLICATED, kind="norm")
    yield MetaTensor("output.weight", (spec.vocab_size, spec.dim), COLUMN)
    if spec.vision is not None:
        yield from _vision_tensors(spec.vision, spec.dim)


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


def rank_slice(spec: Llama4Spec, tensor: MetaTensor, full: torch.Tensor,
               shard_idx: int) -> torch.Tensor:
    """What rank `shard_idx` of `spec.n_shards` stores for `tensor` (inverse of reshard_mp)."""
    n = spec.n_shards
    if tensor.split == REPLICATED:
        return full
    if tensor.layout == "wqkv":
        q_rows = spec.n_heads * spec.head_dim
        kv_rows = spec.n_kv_heads * spec.head_dim
        q, k, v = full.split([q_rows, kv_rows, kv_rows], dim=0)
        return torch.cat([part.chunk(n, dim=0)[shard_idx] for part in (q, k, v)], dim=0)
    if tensor.layout == "fc1":
        w1, w3 = full.chunk(2, dim=0)
        return torch.cat([w1.chunk(n, dim=0)[shard_idx], w3.chunk(n, dim=0)[shard_idx]], dim=0)
    if tensor.layout == "experts_in":  # (E, D, F) -> (E, D, F/n) -> (E*D, F/n)
        part = full.chunk(n, dim=-1)[shard_idx]
        return part.reshape(-1, part.shape[-1])
    if tensor.layout == "experts_out":  # (E, F, D) -> (E, F/n, D) -> (E*F/n, D)
        part = full.chunk(n, dim=1)[shard_idx]
        return part.reshape(-1, part.shape[-1])
    dim = 0 if tensor.split == COLUMN else -1
    return full.chunk(n, dim=dim)[shard_idx]


def _check_divisible(spec: Llama4Spec) -> None:
    n = spec.n_shards
    sizes = {"n_heads": spec.n_heads, "n_kv_heads": spec.n_kv_heads,
             "vocab_size": spec.vocab_size, "dim": spec.dim,
             "moe hidden dim": moe_hidden_dim(spec), "dense hidden dim": dense_hidden_dim(spec)}
    if spec.vision is not None:
        sizes.update({"vision dim": spec.vision.dim, "vision heads": spec.vision.n_heads,
                      "vision output_dim": spec.vision.output_dim})
    bad = {name: size for name, size in sizes.items() if size % n}
    if bad:
        raise ValueError(f"{bad} not divisible by n_shards={n}: Meta splits them across ranks")


_EXTRA_STATE_SUFFIXES = ("attention.wqkv._extra_state", "attention.wo._extra_state")


def write_llama4_checkpoint(spec: Llama4Spec, out_dir: Path) -> Path:
    """Write params.json and consolidated.00..NN.pth for spec into out_dir; returns out_dir."""
    _check_divisible(spec)
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


def rank_shapes(spec: Llama4Spec) -> dict[str, tuple[int, ...]]:
    """The shape every rank file stores per tensor, computed without data (meta device), so
    real sizes (Scout, Maverick at MP8) can be checked against published facts."""
    shapes = {}
    for tensor in meta_tensors(spec):
        full = torch.empty(tensor.shape, device="meta")
        shapes[tensor.meta_name] = tuple(rank_slice(spec, tensor, full, 0).shape)
    return shapes


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
