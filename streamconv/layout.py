"""Meta -> Hugging Face: names, how each tensor is split across shards, and the q/k permute.

Pure functions over shapes. Every output tensor is treated as a matrix of rows (a 1-D norm is
one row), so that any job, however the budget cuts it, is "rows [a, b) of one HF tensor", built
from copy blocks that each read a contiguous byte range of one shard.

Why q and k are permuted: Meta's rotary embedding rotates interleaved pairs (x0, x1), (x2, x3)...
of each head, HF's rotates the two halves (x0, x_{d/2}), ... The permute reorders each head's
rows so HF's rotation of the converted weights equals Meta's rotation of the originals; it is
the same reordering as transformers' convert_llama_weights_to_hf.py, applied per head, with
n_kv_heads for k so grouped-query attention works.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from .detect import ModelSpec, shard_shape
from .fp8 import FP8_DTYPE


class Split(enum.Enum):
    ROWS = "rows"  # column-parallel in Meta's code: shards stacked on dim 0
    COLS = "cols"  # row-parallel: shards side by side on dim 1
    REPLICATED = "replicated"  # the same tensor on every shard: taken from shard 0


@dataclass(frozen=True)
class TensorLayout:
    hf_name: str
    meta_name: str
    shape: tuple[int, ...]
    split: Split
    # The dtype in the rank files: the model's, or fp8.FP8_DTYPE for the feed-forward weights
    # of Meta's FP8 release, which are dequantized with their row scales on the way.
    src_dtype: torch.dtype
    rotary_head_dim: int | None = None  # rows are permuted within heads of this many rows

    @property
    def n_rows(self) -> int:
        return self.shape[0] if len(self.shape) == 2 else 1

    @property
    def n_cols(self) -> int:
        return self.shape[-1]

    @property
    def row_unit(self) -> int:
        """Jobs cut this tensor at multiples of this many rows (whole heads for q/k)."""
        return self.rotary_head_dim or 1


@dataclass(frozen=True)
class CopyBlock:
    """Rows of one shard's tensor -> a rectangle of the output tensor."""

    shard_idx: int
    meta_name: str
    src_row_start: int
    n_rows: int
    dst_row_start: int
    dst_col_start: int
    n_cols: int


# (HF suffix, Meta suffix, split across shards, rotary permute of rows)
_LAYER_TENSORS: tuple[tuple[str, str, Split, bool], ...] = (
    ("self_attn.q_proj", "attention.wq", Split.ROWS, True),
    ("self_attn.k_proj", "attention.wk", Split.ROWS, True),
    ("self_attn.v_proj", "attention.wv", Split.ROWS, False),
    ("self_attn.o_proj", "attention.wo", Split.COLS, False),
    ("mlp.gate_proj", "feed_forward.w1", Split.ROWS, False),
    ("mlp.up_proj", "feed_forward.w3", Split.ROWS, False),
    ("mlp.down_proj", "feed_forward.w2", Split.COLS, False),
    ("input_layernorm", "attention_norm", Split.REPLICATED, False),
    ("post_attention_layernorm", "ffn_norm", Split.REPLICATED, False),
)


def _layer_shape(spec: ModelSpec, hf_suffix: str) -> tuple[int, ...]:
    q_rows, kv_rows = spec.n_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "self_attn.q_proj": (q_rows, spec.dim), "self_attn.k_proj": (kv_rows, spec.dim),
        "self_attn.v_proj": (kv_rows, spec.dim), "self_attn.o_proj": (spec.dim, q_rows),
        "mlp.gate_proj": (spec.ffn_dim, spec.dim), "mlp.up_proj": (spec.ffn_dim, spec.dim),
        "mlp.down_proj": (spec.dim, spec.ffn_dim), "input_layernorm": (spec.dim,),
        "post_attention_layernorm": (spec.dim,),
    }
    return shapes[hf_suffix]


