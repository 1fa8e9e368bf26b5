"""What model this is: params.json plus tensor shapes -> a ModelSpec, every value with its source.

Nothing is guessed silently: each inferred value carries the rule that produced it, `plan`
prints them, and --llama-version / --instruct / --base override. The family rules live in
family_rules.py; the facts behind them, per Meta release and with sources, in docs/releases.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Checkpoint, ShardReader, TensorRef, missing_shards_error
from .errors import CheckpointError, ParamsError
from .family import Family, context_length, rope_scaling
from .family_rules import LAYER_ROPE_FREQS, Facts, FamilyVerdict, decide_family
from .fp8 import quantized_names
from .params import MetaParams

_TIE_SAMPLE_BYTES = 1 << 20
_KV_SAMPLE_BYTES = 1 << 16


@dataclass(frozen=True)
class ModelSpec:
    """The resolved architecture; every field that was inferred has an entry in `sources`."""

    family: Family
    n_shards: int
    dtype: torch.dtype
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
    embedding_split_dim: int  # 0: vocabulary rows per shard (LLaMA 3), 1: hidden columns
    bos_token_id: int
    eos_token_id: int
    instruct: bool = False
    sources: dict[str, str] = field(default_factory=dict, compare=False)
    # Evidence that pointed elsewhere than the family chosen: printed as warnings.
    doubts: tuple[str, ...] = field(default=(), compare=False)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def n_params(self) -> int:
        attn = self.dim * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        layer = attn + 3 * self.dim * self.ffn_dim + 2 * self.dim
        head = 0 if self.tie_word_embeddings else self.vocab_size * self.dim
        return self.n_layers * layer + self.vocab_size * self.dim + head + self.dim

    @property
    def size_label(self) -> str:
        n = self.n_params
        return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def expected_names(n_layers: int) -> list[str]:
    names = ["tok_embeddings.weight"]
    for layer_idx in range(n_layers):
        p = f"layers.{layer_idx}."
        names += [p + s for s in (
            "attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
            "attention.wo.weight", "feed_forward.w1.weight", "feed_forward.w2.weight",
            "feed_forward.w3.weight", "attention_norm.weight", "ffn_norm.weight")]
    return names + ["norm.weight", "output.weight"]


OPTIONAL_NAMES = frozenset({"rope.freqs", "output.weight"})


def is_ignored(meta_name: str) -> bool:
    """Tensors Meta's files carry that the model recomputes: the rotary frequencies, at the top
    (LLaMA 2) or once per layer (LLaMA 1); nothing of them goes into the output."""
    return meta_name == "rope.freqs" or LAYER_ROPE_FREQS.match(meta_name) is not None


def _check_names(ckpt: Checkpoint, params: MetaParams) -> None:
    expected = set(expected_names(params.n_layers))
    for shard_idx, refs in enumerate(ckpt.tensors):
        path = ckpt.shard_paths[shard_idx]
        missing = sorted(expected - set(refs) - OPTIONAL_NAMES)
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise CheckpointError(
                f"{path} lacks {', '.join(missing[:3])}{more} (params.json says n_layers="
                f"{params.n_layers}); the file or params.json belongs to another model")
        unknown = sorted(n for n in set(refs) - expected - OPTIONAL_NAMES if not is_ignored(n))
        if unknown and all(n.startswith("model.") for n in unknown):
            raise CheckpointError(f"{path} holds Hugging Face tensor names ({unknown[0]}, ...), "
                                  "not Meta's: it is already in Hugging Face format and needs no "
                                  "conversion")
        if unknown:
            more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
            raise CheckpointError(
                f"{path} holds tensors streamconv does not know: {', '.join(unknown[:3])}{more};"
                " it is not a plain LLaMA text checkpoint (n_layers in params.json may be wrong)")


def _check_shard_count(ckpt: Checkpoint, params: MetaParams) -> None:
    """wq is split by rows on every family, so its rows give the number of shards expected."""
    wq = ckpt.tensors[0].get("layers.0.attention.wq.weight")
    if wq is None or len(wq.shape) != 2 or wq.shape[0] == 0 or params.dim % wq.shape[0]:
        return  # _check_names and check_shapes say what is wrong
    expected = params.dim // wq.shape[0]
    if expected > ckpt.n_shards:
        raise missing_shards_error(ckpt.input_dir, list(range(ckpt.n_shards, expected)),
                                   ckpt.n_shards, expected)
    if expected < ckpt.n_shards:
        raise CheckpointError(f"{ckpt.input_dir} holds {ckpt.n_shards} shards but their shapes "
                              f"and params.json (dim={params.dim}) make {expected}; remove "
                              "consolidated files that belong to another model")


def _source_dtype(ckpt: Checkpoint) -> torch.dtype:
    """The float dtype of every tensor except Meta's FP8 feed-forward weights (fp8.py), which
    are checked against their scale files instead; an FP8 release's dtype is its bf16."""
    quantized = quantized_names(ckpt)
    dtypes: dict[torch.dtype, str] = {}
    for refs in ckpt.tensors:
        for ref in refs.values():
            if not is_ignored(ref.meta_name) and ref.meta_name not in quantized:
                dtypes.setdefault(ref.dtype, f"{ref.path.name}:{ref.meta_name}")
    allowed = {torch.float32, torch.float16, torch.bfloat16}
    if len(dtypes) != 1 or not set(dtypes) <= allowed:
        found = ", ".join(f"{str(d).removeprefix('torch.')} ({where})"
                          for d, where in dtypes.items())
        raise CheckpointError(f"weights must share one float dtype, found {found}; the shards "
                              "come from different downloads: fetch them again together")
    return next(iter(dtypes))


