"""ModelSpec: the resolved architecture every later stage reads (planner, configs, plan)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamconv.model.tensor_table import LLAMA_TENSORS, TensorTable, meta_full_shape
from streamconv.source.fp8_scales import ScaleLayout
from streamconv.system.dtypes import DType


@dataclass(frozen=True)
class ModelSpec:
    """The resolved architecture; every field that was inferred has an entry in `sources`."""

    family: str  # the family's key (model/families/registry.py describes it)
    n_ranks: int
    dtype: DType
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    ffn_dim: int
    norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    embedding_split_dim: int  # 0: vocabulary rows per rank file (LLaMA 3), 1: hidden columns
    bos_token_id: int
    instruct: bool = False
    tensors: TensorTable = field(default=LLAMA_TENSORS, compare=False)
    sources: dict[str, str] = field(default_factory=dict, compare=False)
    # Evidence that pointed elsewhere than the family chosen: printed as warnings.
    doubts: tuple[str, ...] = field(default=(), compare=False)
    # Meta names stored as fp8 with row scales (the FP8 405B release; fp8_scales.py).
    quantized: frozenset[str] = field(default=frozenset(), compare=False)
    # Where their scales are, where it is not 405B's one value per row (Llama 4's experts).
    scale_layouts: Mapping[str, ScaleLayout] = field(default_factory=dict, compare=False)
    # A family's own dimension names for its tensor table, and its layer kinds beyond "all"
    # (Llama 4: experts, moe_ffn, ...; "moe", "dense", "vision" layers).
    extra_dims: Mapping[str, int] = field(default_factory=dict, compare=False)
    extra_layers: Mapping[str, Sequence[int]] = field(default_factory=dict, compare=False)
    # params.json as read, for config fields only one family has (Llama 4's model/llama4.py).
    raw_params: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        """The family's name as messages and `plan` print it."""
        from streamconv.model.families.registry import describe

        return describe(self.family).label

    @property
    def layer_sets(self) -> dict[str, Sequence[int]]:
        return {"all": range(self.n_layers), **self.extra_layers}

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def n_params(self) -> int:
        """Parameters of the converted model, summed over its tensor table."""
        total = 0
        for entry, _ in self.tensors.entries_in_order(self.layer_sets):
            if not (entry.unless_tied and self.tie_word_embeddings):
                total += math.prod(meta_full_shape(entry, self))
        return total

    @property
    def size_label(self) -> str:
        n = self.n_params
        return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
