"""Llama 4's published facts: FamilyFacts plus the values only Llama 4 has (special-token
offsets, the variant contexts, the rope scaling defaults). model/llama4.py reads them; sources
are cited next to each value (docs/llama4_facts.md has them in full)."""

from __future__ import annotations

from dataclasses import dataclass

from streamconv.model.families.description import FamilyFacts


@dataclass(frozen=True)
class Llama4Facts:
    """The Llama 4 values that are not in params.json and not common to every family."""

    n_special_tokens: int
    # The published configs' ids, relative to <|begin_of_text|>.
    eos_offsets: tuple[int, ...]
    pad_offset: int
    boi_offset: int
    eoi_offset: int
    image_offset: int
    base_context: int
    scout_instruct_context: int  # 16 experts
    maverick_instruct_context: int  # other MoE models
    dense_instruct_context: int  # no moe_args (Llama Guard 4)
    rope_factor: float
    rope_high_freq_factor: float


LLAMA4 = Llama4Facts(
    # llama-models' llama4/tokenizer.py: 2,048 special tokens after the ranks (ids
    # 200000-202047 for the real 200,000 ranks); <|end_of_text|>, <|eom|>, <|eot|>;
    # <|finetune_right_pad|>; <|image_start|>, <|image_end|>, <|patch|>.
    n_special_tokens=2048, eos_offsets=(1, 7, 8), pad_offset=18,
    boi_offset=80, eoi_offset=81, image_offset=92,
    # transformers' convert_llama4_weights_to_hf.py max_context_length; the published Scout
    # base 262144 and Maverick base 262144 in docs/llama4_published.json.
    base_context=262144, scout_instruct_context=10485760, maverick_instruct_context=1048576,
    dense_instruct_context=8192,
    # llama-models' llama4/args.py (PR #322, "Only Llama-4-Scout uses scaled rope"): the
    # defaults when params.json sets use_scaled_rope without the factors; the published Scout
    # config.json has these (factor 16.0, high_freq_factor 1.0).
    rope_factor=16.0, rope_high_freq_factor=1.0)

# transformers' convert_llama4_weights_to_hf.py: base context 256K, bos 200000, eos 200001;
# Instruct generation_config do_sample/temperature 0.6/top_p 0.9 and the three stop tokens
# of llama-models' llama4/tokenizer.py (docs/llama4_facts.md sections 4 and 5). The
# variant-specific values (Instruct context) are in LLAMA4 above.
FACTS = FamilyFacts(context_length=LLAMA4.base_context, bos_token_id=200000,
                    eos_token_id=200001, base_generation=(),
                    instruct_generation=(("do_sample", True), ("temperature", 0.6),
                                         ("top_p", 0.9)),
                    instruct_eos=(200001, 200007, 200008))
