"""LLaMA 1, LLaMA 2, Code Llama and Llama 3.0-3.3: one architecture (LlamaForCausalLM), one
tensor table, told apart by the evidence rules (families/llama_evidence.py).

Every value here is a fact about Meta's releases taken from a public source; docs/releases.md
lists the release matrix these come from, with the source of each fact, and
tests/test_release_matrix.py converts a checkpoint laid out like every release and compares the
written configs with the published ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from streamconv.model.families.description import (
    FamilyDescription,
    FamilyFacts,
    PlanRow,
    TokenizerScheme,
)
from streamconv.model.families.llama_evidence import llama_rules
from streamconv.model.families.names import Family
from streamconv.model.hf_config import llama_config, llama_generation_config
from streamconv.model.spec import ModelSpec
from streamconv.model.tensor_table import LLAMA_TENSORS

# Code Llama's long-context fine-tune uses rope_theta 1e6 and 16384 positions; the 70B Python and
# Instruct models went back to rope_theta 10000 and 4096 (a Meta maintainer in
# meta-llama/codellama issue 188; docs/releases.md).
CODE_LLAMA_LONG_THETA = 1e6
# tiktoken families: bos is the first of the 256 specials after the ranks (128000 of 128256).
_LLAMA3_SPECIALS = 256

# Llama-2-7b-hf's published generation_config.json (docs/releases.md: llama-2-7b).
_LLAMA2_GENERATION = (("do_sample", True), ("max_length", 4096), ("pad_token_id", 0),
                      ("temperature", 0.6), ("top_p", 0.9))
# Meta-Llama-3-8B-Instruct's and Llama-3.1-8B-Instruct's published generation_config.json.
_LLAMA3_CHAT_GENERATION = (("do_sample", True), ("max_length", 4096), ("temperature", 0.6),
                           ("top_p", 0.9))
LLAMA31_GENERATION = (("do_sample", True), ("temperature", 0.6), ("top_p", 0.9))
_LLAMA31_CHAT_EOS = (128001, 128008, 128009)  # <|end_of_text|>, <|eom_id|>, <|eot_id|>

# LLaMA 1 has no Meta Hugging Face repo: transformers' convert script's values (context 2048)
# and the minimal generation config GenerationConfig.from_model_config gives.
LLAMA1_FACTS = FamilyFacts(context_length=2048, bos_token_id=1, eos_token_id=2,
                           base_generation=(), instruct_generation=())
LLAMA2_FACTS = FamilyFacts(context_length=4096, bos_token_id=1, eos_token_id=2,
                           base_generation=_LLAMA2_GENERATION,
                           instruct_generation=_LLAMA2_GENERATION)
# 16384 for rope_theta 1e6, else LLaMA 2's 4096.
CODE_LLAMA_FACTS = FamilyFacts(context_length=16384, bos_token_id=1, eos_token_id=2,
                               base_generation=(), instruct_generation=(),
                               short_context=(CODE_LLAMA_LONG_THETA, 4096))
LLAMA3_FACTS = FamilyFacts(context_length=8192, bos_token_id=128000, eos_token_id=128001,
                           base_generation=(), instruct_generation=_LLAMA3_CHAT_GENERATION,
                           instruct_eos=(128001, 128009), instruct_config_eos=128009)
LLAMA3_1_FACTS = FamilyFacts(context_length=131072, bos_token_id=128000, eos_token_id=128001,
                             base_generation=LLAMA31_GENERATION,
                             instruct_generation=LLAMA31_GENERATION,
                             instruct_eos=_LLAMA31_CHAT_EOS, rope_scaling_factor=8.0)
LLAMA3_2_FACTS = FamilyFacts(context_length=131072, bos_token_id=128000, eos_token_id=128001,
                             base_generation=LLAMA31_GENERATION,
                             instruct_generation=LLAMA31_GENERATION,
                             instruct_eos=_LLAMA31_CHAT_EOS, rope_scaling_factor=32.0)
LLAMA3_3_FACTS = LLAMA3_1_FACTS


def ffn_rows(spec: ModelSpec, src: Callable[[str], str]) -> Sequence[PlanRow]:
    """One FFN width."""
    return [("ffn_dim", str(spec.ffn_dim), src("ffn_dim"))]


def _sentencepiece(key: Family, *, label: str, facts: FamilyFacts, rank: int,
                   template: str | None) -> FamilyDescription:
    return FamilyDescription(
        key=key, label=label, facts=facts, tensors=LLAMA_TENSORS,
        tokenizer=TokenizerScheme(kind="sentencepiece", chat_template=template),
        config=llama_config, generation_config=llama_generation_config,
        evidence=llama_rules, evidence_rank=rank, embedding_split_dim=1, plan_rows=ffn_rows)


def _tiktoken(key: Family, *, label: str, facts: FamilyFacts, rank: int, specials: str,
              template: str, ties_output: bool = False,
              same_config_as: str | None = None) -> FamilyDescription:
    return FamilyDescription(
        key=key, label=label, facts=facts, tensors=LLAMA_TENSORS,
        tokenizer=TokenizerScheme(kind="tiktoken", specials=specials, chat_template=template),
        config=llama_config, generation_config=llama_generation_config,
        evidence=llama_rules, evidence_rank=rank, same_config_as=same_config_as,
        embedding_split_dim=0, bos_below_vocab_end=_LLAMA3_SPECIALS, ties_output=ties_output,
        plan_rows=ffn_rows)


# evidence_rank: where the evidence cannot tell families apart, LLaMA 2 is the likelier of 1/2,
# and 3.3 has 3.1's architecture and config (docs/releases.md). Chat templates: one file per
# published text, LLaMA 3.3 publishes 3.1's (tokenizer/templates/SOURCES.md); LLaMA 1 has no
# chat model. Only LLaMA 3.2 ties its output to the embedding (docs/releases.md).
DESCRIPTIONS = (
    _sentencepiece(Family.LLAMA1, label="LLaMA 1", facts=LLAMA1_FACTS, rank=2, template=None),
    _sentencepiece(Family.LLAMA2, label="LLaMA 2", facts=LLAMA2_FACTS, rank=0,
                   template="llama2_chat.jinja"),
    _sentencepiece(Family.CODE_LLAMA, label="Code Llama", facts=CODE_LLAMA_FACTS, rank=1,
                   template="code_llama_instruct.jinja"),
    _tiktoken(Family.LLAMA3, label="LLaMA 3", facts=LLAMA3_FACTS, rank=5, specials="llama3.0",
              template="llama3_instruct.jinja"),
    _tiktoken(Family.LLAMA3_1, label="LLaMA 3.1", facts=LLAMA3_1_FACTS, rank=3,
              specials="llama3.1", template="llama3_1_instruct.jinja"),
    _tiktoken(Family.LLAMA3_2, label="LLaMA 3.2", facts=LLAMA3_2_FACTS, rank=4,
              specials="llama3.1", template="llama3_2_instruct.jinja", ties_output=True),
    _tiktoken(Family.LLAMA3_3, label="LLaMA 3.3", facts=LLAMA3_3_FACTS, rank=6,
              specials="llama3.1", template="llama3_1_instruct.jinja",
              same_config_as=Family.LLAMA3_1),
)
