"""What model this is: params.json plus tensor shapes -> a ModelSpec, every value with its source.

Nothing is guessed silently: each inferred value carries the rule that produced it, `plan`
prints them, and --llama-version / --instruct / --base override. The family rules live in
family_rules.py; the facts behind them, per Meta release and with sources, in docs/releases.md.
"""

from __future__ import annotations

from pathlib import Path

from streamconv.errors import CheckpointError, ParamsError
from streamconv.model.families.description import FamilyDescription
from streamconv.model.families.registry import describe, evidence_candidates, recognisers
from streamconv.model.family_rules import Facts, FamilyVerdict, decide_family
from streamconv.model.spec import ModelSpec
from streamconv.model.tensor_checks import (
    check_layer_count,
    check_names,
    check_rank_count,
    check_same_names,
    check_shapes,
    source_dtype,
)
from streamconv.model.tensor_table import TensorTable
from streamconv.source.byte_samples import tensor_prefixes
from streamconv.source.fp8_scales import quantized_names
from streamconv.source.params import MetaParams
from streamconv.source.tensor_index import Checkpoint

_TIE_SAMPLE_BYTES = 1 << 20
_KV_SAMPLE_BYTES = 1 << 16


def _embedding(ckpt: Checkpoint, params: MetaParams,
               table: TensorTable) -> tuple[int, int, str]:
    """(vocab_size, split_dim, rule) from the embedding's per-rank shape."""
    rows, cols = ckpt.tensors[0][table.name("embedding")].shape
    n = ckpt.n_ranks
    if cols == params.dim and (n == 1 or cols * n != params.dim):
        return rows * n, 0, "embedding rows x rank files"
    if cols * n == params.dim:
        return rows, 1, "embedding rows (split by hidden columns)"
    raise ParamsError(f"{table.name('embedding')} has shape {rows}x{cols} per rank file, which "
                      f"fits neither dim={params.dim} nor dim/{n}; params.json belongs to another "
                      "model")


def _tied(ckpt: Checkpoint, table: TensorTable) -> bool:
    """Whether output.weight is absent or the embedding itself (sampled, not fully read)."""
    rank0 = ckpt.tensors[0]
    if table.name("output") not in rank0:
        return True
    emb, out = rank0[table.name("embedding")], rank0[table.name("output")]
    if emb.shape != out.shape or emb.dtype != out.dtype:
        return False
    a, b = tensor_prefixes(ckpt, [(0, table.name("embedding")), (0, table.name("output"))],
                           max_bytes=_TIE_SAMPLE_BYTES)
    return a == b


def _family(params: MetaParams, ckpt: Checkpoint, table: TensorTable, *, vocab: int,
            split_dim: int,
            tokenizer_kind: str | None) -> FamilyVerdict:
    names = frozenset(ckpt.tensors[0])
    return decide_family(Facts(
        tokenizer_kind=tokenizer_kind, vocab_size=vocab,
        embedding_split_by_vocab=(split_dim == 0) if ckpt.n_ranks > 1 else None,
        rope_theta=params.rope_theta, use_scaled_rope=params.use_scaled_rope,
        norm_eps=params.norm_eps, has_n_kv_heads=params.n_kv_heads is not None,
        rope_freqs=table.ignored_layout(names), output_tied=_tied(ckpt, table)))