def _embedding(ckpt: Checkpoint, params: MetaParams) -> tuple[int, int, str]:
    """(vocab_size, split_dim, rule) from tok_embeddings' per-shard shape."""
    rows, cols = ckpt.tensors[0]["tok_embeddings.weight"].shape
    n = ckpt.n_shards
    if cols == params.dim and (n == 1 or cols * n != params.dim):
        return rows * n, 0, "tok_embeddings rows x shards"
    if cols * n == params.dim:
        return rows, 1, "tok_embeddings rows (split by hidden columns)"
    raise ParamsError(f"tok_embeddings.weight has shape {rows}x{cols} per shard, which fits "
                      f"neither dim={params.dim} nor dim/{n}; params.json belongs to another model")


def _tied(ckpt: Checkpoint) -> bool:
    """Whether output.weight is absent or the embedding itself (sampled, not fully read)."""
    shard0 = ckpt.tensors[0]
    if "output.weight" not in shard0:
        return True
    emb, out = shard0["tok_embeddings.weight"], shard0["output.weight"]
    if emb.shape != out.shape or emb.dtype != out.dtype:
        return False
    n = min(_TIE_SAMPLE_BYTES, emb.nbytes)
    a, b = bytearray(n), bytearray(n)
    with ShardReader([ckpt.shard_paths[0]]) as reader:
        reader.read_into(0, emb.offset_bytes, memoryview(a))
        reader.read_into(0, out.offset_bytes, memoryview(b))
    return a == b


def _family(params: MetaParams, ckpt: Checkpoint, *, vocab: int, split_dim: int,
            tokenizer_kind: str | None) -> FamilyVerdict:
    names = frozenset(ckpt.tensors[0])
    return decide_family(Facts(
        tokenizer_kind=tokenizer_kind, vocab_size=vocab,
        embedding_split_by_vocab=(split_dim == 0) if ckpt.n_shards > 1 else None,
        rope_theta=params.rope_theta, use_scaled_rope=params.use_scaled_rope,
        norm_eps=params.norm_eps, has_n_kv_heads=params.n_kv_heads is not None,
        tensor_names=names, output_tied=_tied(ckpt)))


