"""Llama 3.2 Vision (11B, 90B, Llama Guard 3 11B Vision): params.json + tensor shapes -> a
ModelSpec, and the published Hugging Face files it becomes (MllamaForConditionalGeneration).

Meta's own test for a Vision checkpoint is `vision_chunk_size > 0` (llama-models 0.3.0
`generation.py` Llama3.build). The vision tower's sizes are fixed in Meta's code, not in
params.json (`CrossAttentionTransformerVision`: width 1280, 32 local + 8 global layers, 16
heads, patch 14, intermediate layers 3, 7, 15, 23, 30); streamconv reads every size a tensor
shows from the tensors and checks it, and takes the two a shape cannot show (the head count
and the intermediate layer indices) from the release facts. Facts and sources:
docs/llama32_vision_facts.md (sections cited below) and docs/llama32_vision_published.json.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from streamconv.errors import CheckpointError, ParamsError
from streamconv.model.mllama_tensors import MLLAMA_TENSORS
from streamconv.model.row_gathers import supported_aspect_ratios
from streamconv.model.spec import ModelSpec
from streamconv.model.tensor_checks import (
    check_names,
    check_rank_count,
    check_same_names,
    check_shapes,
    source_dtype,
)
from streamconv.model.tensor_table import LayerMap, hf_layer_index, layer_index
from streamconv.source.params import MetaParams
from streamconv.source.tensor_index import Checkpoint

# Section 2: fixed in CrossAttentionTransformerVision / VisionEncoder, not in params.json.
VISION_HEADS = 16
RELEASE_INTERMEDIATE_LAYERS = (3, 7, 15, 23, 30)
# Section 6: HF's <|image|>, row 0 of learnable_embedding (8 rows, VocabParallelEmbedding of
# max(MP, 8)); section 5: the published token ids and context.
LEARNABLE_ROWS = 8
IMAGE_TOKEN_ID = 128256
PAD_TOKEN_ID = 128004
# The key a params.json of a tower that is not a release's may add to say its intermediate
# layers (Meta's ModelArgs ignores unknown keys): only their count shows in the tensors.
INTERMEDIATE_KEY = "vision_intermediate_layers"
_MAX = 1 << 16


def is_llama32_vision(params: MetaParams, ckpt: Checkpoint) -> bool:
    value = params.raw.get("vision_chunk_size")
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _int(raw: Mapping[str, Any], key: str, *, low: int = 1) -> int:
    value = raw.get(key)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value
            or not low <= value <= _MAX):
        raise ParamsError(f"params.json: {key} is {repr(value)[:40]}, expected a whole number "
                          f"from {low} to {_MAX}; fix params.json")
    return int(value)


def fusion_schedule(n_layers: int, n_cross: int) -> list[int]:
    """Meta's CrossAttentionTransformerText._init_fusion_schedule: cross-attention layer J runs
    just before text layer schedule[J] (section 3)."""
    k = math.ceil(n_layers / n_cross)
    return list(range(n_layers))[::-1][::k][:n_cross][::-1]


def layer_maps(n_layers: int, schedule: Sequence[int]) -> tuple[LayerMap, LayerMap]:
    """(text layers, cross-attention layers) with their indices in transformers' one list of
    decoder layers: each cross-attention layer sits just before its text layer. For the
    releases (n_layers a multiple of the cross-attention count) this equals the converter's
    range(f - 1, total, f + 1); Meta's schedule is the one that says what the model computes
    (section 3)."""
    cross_hf = [j + layer for j, layer in enumerate(schedule)]
    text_hf = [i + sum(1 for layer in schedule if layer <= i) for i in range(n_layers)]
    return (LayerMap(meta=tuple(range(n_layers)), hf=tuple(text_hf)),
            LayerMap(meta=tuple(range(len(schedule))), hf=tuple(cross_hf)))


def _layers_present(ckpt: Checkpoint) -> dict[str, int]:
    """How many layers of each set rank 0 holds (highest index + 1), read before any name is
    built from params.json, so a damaged count costs nothing."""
    found = dict.fromkeys(("all", "cross", "vision_local", "vision_global"), 0)
    for name in ckpt.tensors[0]:
        entry = MLLAMA_TENSORS.lookup(name)
        index = layer_index(name)
        if entry is not None and entry.per_layer and index is not None:
            found[entry.layers] = max(found[entry.layers], index + 1)
    return found


def _shape(ckpt: Checkpoint, role: str, layer: int | None = None) -> tuple[int, ...]:
    name = MLLAMA_TENSORS.name(role, layer)
    ref = ckpt.tensors[0].get(name)
    if ref is None:
        raise CheckpointError(f"{ckpt.rank_paths[0]} lacks {name}, which every Llama 3.2 Vision "
                              "checkpoint holds; download the rank files again")
    return ref.shape


def _intermediate_layers(params: MetaParams, count: int, local_layers: int) -> tuple[int, ...]:
    given = params.raw.get(INTERMEDIATE_KEY)
    if given is None:
        if count != len(RELEASE_INTERMEDIATE_LAYERS) or local_layers != 32:
            raise ParamsError(
                f"the vision tower has {local_layers} layers and feeds {count} intermediate "
                f"layers to the projection, not a release's 32 and 5; add "
                f'"{INTERMEDIATE_KEY}": [...] (their indices) to params.json')
        return RELEASE_INTERMEDIATE_LAYERS
    if (not isinstance(given, list) or len(given) != count
            or not all(isinstance(i, int) and 0 <= i < local_layers for i in given)):
        raise ParamsError(f"params.json: {INTERMEDIATE_KEY} must list {count} layer indices "
                          f"below {local_layers}; fix params.json")
    return tuple(given)


def _vision_dims(params: MetaParams, ckpt: Checkpoint, n: int,
                 present: Mapping[str, int]) -> tuple[dict[str, int], tuple[int, ...]]:
    """The tower's sizes from its tensors, each checked against params.json or the others."""
    raw = params.raw
    chunk = _int(raw, "vision_chunk_size")
    max_chunks = _int(raw, "vision_max_num_chunks")
    (width,) = _shape(ckpt, "class_embedding")[:1]
    positions = _shape(ckpt, "positional_embedding")[0]
    patch_inputs = _shape(ckpt, "patch_embedding")[-1]
    patch = math.isqrt(patch_inputs // 3)
    if 3 * patch * patch != patch_inputs or patch == 0 or chunk % patch:
        raise CheckpointError(f"{MLLAMA_TENSORS.name('patch_embedding')} has {patch_inputs} "
                              "inputs, not 3 x a square patch that divides vision_chunk_size "
                              f"{chunk}; the file does not belong with params.json")
    if positions != (chunk // patch) ** 2 + 1:
        raise CheckpointError(
            f"{MLLAMA_TENSORS.name('positional_embedding')} has {positions} positions but "
            f"vision_chunk_size {chunk} makes {(chunk // patch) ** 2 + 1}; the file does not "
            "belong with params.json (11B base uses 448, the other releases 560)")
    tiles = _shape(ckpt, "pre_tile_embedding")[0]
    if tiles != max_chunks:
        raise ParamsError(f"params.json says vision_max_num_chunks={max_chunks} but the tile "
                          f"embeddings hold {tiles} tiles; fix params.json")
    ffn = _shape(ckpt, "vision_local_fc1", 0)[0] * n if present["vision_local"] else 4 * width
    output = _shape(ckpt, "projector")[-1]
    if width == 0 or output % width or output // width < 2:
        raise CheckpointError(f"{MLLAMA_TENSORS.name('projector')} has {output} inputs, not a "
                              f"multiple of the tower's width {width}; the file is damaged")
    intermediate = _intermediate_layers(params, output // width - 1, present["vision_local"])
    dims = {"vision_dim": width, "vision_positions": positions, "patch_inputs": patch_inputs,
            "patch": patch, "vision_ffn": ffn, "vision_output": output, "tiles": tiles,
            "aspect_ratios": len(supported_aspect_ratios(tiles)) + 1,
            "learnable": LEARNABLE_ROWS}
    return dims, intermediate


def detect_llama32_vision(params: MetaParams, ckpt: Checkpoint, *, family: str,
                          instruct: tuple[bool, str], context_length: int,
                          rope_scaling: dict[str, Any] | None) -> ModelSpec:
    """The Llama 3.2 Vision ModelSpec, every tensor checked against the table before anything
    is written."""
    table = MLLAMA_TENSORS
    n = ckpt.n_ranks
    if table.name("embedding") not in ckpt.tensors[0]:
        raise CheckpointError(
            f"params.json has vision_chunk_size (a Llama 3.2 Vision model) but "
            f"{ckpt.rank_paths[0]} lacks {table.name('embedding')}, which every Vision "
            "checkpoint holds; params.json belongs to another model: use the one that came "
            "with these rank files")
    n_cross = _int(params.raw, "vision_num_cross_attention_layers")
    present = _layers_present(ckpt)
    for kind, claimed in (("all", params.n_layers), ("cross", n_cross)):
        if present[kind] != claimed:
            key = "n_layers" if kind == "all" else "vision_num_cross_attention_layers"
            what = "text layers" if kind == "all" else "cross-attention layers"
            raise CheckpointError(f"params.json says {key}={claimed} but {ckpt.rank_paths[0]} "
                                  f"holds {present[kind]} {what}; the file or params.json "
                                  "belongs to another model")
    schedule = fusion_schedule(params.n_layers, n_cross)
    if len(schedule) != n_cross:
        raise ParamsError(f"n_layers={params.n_layers} with vision_num_cross_attention_layers="
                          f"{n_cross} gives Meta's model {len(schedule)} cross-attention layers; "
                          "params.json belongs to another model")
    text_layers, cross_layers = layer_maps(params.n_layers, schedule)
    layers: dict[str, Sequence[int]] = {
        "all": text_layers, "cross": cross_layers,
        "vision_local": range(present["vision_local"]),
        "vision_global": range(present["vision_global"])}
    check_rank_count(ckpt, table, params.dim)
    check_names(ckpt, params, table, layers)
    check_same_names(ckpt, table)
    dims, intermediate = _vision_dims(params, ckpt, n, present)
    vocab = _shape(ckpt, "embedding")[0] * n
    if params.vocab_size is not None and params.vocab_size != vocab:
        raise ParamsError(f"params.json says vocab_size={params.vocab_size} but "
                          f"{table.name('embedding')} gives {vocab}; params.json belongs to "
                          "another model")
    if LEARNABLE_ROWS % n:
        raise CheckpointError(f"{n} rank files cannot split learnable_embedding's "
                              f"{LEARNABLE_ROWS} rows; the releases come in 1 or 8 files")
    n_kv = params.n_kv_heads if params.n_kv_heads is not None else params.n_heads
    dims["head_dim"] = params.dim // params.n_heads
    ffn_dim = _shape(ckpt, "gate", 0)[0] * n if params.n_layers else 0
    theta = params.rope_theta if params.rope_theta is not None else 500000.0
    sources = {
        "family": f"params.json has vision_chunk_size {params.raw['vision_chunk_size']} (Meta's "
                  "test for a Vision checkpoint)",
        "instruct": instruct[1], "vocab_size": f"{table.name('embedding')} rows x {n}",
        "tie_word_embeddings": "Llama 3.2 Vision does not tie output and embedding",
        "ffn_dim": f"{table.name('gate', 0)} rows x {n}",
        "intermediate_layers": ("params.json " + INTERMEDIATE_KEY
                                if INTERMEDIATE_KEY in params.raw
                                else "Meta's vision encoder (release value)"),
        "max_position_embeddings": "Llama 3.2 Vision context length"}
    spec = ModelSpec(
        family=family, n_ranks=n, dtype=source_dtype(ckpt, table, frozenset()), dim=params.dim,
        n_layers=params.n_layers, n_heads=params.n_heads, n_kv_heads=n_kv, vocab_size=vocab,
        ffn_dim=ffn_dim, norm_eps=params.norm_eps, rope_theta=theta,
        rope_scaling=rope_scaling, max_position_embeddings=context_length,
        tie_word_embeddings=False, embedding_split_dim=0, bos_token_id=128000,
        instruct=instruct[0], tensors=table, sources=sources,
        extra_dims=dims,
        # Not a set of layers with tensors: the local layers whose inputs the projection
        # reads, kept with the layer sets for the config (no table entry names it).
        extra_layers={**layers, "vision_intermediate": intermediate},
        raw_params=dict(params.raw))
    check_shapes(spec, ckpt)
    return spec


def _cross_layers(spec: ModelSpec) -> list[int]:
    """The cross-attention layers' indices in transformers' one list (their LayerMap)."""
    cross = spec.extra_layers["cross"]
    return [hf_layer_index(cross, j) for j in cross]


def _eos(spec: ModelSpec) -> int | list[int]:
    from streamconv.model.families.registry import describe

    return describe(spec.family).eos_token_ids(bos_token_id=spec.bos_token_id,
                                               instruct=spec.instruct, for_config=True)


def text_config(spec: ModelSpec, *, dtype_name: str) -> dict[str, Any]:
    """MllamaTextConfig as transformers' converter writes it (section 5)."""
    return {
        "bos_token_id": spec.bos_token_id,
        "cross_attention_layers": _cross_layers(spec),
        "dropout": 0,
        "eos_token_id": _eos(spec),
        "hidden_act": "silu",
        "hidden_size": spec.dim,
        "initializer_range": 0.02,
        "intermediate_size": spec.ffn_dim,
        "max_position_embeddings": spec.max_position_embeddings,
        "model_type": "mllama_text_model",
        "num_attention_heads": spec.n_heads,
        "num_hidden_layers": spec.n_layers + len(spec.extra_layers["cross"]),
        "num_key_value_heads": spec.n_kv_heads,
        "pad_token_id": PAD_TOKEN_ID,
        "rms_norm_eps": spec.norm_eps,
        "rope_scaling": spec.rope_scaling,
        "rope_theta": spec.rope_theta,
        "tie_word_embeddings": False,
        "torch_dtype": dtype_name,
        "use_cache": True,
        "vocab_size": spec.vocab_size,
    }


def vision_config(spec: ModelSpec, *, dtype_name: str) -> dict[str, Any]:
    """MllamaVisionConfig (section 5): the tower's sizes, image_size = vision_chunk_size."""
    dims, layers = spec.extra_dims, spec.extra_layers
    return {
        "attention_heads": VISION_HEADS,
        "hidden_act": "gelu",
        "hidden_size": dims["vision_dim"],
        "image_size": int(spec.raw_params["vision_chunk_size"]),
        "initializer_range": 0.02,
        "intermediate_layers_indices": list(layers["vision_intermediate"]),
        "intermediate_size": dims["vision_ffn"],
        "max_num_tiles": dims["tiles"],
        "model_type": "mllama_vision_model",
        "norm_eps": 1e-05,
        "num_channels": 3,
        "num_global_layers": len(layers["vision_global"]),
        "num_hidden_layers": len(layers["vision_local"]),
        "patch_size": dims["patch"],
        "supported_aspect_ratios": [list(r) for r in supported_aspect_ratios(dims["tiles"])],
        "torch_dtype": dtype_name,
        "vision_output_dim": dims["vision_output"],
    }


def config_dict(spec: ModelSpec, *, dtype_name: str) -> dict[str, Any]:
    return {
        "architectures": ["MllamaForConditionalGeneration"],
        "image_token_index": IMAGE_TOKEN_ID,
        "model_type": "mllama",
        "text_config": text_config(spec, dtype_name=dtype_name),
        "torch_dtype": dtype_name,
        "vision_config": vision_config(spec, dtype_name=dtype_name),
    }


def generation_config_dict(spec: ModelSpec) -> dict[str, Any]:
    """Section 5: base 152 bytes (bos, eos 128001, pad), Instruct and Guard 215 bytes (plus
    do_sample, temperature 0.6, top_p 0.9 and the three eos ids)."""
    from streamconv.model.families.registry import describe

    family = describe(spec.family)
    return {"bos_token_id": spec.bos_token_id, "pad_token_id": PAD_TOKEN_ID,
            "eos_token_id": family.eos_token_ids(bos_token_id=spec.bos_token_id,
                                                 instruct=spec.instruct, for_config=False),
            **family.generation_defaults(instruct=spec.instruct)}


def preprocessor_config(spec: ModelSpec) -> dict[str, Any]:
    """The published 437-byte preprocessor_config.json (section 5): transformers' converter's
    MllamaImageProcessor, size = vision_chunk_size, max_image_tiles = vision_max_num_chunks,
    CLIP's mean and std."""
    size = int(spec.raw_params["vision_chunk_size"])
    return {"do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True,
            "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_processor_type": "MllamaImageProcessor",
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "max_image_tiles": spec.extra_dims["tiles"], "resample": 2,
            "rescale_factor": 0.00392156862745098, "size": {"height": size, "width": size}}


def plan_rows(spec: ModelSpec, src: Callable[[str], str]) -> list[tuple[str, str, str]]:
    dims, layers = spec.extra_dims, spec.extra_layers
    return [
        ("ffn", str(spec.ffn_dim), src("ffn_dim")),
        ("cross-attention layers", f"{len(layers['cross'])} at HF {_cross_layers(spec)}",
         "Meta's fusion schedule (vision_num_cross_attention_layers)"),
        ("vision", f"{len(layers['vision_local'])} + {len(layers['vision_global'])} layers, "
         f"dim {dims['vision_dim']}, image {spec.raw_params['vision_chunk_size']}",
         "the tensors' shapes, vision_chunk_size"),
        ("intermediate layers", str(list(layers["vision_intermediate"])),
         src("intermediate_layers")),
    ]


def gguf_refusal(spec: ModelSpec) -> str | None:
    return ("GGUF output for Llama 3.2 Vision is not supported (llama.cpp's text GGUF has no "
            "cross-attention layers); convert to a Hugging Face folder (an OUTPUT_DIR without "
            ".gguf)")
