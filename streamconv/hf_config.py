"""config.json and generation_config.json as pure dicts.

Keys and values follow what transformers' convert_llama_weights_to_hf.py (4.47.1) writes through
LlamaConfig/GenerationConfig, with two deliberate differences: torch_dtype names the dtype of
the weights actually written (the script says float16 while writing bfloat16), and there is no
transformers_version, since no transformers wrote the file.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from .detect import ModelSpec

TORCH_DTYPE_NAME = {torch.float32: "float32", torch.float16: "float16",
                    torch.bfloat16: "bfloat16"}
# LLaMA 3 chat models stop on <|eot_id|> (and 3.1+ on <|eom_id|>) as well as <|end_of_text|>.
_INSTRUCT_EOS_OFFSETS = {"3": (1, 9), "3.1+": (1, 8, 9)}


def eos_token_ids(spec: ModelSpec, *, instruct: bool) -> int | list[int]:
    if not (instruct and spec.family.is_llama3):
        return spec.eos_token_id
    key = "3" if spec.family.value == "3" else "3.1+"
    return [spec.bos_token_id + offset for offset in _INSTRUCT_EOS_OFFSETS[key]]


def config_dict(spec: ModelSpec, *, dtype: torch.dtype, instruct: bool) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": eos_token_ids(spec, instruct=instruct),
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.dim,
        "initializer_range": 0.02,
        "intermediate_size": spec.ffn_dim,
        "max_position_embeddings": spec.max_position_embeddings,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": spec.n_heads,
        "num_hidden_layers": spec.n_layers,
        "num_key_value_heads": spec.n_kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": spec.norm_eps,
        "rope_scaling": spec.rope_scaling,
        "rope_theta": spec.rope_theta,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "torch_dtype": TORCH_DTYPE_NAME[dtype],
        "use_cache": True,
        "vocab_size": spec.vocab_size,
    }


def generation_config_dict(spec: ModelSpec, *, instruct: bool) -> dict[str, Any]:
    return {
        "bos_token_id": spec.bos_token_id,
        "do_sample": True,
        "eos_token_id": eos_token_ids(spec, instruct=instruct),
        "temperature": 0.6,
        "top_p": 0.9,
    }


def to_json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
