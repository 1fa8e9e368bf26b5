"""Llama 4 (Scout, Maverick, Llama Guard 4): params.json + tensor shapes -> a ModelSpec.

Llama 4 is told by its params.json (moe_args / vision_args) or by its fused attention tensor,
never by the LLaMA 1-3 evidence rules. The sizes its tensor table needs (model/llama4_tensors.py)
come from the tensors themselves where they hold them (experts' F, dense F, vocabulary, rank
count) and from params.json otherwise; every value the plan prints carries its source. Facts:
docs/llama4_facts.md (Meta's llama-models 0.3.0 and transformers' converter) and
docs/llama4_published.json (the published Hugging Face configs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from streamconv.errors import CheckpointError, ParamsError
from streamconv.model.families.llama4_facts import LLAMA4
from streamconv.model.llama4_tensors import LLAMA4_TENSORS
from streamconv.model.spec import ModelSpec
from streamconv.model.tensor_checks import (
    check_names,
    check_rank_count,
    check_same_names,
    check_shapes,
    source_dtype,
)
from streamconv.model.tensor_table import TensorTable, evaluate, layer_index
from streamconv.source.fp8_scales import ScaleLayout, quantized_names
from streamconv.source.params import MetaParams
from streamconv.source.tensor_index import Checkpoint


def is_llama4(params: MetaParams, ckpt: Checkpoint) -> bool:
    names = ckpt.tensors[0]
    return ("moe_args" in params.raw or "vision_args" in params.raw
            or LLAMA4_TENSORS.name("q", 0) in names)


def _mapping(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, Mapping):
        raise ParamsError(f"params.json: {key} is {value!r}, expected an object; fix params.json")
    return value


# Llama 4's nested params.json values (moe_args, vision_args) are checked here, where they are
# read; source/params.py has already refused NaN, Infinity and integers of more than 18 digits.
# No release comes near this bound (Maverick: 128 experts; vision: 34 layers, dim 1408).
_MAX_NESTED_INT = 1 << 16


def _int(raw: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = raw.get(key, default)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value
            or not 0 <= value <= _MAX_NESTED_INT):
        shown = repr(value)[:40]
        raise ParamsError(f"params.json: {key} is {shown}, expected a whole number from 0 to "
                          f"{_MAX_NESTED_INT}; fix params.json")
    return int(value)


def _zero(what: str) -> int:
    raise ParamsError(f"params.json: {what} is 0, expected a positive whole number; fix "
                      "params.json")


def _ratio(raw: Mapping[str, Any], key: str) -> float:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 64:
        raise ParamsError(f"params.json: vision_args {key} is {repr(value)[:40]}, expected a "
                          "number above 0 and at most 64; fix params.json")
    return float(value)


def moe_layers(n_layers: int, step: int) -> list[int]:
    """llama4/model.py TransformerBlock: MoE when (layer + 1) % interleave_moe_layer_step == 0."""
    return [i for i in range(n_layers) if step > 0 and (i + 1) % step == 0]


def dense_hidden_dim(params: MetaParams) -> int:
    """TransformerBlock's dense branch: 4 * dim, 2/3, ffn_dim_multiplier, multiple_of."""
    hidden = int(2 * int(4 * params.dim) / 3)
    if params.ffn_dim_multiplier is not None:
        hidden = int(params.ffn_dim_multiplier * hidden)
    multiple_of = params.multiple_of or 1
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _vision_dims(vision: Mapping[str, Any]) -> dict[str, int]:
    """vision_args -> the vision tensors' sizes (vision/encoder.py, vision/embedding.py)."""
    try:
        dim = _int(vision, "dim")
        patch = _int(vision["patch_size"], "height") or _zero("vision_args patch_size height")
        image = _int(vision["image_size"], "height")
        ratio = _ratio(vision, "pixel_shuffle_ratio")
        mlp_ratio = _ratio(vision, "mlp_ratio")
        output = _int(vision, "output_dim")
    except (KeyError, TypeError) as e:
        raise ParamsError(f"params.json: vision_args lacks {e}; fix params.json") from e
    return {"vision_dim": dim, "patch_inputs": 3 * patch * patch,
            "vision_positions": (image // patch) ** 2 + 1, "vision_ffn": int(mlp_ratio * dim),
            "adapter_inputs": int(dim // (ratio * ratio)), "vision_output": output}


def _context_length(*, instruct: bool, n_experts: int) -> tuple[int, str]:
    if not instruct:
        return LLAMA4.base_context, "Llama 4 base context (256K)"
    if not n_experts:
        return LLAMA4.dense_instruct_context, "Llama 4 dense Instruct context (8K)"
    if n_experts == 16:
        return LLAMA4.scout_instruct_context, "Llama 4 Scout Instruct context (10M)"
    return LLAMA4.maverick_instruct_context, "Llama 4 Instruct context (1M)"


def _rope_scaling(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    if not raw.get("use_scaled_rope"):
        return None
    return {"factor": float(raw.get("rope_scaling_factor") or LLAMA4.rope_factor),
            "high_freq_factor": float(raw.get("rope_high_freq_factor")
                                      or LLAMA4.rope_high_freq_factor),
            "low_freq_factor": 1.0, "original_max_position_embeddings": 8192,
            "rope_type": "llama3"}


def _scale_layouts(table: TensorTable,
                   dims: dict[str, int]) -> Callable[[str], ScaleLayout | None]:
    """Where the table says an fp8 tensor's scales are (Meta's FP8 Maverick experts)."""
    def layout(meta_name: str) -> ScaleLayout | None:
        entry = table.lookup(meta_name)
        if entry is None or entry.fp8_scale is None or entry.fp8_scale_rows is None:
            return None
        key = entry.fp8_scale.format(layer=layer_index(meta_name))
        return ScaleLayout(key, evaluate(entry.fp8_scale_rows, dims), per_column=True)
    return layout


def _check_vision_layer_count(ckpt: Checkpoint, table: TensorTable, n_layers: int) -> None:
    """vision_args' n_layers against the vision layers present, before their names are built."""
    found = {layer_index(n) for n in ckpt.tensors[0]
             if (entry := table.lookup(n)) is not None and entry.layers == "vision"}
    present = {i for i in found if i is not None}
    if present and max(present) + 1 != n_layers:
        raise CheckpointError(f"params.json says vision_args n_layers={n_layers} but "
                              f"{ckpt.rank_paths[0]} holds {max(present) + 1} vision layers; the "
                              "file or params.json belongs to another model")


def detect_llama4(params: MetaParams, ckpt: Checkpoint, *, family: str,
                  instruct: tuple[bool, str]) -> ModelSpec:
    """The Llama 4 ModelSpec, every tensor checked against the table before anything is
    written."""
    raw = params.raw
    moe = _mapping(raw, "moe_args")
    vision = _mapping(raw, "vision_args")
    if not vision:
        raise ParamsError(f"{ckpt.input_dir}: params.json has no vision_args; streamconv writes "
                          "Llama 4 as transformers' Llama4ForConditionalGeneration, which needs "
                          "the vision encoder of Meta's release")
    table = LLAMA4_TENSORS
    n = ckpt.n_ranks
    n_kv = params.n_kv_heads if params.n_kv_heads is not None else params.n_heads
    n_experts = _int(moe, "num_experts", 0) if moe else 0
    step = _int(moe, "interleave_moe_layer_step", 1) if moe else 0
    moe_idx = moe_layers(params.n_layers, step) if n_experts else []
    layers: dict[str, Sequence[int]] = {
        "moe": moe_idx,
        "dense": [i for i in range(params.n_layers) if i not in set(moe_idx)],
        "vision": range(_int(vision, "n_layers")),
    }
    _check_vision_layer_count(ckpt, table, len(layers["vision"]))
    sources = {"family": "params.json has " + " and ".join(
        k for k in ("moe_args", "vision_args") if k in raw) + " (Llama 4)",
        "instruct": instruct[1]}
    check_rank_count(ckpt, table, (params.n_heads + 2 * n_kv) * (params.dim // params.n_heads))
    check_names(ckpt, params, table, {"all": range(params.n_layers), **layers})
    check_same_names(ckpt, table)
    rank0 = ckpt.tensors[0]
    vocab = rank0[table.name("embedding")].shape[0] * n
    if params.vocab_size is not None and params.vocab_size != vocab:
        raise ParamsError(f"params.json says vocab_size={params.vocab_size} but "
                          f"{table.name('embedding')} gives {vocab}; params.json belongs to "
                          "another model")
    if vocab <= LLAMA4.n_special_tokens:
        raise ParamsError(f"{table.name('embedding')} has {vocab} rows, fewer than Llama 4's "
                          f"{LLAMA4.n_special_tokens} special tokens; the files belong to "
                          "another model")
    dims = {"experts": n_experts, **_vision_dims(vision)}
    if moe_idx:
        dims["moe_ffn"] = rank0[table.name("experts_gate", moe_idx[0])].shape[-1] * n
        sources["intermediate_size"] = f"{table.name('experts_gate', moe_idx[0])} columns x {n}"
    else:
        dims["moe_ffn"] = 0
    dense_idx = layers["dense"]
    if dense_idx:
        dims["dense_ffn"] = rank0[table.name("gate", dense_idx[0])].shape[0] // 2 * n
        sources["intermediate_size_mlp"] = f"{table.name('gate', dense_idx[0])} rows / 2 x {n}"
    else:
        dims["dense_ffn"] = dense_hidden_dim(params)
        sources["intermediate_size_mlp"] = "Meta's dense sizing from params.json"
    scales = quantized_names(ckpt, _scale_layouts(
        table, {"dim": params.dim, "ranks": n, **dims}))
    dtype = source_dtype(ckpt, table, frozenset(scales))
    context, sources["max_position_embeddings"] = _context_length(
        instruct=instruct[0], n_experts=n_experts)
    sources["vocab_size"] = f"{table.name('embedding')} rows x {n}"
    theta = params.rope_theta if params.rope_theta is not None else 500000.0
    spec = ModelSpec(
        family=family, n_ranks=n, dtype=dtype, dim=params.dim,
        n_layers=params.n_layers, n_heads=params.n_heads, n_kv_heads=n_kv, vocab_size=vocab,
        ffn_dim=dims["dense_ffn"], norm_eps=params.norm_eps, rope_theta=theta,
        rope_scaling=_rope_scaling(raw), max_position_embeddings=context,
        tie_word_embeddings=False, embedding_split_dim=0,
        bos_token_id=vocab - LLAMA4.n_special_tokens, instruct=instruct[0], tensors=table,
        sources=sources, extra_dims=dims, extra_layers=layers, raw_params=dict(raw),
        quantized=frozenset(scales), scale_layouts=scales)
    check_shapes(spec, ckpt)
    return spec


def _token_ids(spec: ModelSpec) -> dict[str, Any]:
    bos = spec.bos_token_id
    return {"bos_token_id": bos, "eos_token_id": [bos + k for k in LLAMA4.eos_offsets],
            "pad_token_id": bos + LLAMA4.pad_offset}


def _no_rope_layers(spec: ModelSpec) -> list[int]:
    """1 = the layer uses rope. The published files write [] and let transformers derive
    the list for interval 4; any other interval is written out."""
    interval = spec.raw_params.get("nope_layer_interval")
    if interval == 4:
        return []
    return [int(not interval or (i + 1) % interval != 0) for i in range(spec.n_layers)]


def text_config(spec: ModelSpec, *, dtype_name: str) -> dict[str, Any]:
    raw = spec.raw_params
    moe = raw.get("moe_args") or {}
    dims = spec.extra_dims
    config: dict[str, Any] = {
        "attention_bias": False,
        "attention_chunk_size": raw.get("attention_chunk_size"),
        "attention_dropout": 0.0,
        **_token_ids(spec),
        "for_llm_compressor": False,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.dim,
        "initializer_range": 0.02,
        "interleave_moe_layer_step": (moe.get("interleave_moe_layer_step", 1)
                                      if dims["experts"] else 0),
        "intermediate_size": dims["moe_ffn"],
        "intermediate_size_mlp": dims["dense_ffn"],
        "max_position_embeddings": spec.max_position_embeddings,
        "model_type": "llama4_text",
        "no_rope_layers": _no_rope_layers(spec),
        "num_attention_heads": spec.n_heads,
        "num_experts_per_tok": moe.get("top_k", 1) if moe else 1,
        "num_hidden_layers": spec.n_layers,
        "num_key_value_heads": spec.n_kv_heads,
        "num_local_experts": dims["experts"],
        "output_router_logits": False,
        "rms_norm_eps": spec.norm_eps,
        "rope_scaling": spec.rope_scaling,
        "rope_theta": spec.rope_theta,
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.0,
        "torch_dtype": dtype_name,
        "use_cache": True,
        "use_qk_norm": bool(raw.get("use_qk_norm", False)),
        "vocab_size": spec.vocab_size,
    }
    if not dims["experts"]:
        config["moe_layers"] = []  # the converter's dense branch (Llama Guard 4)
    if raw.get("attention_chunk_size") is None:
        config["cache_implementation"] = "static"  # as transformers' converter writes
    # The published files leave these to transformers' defaults (tuning on, 8192, 0.1); a
    # params.json that sets them otherwise is written out. transformers 5 wants an int
    # floor_scale (Meta's ModelArgs has the float 8192.0).
    if "attn_temperature_tuning" in raw:
        config["attn_temperature_tuning"] = bool(raw["attn_temperature_tuning"])
    if raw.get("floor_scale", 8192) != 8192:
        config["floor_scale"] = int(raw["floor_scale"])
    if raw.get("attn_scale", 0.1) != 0.1:
        config["attn_scale"] = float(raw["attn_scale"])
    return config


def vision_config(spec: ModelSpec) -> dict[str, Any]:
    vision = spec.raw_params["vision_args"]
    dims = spec.extra_dims
    return {
        "attention_dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_size": dims["vision_dim"],
        "image_size": vision["image_size"]["height"],
        "initializer_range": 0.02,
        "intermediate_size": dims["vision_ffn"],
        "model_type": "llama4_vision_model",
        "multi_modal_projector_bias": False,
        "norm_eps": 1e-05,
        "num_attention_heads": vision["n_heads"],
        "num_channels": 3,
        "num_hidden_layers": vision["n_layers"],
        "patch_size": vision["patch_size"]["height"],
        "pixel_shuffle_ratio": vision["pixel_shuffle_ratio"],
        "projector_dropout": 0.0,
        "projector_input_dim": dims["vision_output"],
        "projector_output_dim": dims["vision_output"],
        "rope_theta": 10000,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "vision_output_dim": dims["vision_output"],
    }


def config_dict(spec: ModelSpec, *, dtype_name: str) -> dict[str, Any]:
    """config.json in the published layout (docs/llama4_published.json)."""
    bos = spec.bos_token_id
    return {
        "architectures": ["Llama4ForConditionalGeneration"],
        "boi_token_index": bos + LLAMA4.boi_offset,
        "eoi_token_index": bos + LLAMA4.eoi_offset,
        "image_token_index": bos + LLAMA4.image_offset,
        "model_type": "llama4",
        "text_config": text_config(spec, dtype_name=dtype_name),
        "torch_dtype": dtype_name,
        "vision_config": vision_config(spec),
    }


def generation_config_dict(spec: ModelSpec) -> dict[str, Any]:
    """Instruct: what transformers' converter writes (do_sample, temperature 0.6, top_p 0.9);
    base: the token ids only (no published base file was found)."""
    ids = _token_ids(spec)
    if spec.instruct:
        return {**ids, "do_sample": True, "temperature": 0.6, "top_p": 0.9}
    return ids


def plan_rows(spec: ModelSpec, src: Callable[[str], str]) -> list[tuple[str, str, str]]:
    """What `plan` prints for Llama 4's FFN: experts, their width, the dense width, which
    layers are which, and the vision tower."""
    dims, layers = spec.extra_dims, spec.extra_layers
    return [
        ("experts", str(dims["experts"]), "moe_args in params.json"),
        ("expert ffn (intermediate_size)", str(dims["moe_ffn"]), src("intermediate_size")),
        ("dense ffn (intermediate_size_mlp)", str(dims["dense_ffn"]),
         src("intermediate_size_mlp")),
        ("MoE layers", _layer_list(layers["moe"]), "moe_args.interleave_moe_layer_step"),
        ("dense layers", _layer_list(layers["dense"]), "the other layers"),
        ("vision", f"{len(layers['vision'])} layers, dim {dims['vision_dim']}",
         "vision_args in params.json"),
    ]


def _layer_list(layers: Sequence[int]) -> str:
    shown = ", ".join(map(str, layers[:8]))
    return f"{len(layers)}: {shown}{', ...' if len(layers) > 8 else ''}" if layers else "none"


def gguf_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """What llama.cpp's Llama4Model reads: intermediate_size is the dense FFN's
    (Llama4Model.__init__) and layer_types is filled in as transformers' Llama4TextConfig
    (4.57) does when config.json has none: chunked attention where no_rope_layers says 1,
    no_rope_layers defaulting to every 4th layer 0."""
    hparams["intermediate_size_moe"] = hparams["intermediate_size"]
    hparams["intermediate_size"] = hparams["intermediate_size_mlp"]
    if hparams.get("layer_types") is None:
        no_rope = hparams.get("no_rope_layers") or [
            int((layer_idx + 1) % hparams.get("no_rope_layer_interval", 4) != 0)
            for layer_idx in range(hparams["num_hidden_layers"])]
        hparams["layer_types"] = ["chunked_attention" if flag else "full_attention"
                                  for flag in no_rope]
    return hparams


def gguf_refusal(spec: ModelSpec) -> str | None:
    """The FP8 experts' column scales are applied to untransposed rows (executor.py); the
    GGUF experts are transposed bands of them."""
    if not spec.quantized:
        return None
    return ("GGUF output for Llama 4's FP8 release is not supported yet; convert to a Hugging "
            "Face folder (an OUTPUT_DIR without .gguf) and run llama.cpp's convert_hf_to_gguf.py "
            "on it")
