"""Llama 4 (Scout, Maverick, Llama Guard 4): recognised by its params.json keys (moe_args /
vision_args) or its fused attention tensor before the LLaMA 1-3 evidence rules run. Its
detection, config builders and facts are in model/llama4.py, its table in
model/llama4_tensors.py; this module puts them together as one description."""

from __future__ import annotations

from typing import Any

from streamconv.model import llama4
from streamconv.model.families.description import FamilyDescription, TokenizerScheme
from streamconv.model.families.llama4_facts import FACTS, LLAMA4
from streamconv.model.families.names import Family
from streamconv.model.llama4_tensors import LLAMA4_TENSORS
from streamconv.model.spec import ModelSpec
from streamconv.source.params import MetaParams
from streamconv.source.tensor_index import Checkpoint


def _config(spec: ModelSpec, dtype_name: str) -> dict[str, Any]:
    return llama4.config_dict(spec, dtype_name=dtype_name)


def _detect(params: MetaParams, ckpt: Checkpoint, instruct: tuple[bool, str]) -> ModelSpec:
    return llama4.detect_llama4(params, ckpt, family=Family.LLAMA4, instruct=instruct)


DESCRIPTION = FamilyDescription(
    key=Family.LLAMA4, label="Llama 4", facts=FACTS, tensors=LLAMA4_TENSORS,
    tokenizer=TokenizerScheme(kind="tiktoken", specials="llama4",
                              chat_template="llama4_instruct.jinja"),
    config=_config, generation_config=llama4.generation_config_dict,
    recognise=llama4.is_llama4, detect=_detect, embedding_split_dim=0,
    bos_below_vocab_end=LLAMA4.n_special_tokens, plan_rows=llama4.plan_rows,
    gguf_arch="LLAMA4", gguf_pre_tokenizer="llama4", gguf_bpe_only=True,
    gguf_hparams=llama4.gguf_hparams, gguf_refusal=llama4.gguf_refusal)

DESCRIPTIONS = (DESCRIPTION,)
