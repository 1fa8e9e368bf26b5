"""docs/llama4_facts.md section 3 as code: a merged (MP1) Meta Llama 4 state dict -> the tensors
and config.json of the published Hugging Face `Llama4ForConditionalGeneration` layout.

Test-side only, and deliberately naive (everything in memory, fp32): it exists to check the
mapping facts against two implementations nobody here wrote, Meta's reference
(tests/llama4_reference_runner.py) and transformers' Llama4 model, before streamconv's
streaming conversion is built on the same facts. Source of each rule: transformers'
convert_llama4_weights_to_hf.py (names, splits, router transpose, experts fused on the last
dim, no rope permute) and the published config.json (section 4 of the facts).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

# Meta suffix (within layers.N.) -> HF suffix (within language_model.model.layers.N.), 1:1.
_LAYER_RENAMES = {
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.wqkv.layer_norm_weight": "input_layernorm.weight",
    "feed_forward.norm.weight": "post_attention_layernorm.weight",
    "feed_forward.mlp.layer_norm_weight": "post_attention_layernorm.weight",
    "feed_forward.w_in_shared_FD.weight": "feed_forward.shared_expert.gate_proj.weight",
    "feed_forward.w_swiglu_FD.weight": "feed_forward.shared_expert.up_proj.weight",
    "feed_forward.w_out_shared_DF.weight": "feed_forward.shared_expert.down_proj.weight",
    "feed_forward.mlp.fc2_weight": "feed_forward.down_proj.weight",
}

_VISION_RENAMES = [
    (r"^vision_embeddings\.vision_encoder\.conv1\._linear\.",
     "vision_model.patch_embedding.linear."),
    (r"^vision_embeddings\.vision_adapter\.mlp\.c_fc\.", "vision_model.vision_adapter.mlp.fc1."),
    (r"^vision_embeddings\.vision_adapter\.mlp\.c_proj\.", "vision_model.vision_adapter.mlp.fc2."),
    (r"\.transformer\.resblocks\.(\d+)\.attn\.wq\.", r".model.layers.\1.self_attn.q_proj."),
    (r"\.transformer\.resblocks\.(\d+)\.attn\.wk\.", r".model.layers.\1.self_attn.k_proj."),
    (r"\.transformer\.resblocks\.(\d+)\.attn\.wv\.", r".model.layers.\1.self_attn.v_proj."),
    (r"\.transformer\.resblocks\.(\d+)\.attn\.wo\.", r".model.layers.\1.self_attn.o_proj."),
    (r"\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r".model.layers.\1.mlp.fc1."),
    (r"\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r".model.layers.\1.mlp.fc2."),
    (r"\.transformer\.resblocks\.(\d+)\.ln_1\.", r".model.layers.\1.input_layernorm."),
    (r"\.transformer\.resblocks\.(\d+)\.ln_2\.", r".model.layers.\1.post_attention_layernorm."),
    (r"\.ln_pre\.", ".layernorm_pre."),
    (r"\.ln_post\.", ".layernorm_post."),
    (r"^vision_embeddings\.vision_encoder\.", "vision_model."),
    (r"^vision_projection\.weight$", "multi_modal_projector.linear_1.weight"),
]


def _vision_name(meta_name: str) -> str:
    hf_name = meta_name
    for pattern, replacement in _VISION_RENAMES:
        hf_name = re.sub(pattern, replacement, hf_name)
    return hf_name


def _layer_tensors(params: dict[str, Any], layer_idx: int,
                   state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    meta = f"layers.{layer_idx}."
    hf = f"language_model.model.layers.{layer_idx}."
    n_heads, n_kv_heads, dim = params["n_heads"], params["n_kv_heads"], params["dim"]
    head_dim = dim // n_heads
    out: dict[str, torch.Tensor] = {}
    for meta_suffix, hf_suffix in _LAYER_RENAMES.items():
        if meta + meta_suffix in state:
            out[hf + hf_suffix] = state[meta + meta_suffix]
    # No permute: HF's Llama 4 rotates interleaved pairs with complex numbers, as Meta does.
    q, k, v = state[meta + "attention.wqkv.weight"].split(
        [n_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim], dim=0)
    out[hf + "self_attn.q_proj.weight"] = q
    out[hf + "self_attn.k_proj.weight"] = k
    out[hf + "self_attn.v_proj.weight"] = v
    if meta + "feed_forward.router_DE" in state:
        num_experts = params["moe_args"]["num_experts"]
        out[hf + "feed_forward.router.weight"] = state[meta + "feed_forward.router_DE"].T
        gate = state[meta + "feed_forward.experts.moe_w_in_eD_F"].view(num_experts, dim, -1)
        up = state[meta + "feed_forward.experts.moe_w_swiglu_eD_F"].view(num_experts, dim, -1)
        out[hf + "feed_forward.experts.gate_up_proj"] = torch.cat([gate, up], dim=-1)
        down = state[meta + "feed_forward.experts.moe_w_out_eF_D"]
        out[hf + "feed_forward.experts.down_proj"] = down.view(num_experts, -1, dim)
    else:
        w1, w3 = state[meta + "feed_forward.mlp.fc1_weight"].chunk(2, dim=0)
        out[hf + "feed_forward.gate_proj.weight"] = w1
        out[hf + "feed_forward.up_proj.weight"] = w3
    return out


def hf_state_dict(state: dict[str, torch.Tensor],
                  params: dict[str, Any]) -> dict[str, torch.Tensor]:
    """HF tensors from an MP1 Meta state dict (experts still flattened to 2-D as stored)."""
    out = {
        "language_model.model.embed_tokens.weight": state["tok_embeddings.weight"],
        "language_model.model.norm.weight": state["norm.weight"],
        "language_model.lm_head.weight": state["output.weight"],
    }
    for layer_idx in range(params["n_layers"]):
        out.update(_layer_tensors(params, layer_idx, state))
    for meta_name, tensor in state.items():
        if meta_name.startswith(("vision_embeddings.", "vision_projection.")):
            out[_vision_name(meta_name)] = tensor
    return {name: tensor.float().contiguous() for name, tensor in out.items()}


def hf_config(params: dict[str, Any], *, rope_scaling_factor: float = 16.0,
              rope_high_freq_factor: float = 1.0) -> dict[str, Any]:
    """config.json in the published layout for a tiny params.json (fields of section 4)."""
    n_layers = params["n_layers"]
    moe = params.get("moe_args") or {}
    step = moe.get("interleave_moe_layer_step", 1)
    interval = params.get("nope_layer_interval")
    text: dict[str, Any] = {
        "model_type": "llama4_text",
        "hidden_size": params["dim"],
        "num_hidden_layers": n_layers,
        "num_attention_heads": params["n_heads"],
        "num_key_value_heads": params["n_kv_heads"],
        "head_dim": params["dim"] // params["n_heads"],
        "vocab_size": params["vocab_size"],
        "rms_norm_eps": params["norm_eps"],
        "rope_theta": params["rope_theta"],
        "intermediate_size": _moe_hidden(params),
        "intermediate_size_mlp": _dense_hidden(params),
        "num_local_experts": moe.get("num_experts", 0),
        "num_experts_per_tok": moe.get("top_k", 1),
        "interleave_moe_layer_step": step,
        "moe_layers": [i for i in range(n_layers) if moe and (i + 1) % step == 0],
        # 1 = this layer uses rope (HF's name says the opposite).
        "no_rope_layers": [int(interval is None or (i + 1) % interval != 0)
                           for i in range(n_layers)],
        "attention_chunk_size": params.get("attention_chunk_size"),
        "use_qk_norm": params.get("use_qk_norm", False),
        "attn_temperature_tuning": params.get("attn_temperature_tuning", False),
        # Meta's ModelArgs has a float (8192.0); transformers 5.x refuses a float here.
        "floor_scale": int(params.get("floor_scale", 8192)),
        "attn_scale": params.get("attn_scale", 0.1),
        # Above rope_scaling's original_max_position_embeddings (8192), as transformers wants.
        "max_position_embeddings": 16384,
        "tie_word_embeddings": False,
        "rope_scaling": None,
    }
    if params.get("use_scaled_rope"):
        text["rope_scaling"] = {"rope_type": "llama3", "factor": rope_scaling_factor,
                                "low_freq_factor": 1.0, "high_freq_factor": rope_high_freq_factor,
                                "original_max_position_embeddings": 8192}
    config: dict[str, Any] = {"architectures": ["Llama4ForConditionalGeneration"],
                              "model_type": "llama4", "text_config": text,
                              "tie_word_embeddings": False}
    vision = params.get("vision_args")
    if vision:
        config["vision_config"] = {
            "model_type": "llama4_vision_model",
            "hidden_size": vision["dim"],
            "num_hidden_layers": vision["n_layers"],
            "num_attention_heads": vision["n_heads"],
            "intermediate_size": int(vision["mlp_ratio"] * vision["dim"]),
            "image_size": vision["image_size"]["height"],
            "patch_size": vision["patch_size"]["height"],
            "pixel_shuffle_ratio": vision["pixel_shuffle_ratio"],
            "vision_output_dim": vision["output_dim"],
            "projector_input_dim": vision["output_dim"],
            "projector_output_dim": vision["output_dim"],
            "norm_eps": 1e-5,
            "rope_theta": 10000,
        }
    return config


def _moe_hidden(params: dict[str, Any]) -> int:
    hidden = int(2 * int(params["ffn_exp"] * params["dim"]) / 3)
    hidden = int(int(params["ffn_dim_multiplier"] * hidden) / 2.0)
    return hidden + (-hidden % params["multiple_of"])


def _dense_hidden(params: dict[str, Any]) -> int:
    hidden = int(params["ffn_dim_multiplier"] * int(2 * int(4 * params["dim"]) / 3))
    multiple_of = params["multiple_of"]
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def write_hf_folder(meta_dir: Path, out_dir: Path) -> Path:
    """The naive conversion of an MP1 Meta folder: model.safetensors + config.json."""
    params = json.loads((meta_dir / "params.json").read_text())
    params = params.get("model", params)
    state = torch.load(meta_dir / "consolidated.00.pth", map_location="cpu", weights_only=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(hf_state_dict(state, params), out_dir / "model.safetensors")
    (out_dir / "config.json").write_text(json.dumps(hf_config(params), indent=2) + "\n")
    return out_dir