def hf_layouts(spec: ModelSpec, *, quantized: frozenset[str] = frozenset()) -> list[TensorLayout]:
    """All output tensors in the order HF's save_pretrained writes them; `quantized` names the
    Meta tensors stored as fp8 (fp8.quantized_names), every other one is in spec.dtype."""
    emb_split = Split.ROWS if spec.embedding_split_dim == 0 else Split.COLS
    layouts = [TensorLayout("model.embed_tokens.weight", "tok_embeddings.weight",
                            (spec.vocab_size, spec.dim), emb_split, spec.dtype)]
    for layer_idx in range(spec.n_layers):
        for hf_suffix, meta_suffix, split, rotary in _LAYER_TENSORS:
            meta_name = f"layers.{layer_idx}.{meta_suffix}.weight"
            layouts.append(TensorLayout(
                f"model.layers.{layer_idx}.{hf_suffix}.weight", meta_name,
                _layer_shape(spec, hf_suffix), split,
                FP8_DTYPE if meta_name in quantized else spec.dtype,
                spec.head_dim if rotary else None))
    layouts.append(TensorLayout("model.norm.weight", "norm.weight", (spec.dim,),
                                Split.REPLICATED, spec.dtype))
    if not spec.tie_word_embeddings:
        layouts.append(TensorLayout("lm_head.weight", "output.weight",
                                    (spec.vocab_size, spec.dim), Split.ROWS, spec.dtype))
    return layouts


def copy_blocks(layout: TensorLayout, spec: ModelSpec, row_start: int,
                row_stop: int) -> list[CopyBlock]:
    """The shard reads that produce rows [row_start, row_stop) of one output tensor.

    ROWS tensors whose shards outnumber the distinct row groups (kv heads of 405B in 16 shards)
    read each group from the first shard that holds it.
    """
    if layout.split is Split.REPLICATED:
        return [CopyBlock(0, layout.meta_name, 0, 1, 0, 0, layout.n_cols)]
    src_shape = shard_shape(spec, layout.meta_name)
    if layout.split is Split.COLS:
        width = src_shape[1]
        return [CopyBlock(s, layout.meta_name, row_start, row_stop - row_start, row_start,
                          s * width, width) for s in range(spec.n_shards)]
    per_shard = src_shape[0]
    replicas = spec.n_shards * per_shard // layout.n_rows
    blocks = []
    row = row_start
    while row < row_stop:
        group = row // per_shard
        stop = min(row_stop, (group + 1) * per_shard)
        blocks.append(CopyBlock(group * replicas, layout.meta_name, row - group * per_shard,
                                stop - row, row, 0, layout.n_cols))
        row = stop
    return blocks


def replica_shards(layout: TensorLayout, spec: ModelSpec) -> list[list[int]]:
    """For each distinct row group, every shard holding a copy (for agreement checks)."""
    if layout.split is Split.REPLICATED:
        return [list(range(spec.n_shards))]
    if layout.split is Split.COLS:
        return [[s] for s in range(spec.n_shards)]
    per_shard = shard_shape(spec, layout.meta_name)[0]
    replicas = spec.n_shards * per_shard // layout.n_rows
    return [list(range(g * replicas, (g + 1) * replicas))
            for g in range(spec.n_shards // replicas)]


def permute_rotary_into(dst: torch.Tensor, src: torch.Tensor, head_dim: int) -> None:
    """dst[rows] = src rows reordered from Meta's interleaved pairs to HF's halves, per head.

    Equals transformers' permute(w) = w.view(h, d/2, 2, C).transpose(1, 2).reshape(h*d, C);
    src and dst hold whole heads. The copy also casts to dst's dtype.
    """
    n_rows, n_cols = src.shape
    heads = n_rows // head_dim
    dst.view(heads, 2, head_dim // 2, n_cols).copy_(
        src.view(heads, head_dim // 2, 2, n_cols).transpose(1, 2))
