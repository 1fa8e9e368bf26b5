"""The one table of a family's tensors: Meta name, Hugging Face name, shape, split, transform.

Detection (which names a rank file must hold, which shape each must have), the planner (which
rank rows make which output rows), the fixtures that write test checkpoints and the docs all
read this table; nothing else spells a Meta tensor name. A new family whose tensors differ is a
new table (and a FamilyFacts naming it), not new code in those places.

Shapes are written with symbolic dimensions, resolved from the model's sizes (`Sizes`). Splits
say how Meta's model-parallel ranks hold a tensor (Meta's llama and llama-models code, and
transformers' convert_llama_weights_to_hf.py agree): ROWS, column-parallel layers, stacked on
dim 0; COLS, row-parallel layers, side by side on dim 1; REPLICATED, the same on every rank;
EMBEDDING, by vocabulary rows (LLaMA 3's VocabParallelEmbedding) or by hidden columns (LLaMA
1/2's ParallelEmbedding), as the family says.

One entry is one piece: the rank slices of one Meta tensor (or of a part of it) landing in one
Hugging Face tensor (or in a band of its columns). Llama 4 needs the general case: a fused Meta
tensor feeds several entries (`part`: q, k, v rows of each rank's wqkv), several entries fill one
Hugging Face tensor (`col_offset`: gate and up halves of the experts' gate_up_proj), a tensor
stacks per-expert blocks that are each split across ranks (`stack`), and some are transposed.
Dimensions are expressions over the model's sizes ("q_rows // ranks").
"""

from __future__ import annotations

import ast
import enum
import functools
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, overload


class Split(enum.Enum):
    ROWS = "rows"
    COLS = "cols"
    REPLICATED = "replicated"
    EMBEDDING = "embedding"  # ROWS or COLS, by the family's embedding split


