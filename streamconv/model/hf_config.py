"""config.json and generation_config.json as pure dicts.

Keys follow what transformers' convert_llama_weights_to_hf.py (4.47.1) writes through
LlamaConfig; the values are the published Hugging Face configs' (model/families/, docs/releases.md),
with two deliberate differences: torch_dtype names the dtype of the weights actually written
(Meta's LLaMA 2 repos publish float16 weights cast from the bf16 originals; streamconv keeps
the checkpoint's dtype unless --dtype says otherwise), and there is no transformers_version,
since no transformers wrote the file.
"""

from __future__ import annotations

import json
from typing import Any

from streamconv.model.families.registry import describe
from streamconv.model.spec import ModelSpec
from streamconv.system.dtypes import DType


def config_dict(spec: ModelSpec, *, dtype: DType) -> dict[str, Any]:
    """config.json, from the family's own builder (its description's `config`)."""
    return describe(spec.family).config(spec, dtype.name)


def generation_config_dict(spec: ModelSpec) -> dict[str, Any]:
    return describe(spec.family).generation_config(spec)


def llama_config(spec: ModelSpec, dtype_name: str) -> dict[str, Any]:
    """LlamaForCausalLM's config.json (LLaMA 1-3.x)."""
    family = describe(spec.family)
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": family.eos_token_ids(bos_token_id=spec.bos_token_id,
                                             instruct=spec.instruct, for_config=True),
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
        "torch_dtype": dtype_name,
        "use_cache": True,
        "vocab_size": spec.vocab_size,
    }


def llama_generation_config(spec: ModelSpec) -> dict[str, Any]:
    """The family's published generation defaults (its facts), base or chat."""
    family = describe(spec.family)
    return {
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": family.eos_token_ids(bos_token_id=spec.bos_token_id,
                                             instruct=spec.instruct, for_config=False),
        **family.generation_defaults(instruct=spec.instruct),
    }


def to_json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
