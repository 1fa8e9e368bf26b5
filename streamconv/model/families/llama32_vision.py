"""Llama 3.2 Vision (11B, 90B, base and Instruct; Llama Guard 3 11B Vision): recognised by
vision_chunk_size > 0 in params.json, Meta's own test, before the LLaMA 1-3 evidence rules run.
Its detection and config builders are in model/mllama.py, its table in
model/mllama_tensors.py; this module puts them together as one description."""

from __future__ import annotations

from typing import Any

from streamconv.model import mllama
from streamconv.model.families.description import (
    FamilyDescription,
    FamilyFacts,
    TokenizerScheme,
)
from streamconv.model.families.names import Family
from streamconv.model.mllama_tensors import MLLAMA_TENSORS
from streamconv.model.spec import ModelSpec
from streamconv.source.params import MetaParams
from streamconv.source.tensor_index import Checkpoint

# docs/llama32_vision_facts.md section 5 (docs/llama32_vision_published.json): context 131072;
# bos 128000; eos 128001 (base) or [128001, 128008, 128009] (Instruct, Guard); pad 128004 in
# config and generation config; the Instruct generation defaults of transformers' converter
# (the 215-byte published file); rope scaling factor 8 (the converter hard-codes it, the same
# as LLaMA 3.1-3.3's).
FACTS = FamilyFacts(
    context_length=131072, bos_token_id=128000, eos_token_id=128001,
    base_generation=(),
    instruct_generation=(("do_sample", True), ("temperature", 0.6), ("top_p", 0.9)),
    instruct_eos=(128001, 128008, 128009), rope_scaling_factor=8.0)


def _detect(params: MetaParams, ckpt: Checkpoint, instruct: tuple[bool, str]) -> ModelSpec:
    # transformers' converter writes the llama3 rope scaling whatever params.json says; a
    # params.json without use_scaled_rope would have a model the config does not describe.
    return mllama.detect_llama32_vision(
        params, ckpt, family=Family.LLAMA3_2_VISION, instruct=instruct,
        context_length=FACTS.context_length,
        rope_scaling=DESCRIPTION.rope_scaling(use_scaled_rope=params.use_scaled_rope))


def _config(spec: ModelSpec, dtype_name: str) -> dict[str, Any]:
    return mllama.config_dict(spec, dtype_name=dtype_name)


def _extra_files(spec: ModelSpec) -> dict[str, dict[str, Any]]:
    return {"preprocessor_config.json": mllama.preprocessor_config(spec)}


DESCRIPTION = FamilyDescription(
    key=Family.LLAMA3_2_VISION, label="Llama 3.2 Vision", facts=FACTS, tensors=MLLAMA_TENSORS,
    # No chat template yet: which revision of the Instruct template the repos carry now is
    # not known (docs/llama32_vision_facts.md section 6).
    tokenizer=TokenizerScheme(kind="tiktoken", specials="llama3.2-vision"),
    config=_config, generation_config=mllama.generation_config_dict,
    recognise=mllama.is_llama32_vision, detect=_detect, embedding_split_dim=0,
    plan_rows=mllama.plan_rows, gguf_refusal=mllama.gguf_refusal, extra_files=_extra_files)

DESCRIPTIONS = (DESCRIPTION,)
