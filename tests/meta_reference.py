"""A reference forward pass of Meta's LLaMA architecture, run straight on Meta's files.

Why it exists: a converter that permutes q/k wrongly and a test that un-permutes them the same
wrong way agree with each other (round trips cancel). This module shares no code with streamconv
and never permutes anything: it merges the model-parallel shards the way Meta's fairscale layers
define them and rotates interleaved pairs of q/k with complex multiplication, as Meta's
llama/model.py and llama-models' model.py do. If transformers' LlamaForCausalLM, which rotates
halves, gives the same logits on streamconv's output, the q/k permute is right.

Semantics follow those two files:
- ColumnParallelLinear (wq, wk, wv, w1, w3, output) is split on dim 0, RowParallelLinear (wo, w2)
  on dim 1; ParallelEmbedding (LLaMA 1/2) on dim 1, VocabParallelEmbedding (LLaMA 3.x) on dim 0;
  norms are replicated. When ranks outnumber kv heads (LLaMA 3.1 405B in 16 shards), consecutive
  ranks hold copies of the same kv head.
- precompute_freqs_cis / apply_scaling (LLaMA 3.1's long-context frequency scaling) /
  reshape_for_broadcast / apply_rotary_emb / repeat_kv / RMSNorm / FeedForward (SwiGLU).

Everything runs in float32, whatever the checkpoint's dtype, so the result is a reference and not
one more rounding path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# Meta's fairscale layer types, by the parameter's suffix (llama/model.py, Attention/FeedForward).
_COLUMN_PARALLEL = ("attention.wq.weight", "feed_forward.w1.weight", "feed_forward.w3.weight")
_KV_COLUMN_PARALLEL = ("attention.wk.weight", "attention.wv.weight")
_ROW_PARALLEL = ("attention.wo.weight", "feed_forward.w2.weight")

# llama-models' apply_scaling constants for use_scaled_rope (LLaMA 3.1+); only the factor varies
# (8 for 3.1/3.3, 32 for 3.2 1B/3B).
_LOW_FREQ_FACTOR = 1.0
_HIGH_FREQ_FACTOR = 4.0
_OLD_CONTEXT_LEN = 8192


def read_params(ckpt_dir: Path) -> dict[str, Any]:
    """params.json, unwrapped from the {"model": {...}} form some releases use."""
    params: dict[str, Any] = json.loads((ckpt_dir / "params.json").read_text())
    inner = params.get("model", params)
    assert isinstance(inner, dict)
    return inner


def load_shards(ckpt_dir: Path) -> list[dict[str, torch.Tensor]]:
    """Every consolidated.NN.pth in rank order; mmap keeps memory near zero until used."""
    paths = sorted(ckpt_dir.glob("consolidated.*.pth"))
    if not paths:
        raise FileNotFoundError(f"no consolidated.*.pth in {ckpt_dir}")
    return [torch.load(p, map_location="cpu", weights_only=True, mmap=True) for p in paths]


def _merge_kv(parts: list[torch.Tensor], *, n_kv_heads: int, head_dim: int) -> torch.Tensor:
    """wk/wv: concatenated on dim 0, except that ranks beyond n_kv_heads hold copies.

    With n ranks and n_kv_heads < n, Meta's code gives each rank one kv head and rank r holds
    head r * n_kv_heads // n, so ranks [h*k, (h+1)*k) (k = n // n_kv_heads) share head h.
    The copies must be equal; a mismatch means the file is not what we think it is.
    """
    n = len(parts)
    if n <= n_kv_heads:
        return torch.cat(parts, dim=0)
    copies = n // n_kv_heads
    heads = []
    for head_idx in range(n_kv_heads):
        first = parts[head_idx * copies]
        assert first.shape[0] == head_dim, f"expected one kv head per rank, got {first.shape}"
        for other in parts[head_idx * copies + 1:(head_idx + 1) * copies]:
            if not torch.equal(first, other):
                raise ValueError(f"kv head {head_idx}: replicated copies differ across ranks")
        heads.append(first)
    return torch.cat(heads, dim=0)


def merge_shards(shards: list[dict[str, torch.Tensor]],
                 params: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One full float32 state dict in Meta's names, from the per-rank dicts."""
    n = len(shards)
    dim = int(params["dim"])
    n_heads = int(params["n_heads"])
    n_kv_heads = int(params.get("n_kv_heads") or n_heads)
    head_dim = dim // n_heads
    merged: dict[str, torch.Tensor] = {}
    for meta_name in shards[0]:
        if meta_name == "rope.freqs":
            continue  # LLaMA 1 leftover buffer: Meta's model.py recomputes freqs_cis and ignores it
        parts = [shard[meta_name].float() for shard in shards]
        if n == 1:
            merged[meta_name] = parts[0]
        elif parts[0].dim() == 1:
            merged[meta_name] = parts[0]  # norms: replicated on every rank
        elif meta_name == "tok_embeddings.weight":
            # ParallelEmbedding (LLaMA 1/2) splits the embedding dim, VocabParallelEmbedding
            # (LLaMA 3) the vocab: a rank's row width tells which, since dim // n != dim.
            split_dim = 0 if parts[0].shape[1] == dim else 1
            merged[meta_name] = torch.cat(parts, dim=split_dim)
        elif meta_name == "output.weight" or meta_name.endswith(_COLUMN_PARALLEL):
            merged[meta_name] = torch.cat(parts, dim=0)
        elif meta_name.endswith(_KV_COLUMN_PARALLEL):
            merged[meta_name] = _merge_kv(parts, n_kv_heads=n_kv_heads, head_dim=head_dim)
        elif meta_name.endswith(_ROW_PARALLEL):
            merged[meta_name] = torch.cat(parts, dim=1)
        else:
            raise KeyError(f"unknown Meta tensor {meta_name!r}")
    return merged