def _distinct_kv_heads(ckpt: Checkpoint, table: TensorTable, n_kv: int) -> tuple[int, str | None]:
    """Meta's 405B MP16 release says n_kv_heads 16 but stores each of its 8 kv heads on two
    ranks (docs/releases.md); the published config says 8. Ranks whose wk and wv agree byte for
    byte (sampled) hold the same head, and count once."""
    n = ckpt.n_ranks
    if n_kv != n or n < 2:
        return n_kv, None
    names = [table.name(role, 0) for role in ("k", "v")]
    if any(name not in ckpt.tensors[rank_idx] for rank_idx in range(n) for name in names):
        return n_kv, None
    prefixes = tensor_prefixes(ckpt, [(rank_idx, name) for rank_idx in range(n) for name in names],
                               max_bytes=_KV_SAMPLE_BYTES)
    samples = [b"".join(prefixes[2 * rank_idx:2 * rank_idx + 2]) for rank_idx in range(n)]
    for copies in range(n, 1, -1):
        if n % copies == 0 and all(samples[i] == samples[i - i % copies] for i in range(n)):
            distinct = n_kv // copies
            return distinct, (f"params.json says {n_kv}, but every {copies} neighbouring ranks "
                              f"hold the same wk/wv: {distinct} distinct heads")
    return n_kv, None


# params.json keys of Meta releases streamconv cannot turn into a faithful Hugging Face model,
# each with the sentence that says why and what to do instead (docs/releases.md).
_UNSUPPORTED_KEYS: tuple[tuple[str, str], ...] = (
    ("quantization_args", "is Meta's int4 quantized Llama 3.2 release (SpinQuant / QLoRA): it "
     "needs run-time pieces (int8 dynamic activations, SpinQuant's Hadamard rotation, LoRA "
     "adaptors) that Hugging Face transformers does not have, so it has no faithful Hugging "
     "Face form; convert the bf16 release of the same model (e.g. Llama-3.2-1B-Instruct) "
     "instead, or run this one with ExecuTorch"),
)


def _evidence_table_key() -> str:
    """The table the evidence rules' families share (LLaMA 1-3.x's): the first candidate's."""
    return evidence_candidates()[0].key


def check_supported(params: MetaParams, input_dir: Path) -> None:
    for key, why in _UNSUPPORTED_KEYS:
        if key in params.raw:
            raise ParamsError(f"{input_dir} ({key} in params.json) {why}")


def _recognised(params: MetaParams, ckpt: Checkpoint) -> FamilyDescription | None:
    """The family that claims the checkpoint by its own keys (Llama 4's moe_args), if any."""
    for description in recognisers():
        assert description.recognise is not None
        if description.recognise(params, ckpt):
            return description
    return None


def detect_model(params: MetaParams, ckpt: Checkpoint, *, family_override: str | None,
                 tokenizer_kind: str | None, instruct: tuple[bool, str]) -> ModelSpec:
    """Resolve the architecture and check every tensor shape against it, before any write."""
    check_supported(params, ckpt.input_dir)
    check_layer_count(ckpt, params)
    recognised = _recognised(params, ckpt)
    if recognised is not None:
        if family_override is not None:
            raise ParamsError(f"{ckpt.input_dir} is a {recognised.label} checkpoint (its "
                              "params.json and tensors say so); --llama-version applies to "
                              "LLaMA 1-3 only: leave it out")
        if recognised.detect is not None:
            return recognised.detect(params, ckpt, instruct)
        return _detect_llama_style(params, ckpt, family=recognised, override=None,
                                   tokenizer_kind=tokenizer_kind, instruct=instruct)
    override = None if family_override is None else describe(family_override)
    return _detect_llama_style(params, ckpt, family=override, override=override,
                               tokenizer_kind=tokenizer_kind, instruct=instruct)