def _distinct_kv_heads(ckpt: Checkpoint, n_kv: int) -> tuple[int, str | None]:
    """Meta's 405B MP16 release says n_kv_heads 16 but stores each of its 8 kv heads on two
    ranks (docs/releases.md); the published config says 8. Ranks whose wk and wv agree byte for
    byte (sampled) hold the same head, and count once."""
    n = ckpt.n_shards
    if n_kv != n or n < 2:
        return n_kv, None
    samples = []
    with ShardReader(ckpt.shard_paths) as reader:
        for shard_idx in range(n):
            sample = b""
            for suffix in ("wk", "wv"):
                ref = ckpt.tensors[shard_idx].get(f"layers.0.attention.{suffix}.weight")
                if ref is None:
                    return n_kv, None
                buf = bytearray(min(_KV_SAMPLE_BYTES, ref.nbytes))
                reader.read_into(shard_idx, ref.offset_bytes, memoryview(buf))
                sample += bytes(buf)
            samples.append(sample)
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
    ("vision_chunk_size", "is a Llama 3.2 Vision model (image encoder and cross-attention "
     "layers), which streamconv does not convert yet; use the text-only Llama 3.x releases"),
    ("moe_args", "is a Llama 4 model, which streamconv does not convert yet"),
    ("vision_args", "is a Llama 4 model, which streamconv does not convert yet"),
)


def check_supported(params: MetaParams, input_dir: Path) -> None:
    for key, why in _UNSUPPORTED_KEYS:
        if key in params.raw:
            raise ParamsError(f"{input_dir} ({key} in params.json) {why}")


def detect_model(params: MetaParams, ckpt: Checkpoint, *, family_override: Family | None,
                 tokenizer_kind: str | None, instruct: tuple[bool, str]) -> ModelSpec:
    """Resolve the architecture and check every tensor shape against it, before any write."""
    check_supported(params, ckpt.input_dir)
    _check_shard_count(ckpt, params)
    _check_names(ckpt, params)
    sources: dict[str, str] = {}
    dtype = _source_dtype(ckpt)
    vocab, split_dim, vocab_rule = _embedding(ckpt, params)
    if params.vocab_size is not None and params.vocab_size != vocab:
        raise ParamsError(f"params.json says vocab_size={params.vocab_size} but "
                          f"tok_embeddings.weight gives {vocab}; params.json belongs to another "
                          "model")
    sources["vocab_size"] = "params.json" if params.vocab_size is not None else vocab_rule
    doubts: tuple[str, ...] = ()
    if family_override is not None:
        family, sources["family"] = family_override, "--llama-version"
    else:
        verdict = _family(params, ckpt, vocab=vocab, split_dim=split_dim,
                          tokenizer_kind=tokenizer_kind)
        family, sources["family"] = verdict.family, f"detected: {verdict.summary}"
        doubts = tuple(f"family evidence in conflict: {c}; pass --llama-version if "
                       f"{verdict.family.label} is wrong" for c in verdict.conflicts)
    sources["instruct"] = instruct[1]
    if ckpt.n_shards > 1 and split_dim != (0 if family.is_llama3 else 1):
        raise ParamsError(f"{family.label} splits the embedding by "
                          f"{'vocabulary' if family.is_llama3 else 'hidden size'} but these "
                          "shards split it the other way; check --llama-version")
    n_kv = params.n_kv_heads if params.n_kv_heads is not None else params.n_heads
    sources["n_kv_heads"] = "params.json" if params.n_kv_heads is not None else "= n_heads"
    n_kv, kv_rule = _distinct_kv_heads(ckpt, n_kv)
    if kv_rule:
        sources["n_kv_heads"] = kv_rule
    if params.dim % params.n_heads or params.n_heads % n_kv:
        raise ParamsError(f"params.json: dim={params.dim}, n_heads={params.n_heads}, n_kv_heads="
                          f"{n_kv} do not divide evenly; params.json is damaged")
    ffn_dim = ckpt.tensors[0]["layers.0.feed_forward.w1.weight"].shape[0] * ckpt.n_shards
    sources["ffn_dim"] = f"feed_forward.w1 rows x {ckpt.n_shards} shard(s)"
    theta = params.rope_theta if params.rope_theta is not None else 10000.0
    sources["rope_theta"] = "params.json" if params.rope_theta is not None else "default 10000"
    tied = family is Family.LLAMA3_2 or "output.weight" not in ckpt.tensors[0]
    sources["tie_word_embeddings"] = "LLaMA 3.2 ties output to embedding" if tied else "default"
    sources["max_position_embeddings"] = f"{family.label} context length"
    bos = vocab - 256 if family.is_llama3 else family.facts.bos_token_id
    spec = ModelSpec(
        family=family, n_shards=ckpt.n_shards, dtype=dtype, dim=params.dim,
        n_layers=params.n_layers, n_heads=params.n_heads, n_kv_heads=n_kv, vocab_size=vocab,
        ffn_dim=ffn_dim, norm_eps=params.norm_eps, rope_theta=theta,
        rope_scaling=rope_scaling(family, use_scaled_rope=params.use_scaled_rope),
        max_position_embeddings=context_length(family, rope_theta=theta),
        tie_word_embeddings=tied, embedding_split_dim=split_dim, bos_token_id=bos,
        eos_token_id=bos + 1, instruct=instruct[0], sources=sources, doubts=doubts)
    check_shapes(spec, ckpt)
    return spec