def apply_scaling(freqs: torch.Tensor, *, scale_factor: float) -> torch.Tensor:
    """llama-models' apply_scaling: long wavelengths slowed by scale_factor, short ones kept,
    a linear blend in between (wavelengths from old_context/high to old_context/low)."""
    low_freq_wavelen = _OLD_CONTEXT_LEN / _LOW_FREQ_FACTOR
    high_freq_wavelen = _OLD_CONTEXT_LEN / _HIGH_FREQ_FACTOR
    new_freqs = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            new_freqs.append(freq)
        elif wavelen > low_freq_wavelen:
            new_freqs.append(freq / scale_factor)
        else:
            smooth = ((_OLD_CONTEXT_LEN / wavelen - _LOW_FREQ_FACTOR)
                      / (_HIGH_FREQ_FACTOR - _LOW_FREQ_FACTOR))
            new_freqs.append((1 - smooth) * freq / scale_factor + smooth * freq)
    return torch.tensor(new_freqs, dtype=freqs.dtype)


def precompute_freqs_cis(head_dim: int, positions: torch.Tensor, *, theta: float,
                         use_scaled: bool, scale_factor: float) -> torch.Tensor:
    """Complex rotations e^(i * pos * freq_j), one per interleaved pair (x[2j], x[2j+1])."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    if use_scaled:
        freqs = apply_scaling(freqs, scale_factor=scale_factor)
    angles = torch.outer(positions.float(), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Meta's rotary: consecutive pairs of the head dim are one complex number (no permute)."""
    x_complex = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    # (seq, head_dim/2) -> (1, seq, 1, head_dim/2) against x of (batch, seq, heads, head_dim/2)
    rotated = x_complex * freqs_cis[None, :, None, :]
    return torch.view_as_real(rotated).flatten(3)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, *, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _attention(x: torch.Tensor, state: dict[str, torch.Tensor], prefix: str, *,
               n_heads: int, n_kv_heads: int, freqs_cis: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
    bsz, seqlen, dim = x.shape
    head_dim = dim // n_heads
    xq = (x @ state[prefix + "wq.weight"].T).view(bsz, seqlen, n_heads, head_dim)
    xk = (x @ state[prefix + "wk.weight"].T).view(bsz, seqlen, n_kv_heads, head_dim)
    xv = (x @ state[prefix + "wv.weight"].T).view(bsz, seqlen, n_kv_heads, head_dim)
    xq = apply_rotary_emb(xq, freqs_cis)
    xk = apply_rotary_emb(xk, freqs_cis)
    # repeat_kv: query head h reads kv head h // n_rep
    n_rep = n_heads // n_kv_heads
    keys = xk.repeat_interleave(n_rep, dim=2).transpose(1, 2)
    values = xv.repeat_interleave(n_rep, dim=2).transpose(1, 2)
    queries = xq.transpose(1, 2)
    scores = queries @ keys.transpose(2, 3) / math.sqrt(head_dim) + mask
    probs = F.softmax(scores, dim=-1)
    out = (probs @ values).transpose(1, 2).reshape(bsz, seqlen, -1)
    return out @ state[prefix + "wo.weight"].T


def _feed_forward(x: torch.Tensor, state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    gate = F.silu(x @ state[prefix + "w1.weight"].T)
    up = x @ state[prefix + "w3.weight"].T
    return (gate * up) @ state[prefix + "w2.weight"].T


def forward(state: dict[str, torch.Tensor], params: dict[str, Any], tokens: torch.Tensor, *,
            rope_scaling_factor: float = 8.0) -> torch.Tensor:
    """Meta's Transformer.forward on a merged state dict: start_pos 0, no kv cache."""
    dim = int(params["dim"])
    n_heads = int(params["n_heads"])
    n_kv_heads = int(params.get("n_kv_heads") or n_heads)
    eps = float(params["norm_eps"])
    _, seqlen = tokens.shape
    freqs_cis = precompute_freqs_cis(
        dim // n_heads, torch.arange(seqlen),
        theta=float(params.get("rope_theta", 10000.0)),
        use_scaled=bool(params.get("use_scaled_rope", False)),
        scale_factor=rope_scaling_factor)
    mask = torch.full((seqlen, seqlen), float("-inf")).triu(1)
    h = state["tok_embeddings.weight"][tokens]
    for layer_idx in range(int(params["n_layers"])):
        p = f"layers.{layer_idx}."
        h = h + _attention(rms_norm(h, state[p + "attention_norm.weight"], eps=eps), state,
                           p + "attention.", n_heads=n_heads, n_kv_heads=n_kv_heads,
                           freqs_cis=freqs_cis, mask=mask)
        h = h + _feed_forward(rms_norm(h, state[p + "ffn_norm.weight"], eps=eps), state,
                              p + "feed_forward.")
    h = rms_norm(h, state["norm.weight"], eps=eps)
    # Tied models (LLaMA 3.2 1B/3B) still ship output.weight in Meta's files: use it as is.
    return h @ state["output.weight"].T


def meta_logits(ckpt_dir: Path, tokens: torch.Tensor, *,
                rope_scaling_factor: float = 8.0) -> torch.Tensor:
    """(batch, seq, vocab) float32 logits of the Meta checkpoint in ckpt_dir for tokens.

    rope_scaling_factor only matters when params.json has use_scaled_rope (8 for LLaMA 3.1/3.3,
    32 for 3.2 1B/3B: params.json does not say which, the release does).
    """
    params = read_params(ckpt_dir)
    state = merge_shards(load_shards(ckpt_dir), params)
    vocab_size = state["tok_embeddings.weight"].shape[0]
    declared = int(params.get("vocab_size", -1))
    assert declared in (-1, vocab_size), f"params.json vocab_size {declared} != {vocab_size}"
    with torch.no_grad():
        return forward(state, params, tokens, rope_scaling_factor=rope_scaling_factor)