class Sizes(Protocol):
    """What a table's symbolic dimensions resolve from (ModelSpec and the fixtures' specs)."""

    @property
    def dim(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def n_heads(self) -> int: ...
    @property
    def kv_heads(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def ffn_dim(self) -> int: ...
    @property
    def n_ranks(self) -> int: ...
    @property
    def embedding_split_dim(self) -> int: ...
    @property
    def extra_dims(self) -> Mapping[str, int]:
        """A family's own dimension names (Llama 4: experts, moe_ffn, vision_dim, ...)."""
        ...


@dataclass(frozen=True, kw_only=True)
class LayerMap(Sequence[int]):
    """A layer set whose Hugging Face layer indices are not its Meta ones: as a sequence it is
    the Meta indices (what the rank files' names hold), and `hf` says where each lands in the
    Hugging Face layer list. Llama 3.2 Vision needs it: transformers' Mllama decoder is one
    list of layers with the cross-attention layers interleaved among the text layers, while
    Meta numbers its text layers and its cross-attention layers separately (llama-models
    llama3/multimodal/model.py, fusion_schedule). A plain sequence means HF index = Meta
    index, as in every other family."""

    meta: tuple[int, ...]
    hf: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.meta) != len(self.hf) or len(set(self.hf)) != len(self.hf):
            raise ValueError(f"a layer map needs one distinct HF index per Meta index: {self}")

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...
    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        return self.meta[index]

    def __len__(self) -> int:
        return len(self.meta)

    def hf_index(self, meta_idx: int) -> int:
        return self.hf[self.meta.index(meta_idx)]


# Which layers an entry exists in, by name: "all" is every text layer; a family may add more
# (Llama 4: "moe", "dense", "vision"). A set given as a LayerMap also says each layer's HF
# index.
LayerSets = Mapping[str, Sequence[int]]


def hf_layer_index(layers: Sequence[int], meta_idx: int) -> int:
    """Where Meta layer `meta_idx` of a layer set sits in the Hugging Face layer list."""
    return layers.hf_index(meta_idx) if isinstance(layers, LayerMap) else meta_idx


def uniform_layers(n_layers: int) -> dict[str, Sequence[int]]:
    return {"all": range(n_layers)}


class Transform(enum.Enum):
    """What happens to a tensor's rows on the way, beyond the cast. ROTARY: rows are whole heads
    turned from Meta's interleaved rotary pairs into Hugging Face's rotated halves
    (runtime/transforms.py). Room for the next ones (slices of a fused tensor, stacked experts,
    transposes) is here. TRANSPOSE: the rank tensor is the Hugging Face tensor transposed (Llama
    4's router_DE, a (dim, experts) matrix stored for x @ W); such a tensor is small and is
    converted in one job. BAND_TRANSPOSE: a stacked tensor (experts) whose every rank's band of
    a unit is written transposed (GGUF's expert tensors, stored for W @ x where Meta and Hugging
    Face store x @ W): each band is one contiguous rank read, transposed into a rectangle of
    the unit, so jobs are cut at whole bands and a band's staging is counted by the planner
    like any block's."""

    ROTARY = "rotary"
    TRANSPOSE = "transpose"
    BAND_TRANSPOSE = "band_transpose"


class OutputFormat(enum.Enum):
    """What the conversion writes: a Hugging Face folder of safetensors shards, or one GGUF file
    for llama.cpp."""

    SAFETENSORS = "safetensors"
    GGUF = "gguf"


# Which of a table's transforms each output format applies. GGUF keeps Meta's interleaved
# rotary layout of q and k: llama.cpp rotates interleaved pairs like Meta, and its converter
# undoes the Hugging Face permute (convert_hf_to_gguf.py, LlamaModel.permute with
# undo_permute = True), so a Meta tensor goes into the GGUF file unpermuted.
FORMAT_TRANSFORMS: Mapping[OutputFormat, frozenset[Transform]] = {
    OutputFormat.SAFETENSORS: frozenset({Transform.ROTARY, Transform.TRANSPOSE}),
    OutputFormat.GGUF: frozenset({Transform.TRANSPOSE, Transform.BAND_TRANSPOSE}),
}


def transform_in(entry: TensorEntry, output_format: OutputFormat) -> Transform | None:
    """The entry's transform where the format applies it, else None."""
    if entry.transform in FORMAT_TRANSFORMS[output_format]:
        return entry.transform
    return None


@dataclass(frozen=True)
class TensorEntry:
    role: str  # streamconv's own name for it, used by code that needs one tensor (e.g. "q")
    hf_name: str  # "{layer}" stands for the layer index
    meta_name: str
    shape: tuple[str, ...]  # symbolic: dim, q_rows, kv_rows, ffn_dim, vocab_size
    split: Split
    transform: Transform | None = None
    # Written only when the model does not tie its output to the embedding.
    unless_tied: bool = False
    # A rank file may lack it (output.weight of tied models).
    optional: bool = False
    # The merged Meta tensor's shape, where it is not the Hugging Face shape (fused or
    # flattened tensors); the rank shape follows from it and the split.
    meta_shape: tuple[str, ...] | None = None
    # ROWS of a fused tensor: (first row, rows) of this entry's part in each rank's tensor.
    part: tuple[str, str] | None = None
    # The Hugging Face column where this entry's columns start (others fill the rest).
    col_offset: str | None = None
    # The Hugging Face row where this entry's rows start: its merged Meta tensor (meta_shape)
    # is one band of rows, other entries fill the others (Llama 3.2 Vision's embed_tokens is
    # tok_embeddings' rows, then learnable_embedding's 8). The row analogue of col_offset.
    row_offset: str | None = None
    # ROWS: the Hugging Face rows are this many stacked units (experts), each split across the
    # ranks; a rank holds its slice of every unit, unit after unit.
    stack: str | None = None
    # Which layers the entry exists in (a name of the model's LayerSets).
    layers: str = "all"
    # Meta's FP8 release: the key of this tensor's scales in fp8_scales_N.pt ("{layer}" for
    # the layer index) and how many stored rows share one vector of column scales.
    fp8_scale: str | None = None
    fp8_scale_rows: str | None = None
    # The output formats that write this entry (None: all). Llama 4's experts are one Hugging
    # Face tensor but two transposed GGUF ones; its vision tower is not in the text GGUF.
    formats: frozenset[OutputFormat] | None = None
    # A computed tensor: the name of a row gather (model/row_gathers.py) that places runs of
    # the (REPLICATED) Meta tensor's rows into the Hugging Face tensor; what it does not fill
    # is zero. Llama 3.2 Vision's tile position embeddings, precomputed per aspect ratio.
    gather: str | None = None
    # The shape written to the file, where it is `shape` reshaped (same values, same order):
    # `shape` is what the planner cuts into rows (Llama 3.2 Vision's patch embedding is
    # Meta's (width, 3*14*14) matrix, written as the (width, 3, 14, 14) conv kernel).
    stored_shape: tuple[str, ...] | None = None

    def written_in(self, output_format: OutputFormat) -> bool:
        return self.formats is None or output_format in self.formats

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.meta_name


@dataclass(frozen=True)
class TensorTable:
    entries: tuple[TensorEntry, ...]
    # Meta tensors the conversion drops: buffers the model recomputes.
    ignored: tuple[str, ...] = ()

    def entries_in_order(self, layers: int | LayerSets,
                         output_format: OutputFormat = OutputFormat.SAFETENSORS
                         ) -> Iterator[tuple[TensorEntry, int | None]]:
        """(entry, Meta layer index) in the order save_pretrained writes the tensors (see
        `placed`)."""
        for entry, meta_idx, _ in self.placed(layers, output_format):
            yield entry, meta_idx

    def placed(self, layers: int | LayerSets,
               output_format: OutputFormat = OutputFormat.SAFETENSORS
               ) -> Iterator[tuple[TensorEntry, int | None, int | None]]:
        """(entry, Meta layer index, HF layer index) in the order save_pretrained writes the
        tensors: entries outside the layers as they come; each run of per-layer entries by HF
        layer index (the entries of a layer that exist in it, in table order), so a table lists
        its model's modules in order. Only the entries `output_format` writes (the Hugging Face
        ones by default)."""
        sets = uniform_layers(layers) if isinstance(layers, int) else layers
        run: list[TensorEntry] = []
        written = [e for e in self.entries if e.written_in(output_format)]
        for entry in (*written, None):
            if entry is not None and entry.per_layer:
                run.append(entry)
                continue
            if run:
                members = [(hf_layer_index(sets.get(e.layers, ()), meta_idx), position,
                            meta_idx) for position, e in enumerate(run)
                           for meta_idx in sets.get(e.layers, ())]
                for hf_idx, position, meta_idx in sorted(members):
                    yield run[position], meta_idx, hf_idx
                run = []
            if entry is not None:
                yield entry, None, None

    def meta_names(self, layers: int | LayerSets, *, required_only: bool = False) -> list[str]:
        """Each Meta tensor once (a fused one feeds several entries)."""
        names = [meta_name(e, i) for e, i in self.entries_in_order(layers)
                 if not (required_only and e.optional)]
        return list(dict.fromkeys(names))

    def lookup(self, meta_tensor_name: str) -> TensorEntry | None:
        """The (first Hugging Face) entry reading a Meta tensor."""
        pattern = _pattern_of(meta_tensor_name)
        return next((e for e in self.entries if e.meta_name == pattern
                     and e.written_in(OutputFormat.SAFETENSORS)), None)

    def entry(self, role: str) -> TensorEntry:
        return next(e for e in self.entries if e.role == role)

    def name(self, role: str, layer_idx: int | None = None) -> str:
        """The Meta name of a role's tensor (in layer layer_idx for per-layer ones)."""
        return meta_name(self.entry(role), layer_idx)

    def is_ignored(self, meta_tensor_name: str) -> bool:
        return _pattern_of(meta_tensor_name) in self.ignored

    def ignored_layout(self, meta_tensor_names: frozenset[str]) -> str:
        """Which of the ignored tensors a rank file carries: "per-layer" (one in each layer),
        "top" (outside the layers) or "none"; the families differ in it (family_rules.py)."""
        found = {_pattern_of(n) for n in meta_tensor_names} & set(self.ignored)
        if any("{layer}" in pattern for pattern in found):
            return "per-layer"
        return "top" if found else "none"


# The first dot-separated number of a name is its layer index (layers.3., resblocks.3.).
_LAYER_INDEX = re.compile(r"(^|\.)\d+\.")


def _pattern_of(meta_tensor_name: str) -> str:
    return _LAYER_INDEX.sub(r"\1{layer}.", meta_tensor_name, count=1)


def layer_index(meta_tensor_name: str) -> int | None:
    match = _LAYER_INDEX.search(meta_tensor_name)
    return int(match.group(0).strip(".")) if match else None


def meta_name(entry: TensorEntry, layer_idx: int | None) -> str:
    return entry.meta_name if layer_idx is None else entry.meta_name.format(layer=layer_idx)


def hf_name(entry: TensorEntry, layer_idx: int | None) -> str:
    """The Hugging Face name; `layer_idx` is the HF layer index (TensorTable.placed)."""
    return entry.hf_name if layer_idx is None else entry.hf_name.format(layer=layer_idx)


def dims_of(sizes: Sizes) -> dict[str, int]:
    """The names a table's expressions may use."""
    return {"dim": sizes.dim, "q_rows": sizes.n_heads * sizes.head_dim,
            "kv_rows": sizes.kv_heads * sizes.head_dim, "ffn_dim": sizes.ffn_dim,
            "vocab_size": sizes.vocab_size, "ranks": sizes.n_ranks, **sizes.extra_dims}


_OPERATORS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv}