def _detect_llama_style(params: MetaParams, ckpt: Checkpoint, *,
                        family: FamilyDescription | None, override: FamilyDescription | None,
                        tokenizer_kind: str | None, instruct: tuple[bool, str]) -> ModelSpec:
    """LLaMA-style detection over a family's table: the family given (recognised or
    --llama-version), or the one the evidence rules choose (always LLaMA 1-3.x's table)."""
    table = (family or describe(_evidence_table_key())).tensors
    extra_layers = family.layer_sets(params) if family and family.layer_sets else {}
    check_names(ckpt, params, table, {"all": range(params.n_layers), **extra_layers})
    check_same_names(ckpt, table)
    check_rank_count(ckpt, table, params.dim)
    sources: dict[str, str] = {}
    quantized = frozenset(quantized_names(ckpt))
    dtype = source_dtype(ckpt, table, quantized)
    vocab, split_dim, vocab_rule = _embedding(ckpt, params, table)
    if params.vocab_size is not None and params.vocab_size != vocab:
        raise ParamsError(f"params.json says vocab_size={params.vocab_size} but "
                          f"{table.name('embedding')} gives {vocab}; params.json belongs to "
                          "another model")
    sources["vocab_size"] = "params.json" if params.vocab_size is not None else vocab_rule
    doubts: tuple[str, ...] = ()
    if family is None:
        verdict = _family(params, ckpt, table, vocab=vocab, split_dim=split_dim,
                          tokenizer_kind=tokenizer_kind)
        family, sources["family"] = describe(verdict.family), f"detected: {verdict.summary}"
        doubts = tuple(f"family evidence in conflict: {c}; pass --llama-version if "
                       f"{family.label} is wrong" for c in verdict.conflicts)
    else:
        sources["family"] = ("--llama-version" if override is not None
                             else f"recognised as {family.label} by its params.json")
    sources["instruct"] = instruct[1]
    if ckpt.n_ranks > 1 and split_dim != family.embedding_split_dim:
        axis = "vocabulary" if family.embedding_split_dim == 0 else "hidden size"
        raise ParamsError(f"{family.label} splits the embedding by {axis} but these "
                          "rank files split it the other way; check --llama-version")
    n_kv = params.n_kv_heads if params.n_kv_heads is not None else params.n_heads
    sources["n_kv_heads"] = "params.json" if params.n_kv_heads is not None else "= n_heads"
    n_kv, kv_rule = _distinct_kv_heads(ckpt, table, n_kv)
    if kv_rule:
        sources["n_kv_heads"] = kv_rule
    if params.dim % params.n_heads or params.n_heads % n_kv:
        raise ParamsError(f"params.json: dim={params.dim}, n_heads={params.n_heads}, n_kv_heads="
                          f"{n_kv} do not divide evenly; params.json is damaged")
    ffn_dim = ckpt.tensors[0][table.name("gate", 0)].shape[0] * ckpt.n_ranks
    sources["ffn_dim"] = f"{table.name('gate', 0)} rows x {ckpt.n_ranks} rank file(s)"
    theta = params.rope_theta if params.rope_theta is not None else 10000.0
    sources["rope_theta"] = "params.json" if params.rope_theta is not None else "default 10000"
    # Tied or not is the family's (only LLaMA 3.2 ties; docs/releases.md), never the absence of
    # output.weight: Meta's files of every other family carry it.
    tied = family.ties_output
    if not tied and table.name("output") not in ckpt.tensors[0]:
        raise CheckpointError(f"{ckpt.rank_paths[0]} lacks {table.name('output')}, which every "
                              f"{family.label} checkpoint holds (only LLaMA 3.2 ties its output "
                              "to the embedding); download the rank files again")
    sources["tie_word_embeddings"] = "LLaMA 3.2 ties output to embedding" if tied else "default"
    sources["max_position_embeddings"] = f"{family.label} context length"
    bos = family.bos_token_id(vocab_size=vocab)
    spec = ModelSpec(
        family=family.key, n_ranks=ckpt.n_ranks, dtype=dtype, dim=params.dim,
        n_layers=params.n_layers, n_heads=params.n_heads, n_kv_heads=n_kv, vocab_size=vocab,
        ffn_dim=ffn_dim, norm_eps=params.norm_eps, rope_theta=theta,
        rope_scaling=family.rope_scaling(use_scaled_rope=params.use_scaled_rope),
        max_position_embeddings=family.context_length(rope_theta=theta),
        tie_word_embeddings=tied, embedding_split_dim=split_dim, bos_token_id=bos,
        instruct=instruct[0], tensors=table, sources=sources,
        doubts=doubts, quantized=quantized, extra_layers=extra_layers)
    check_shapes(spec, ckpt)
    return spec