def shard_shape(spec: ModelSpec, meta_name: str) -> tuple[int, ...]:
    """The shape every shard must have for meta_name under spec (see synthetic.py's layout)."""
    n, hd = spec.n_shards, spec.head_dim
    kv_rows = max(spec.n_kv_heads // n, 1) * hd
    suffix = meta_name.removesuffix(".weight").rsplit(".", 1)[-1]
    table: dict[str, tuple[int, ...]] = {
        "wq": (spec.n_heads * hd // n, spec.dim), "wk": (kv_rows, spec.dim),
        "wv": (kv_rows, spec.dim), "wo": (spec.dim, spec.n_heads * hd // n),
        "w1": (spec.ffn_dim // n, spec.dim), "w2": (spec.dim, spec.ffn_dim // n),
        "w3": (spec.ffn_dim // n, spec.dim), "attention_norm": (spec.dim,),
        "ffn_norm": (spec.dim,), "norm": (spec.dim,), "output": (spec.vocab_size // n, spec.dim),
        "tok_embeddings": ((spec.vocab_size // n, spec.dim) if spec.embedding_split_dim == 0
                           else (spec.vocab_size, spec.dim // n)),
    }
    return table[suffix]


def check_shapes(spec: ModelSpec, ckpt: Checkpoint) -> None:
    n = spec.n_shards
    splits = {"n_heads": spec.n_heads, "ffn_dim": spec.ffn_dim, "vocab_size": spec.vocab_size}
    for what, size in splits.items():
        if size % n:
            raise ParamsError(f"{what}={size} does not divide into {n} shards; a shard is "
                              "missing or extra in the input folder")
    if spec.n_kv_heads % n and n % spec.n_kv_heads:
        raise ParamsError(f"n_kv_heads={spec.n_kv_heads} and {n} shards do not divide either "
                          "way; a shard is missing or extra in the input folder")
    for refs in ckpt.tensors:
        for meta_name, ref in refs.items():
            if not is_ignored(meta_name):
                _check_one(spec, ref, shard_shape(spec, meta_name))


def _check_one(spec: ModelSpec, ref: TensorRef, expected: tuple[int, ...]) -> None:
    if ref.shape != expected:
        got = "x".join(map(str, ref.shape))
        want = "x".join(map(str, expected))
        raise CheckpointError(f"{ref.meta_name} in {ref.path} has shape {got}, expected {want} "
                              f"for {spec.family.label} with {spec.n_shards} shard(s); the file "
                              "does not belong with params.json and the other shards")