@functools.cache
def _parsed(expression: str) -> ast.expr:
    """Parsed once: a big model's checks evaluate the table's few expressions thousands of
    times."""
    return ast.parse(expression, mode="eval").body


def evaluate(expression: str, dims: Mapping[str, int]) -> int:
    """An integer expression over dimension names: names, integers, + - * // and brackets."""
    if expression in dims:
        return dims[expression]

    def value(node: ast.expr) -> int:
        if isinstance(node, ast.Name):
            return dims[node.id]
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not a dimension expression: {expression!r}")
    return value(_parsed(expression))


def _resolve(sizes: Sizes, symbol: str) -> int:
    return evaluate(symbol, dims_of(sizes))


def full_shape(entry: TensorEntry, sizes: Sizes) -> tuple[int, ...]:
    """The Hugging Face tensor's shape."""
    return tuple(_resolve(sizes, s) for s in entry.shape)


def written_shape(entry: TensorEntry, sizes: Sizes) -> tuple[int, ...]:
    """The Hugging Face tensor's shape in the file (stored_shape, where it is a reshape)."""
    return tuple(_resolve(sizes, s) for s in entry.stored_shape or entry.shape)


def meta_full_shape(entry: TensorEntry, sizes: Sizes) -> tuple[int, ...]:
    """The merged Meta tensor's shape (all ranks together)."""
    return tuple(_resolve(sizes, s) for s in entry.meta_shape or entry.shape)


def effective_split(entry: TensorEntry, sizes: Sizes) -> Split:
    if entry.split is Split.EMBEDDING:
        return Split.ROWS if sizes.embedding_split_dim == 0 else Split.COLS
    return entry.split


def rank_shape(entry: TensorEntry, sizes: Sizes) -> tuple[int, ...]:
    """The shape every rank file holds. A rank holds at least one kv head: with more ranks than
    kv heads (405B in 16 ranks) each kv head is stored on several ranks."""
    shape = list(meta_full_shape(entry, sizes))
    n = sizes.n_ranks
    split = effective_split(entry, sizes)
    if split is Split.ROWS:
        if (entry.meta_shape or entry.shape)[0] == "kv_rows":
            shape[0] = max(sizes.kv_heads // n, 1) * sizes.head_dim
        else:
            shape[0] //= n
    elif split is Split.COLS:
        shape[-1] //= n
    return tuple(shape)


def rotary_head_dim(entry: TensorEntry, sizes: Sizes,
                    output_format: OutputFormat = OutputFormat.SAFETENSORS) -> int | None:
    return sizes.head_dim if transform_in(entry, output_format) is Transform.ROTARY else None


def _layer(role: str, hf_suffix: str, meta_suffix: str, shape: tuple[str, ...], split: Split,
           transform: Transform | None = None) -> TensorEntry:
    return TensorEntry(role, f"model.layers.{{layer}}.{hf_suffix}.weight",
                       f"layers.{{layer}}.{meta_suffix}.weight", shape, split, transform)


# LLaMA 1, 2, Code Llama, 3, 3.1, 3.2, 3.3: one architecture (Meta's llama/model.py and
# llama-models' llama3/model.py; transformers' LlamaForCausalLM). Why q and k are permuted:
# runtime/transforms.py.
LLAMA_TENSORS = TensorTable(
    entries=(
        #   role       Hugging Face                 Meta               shape            split
        TensorEntry("embedding", "model.embed_tokens.weight", "tok_embeddings.weight",
                    ("vocab_size", "dim"), Split.EMBEDDING),
        _layer("q", "self_attn.q_proj", "attention.wq", ("q_rows", "dim"), Split.ROWS,
               Transform.ROTARY),
        _layer("k", "self_attn.k_proj", "attention.wk", ("kv_rows", "dim"), Split.ROWS,
               Transform.ROTARY),
        _layer("v", "self_attn.v_proj", "attention.wv", ("kv_rows", "dim"), Split.ROWS),
        _layer("o", "self_attn.o_proj", "attention.wo", ("dim", "q_rows"), Split.COLS),
        _layer("gate", "mlp.gate_proj", "feed_forward.w1", ("ffn_dim", "dim"), Split.ROWS),
        _layer("up", "mlp.up_proj", "feed_forward.w3", ("ffn_dim", "dim"), Split.ROWS),
        _layer("down", "mlp.down_proj", "feed_forward.w2", ("dim", "ffn_dim"), Split.COLS),
        _layer("attention_norm", "input_layernorm", "attention_norm", ("dim",),
               Split.REPLICATED),
        _layer("ffn_norm", "post_attention_layernorm", "ffn_norm", ("dim",), Split.REPLICATED),
        TensorEntry("norm", "model.norm.weight", "norm.weight", ("dim",), Split.REPLICATED),
        TensorEntry("output", "lm_head.weight", "output.weight", ("vocab_size", "dim"),
                    Split.ROWS, unless_tied=True, optional=True),
    ),
    # The rotary frequencies: one top-level rope.freqs in LLaMA 2 files, one per layer in LLaMA 1
    # files (docs/releases.md); Meta's model code recomputes them.
    ignored=("rope.freqs", "layers.{layer}.attention.inner_attention.rope.freqs"),
)
