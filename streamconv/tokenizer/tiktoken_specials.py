"""What Meta's code adds to a tiktoken ranks file, per family: the split regex and the specials.

A tiktoken ``tokenizer.model`` holds only the mergeable ranks. The pre-tokenizer regex and the
special tokens (named ones and reserved fillers, ids right after the ranks) live in Meta's
``tokenizer.py`` of each release, so a converter has to restate them. This module is that
restatement, as one ``TiktokenScheme`` per family; from_tiktoken.py builds the files from a
scheme and has no per-family branches.

Sources: LLaMA 3.x, Meta's llama-models ``llama3/tokenizer.py`` and transformers'
``DEFAULT_LLAMA_SPECIAL_TOKENS`` (convert_llama_weights_to_hf.py, 4.47.1); Llama 4,
llama-models 0.3.0 ``llama4/tokenizer.py`` (docs/llama4_facts.md section 5 lists every id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streamconv.model.families.registry import describe

# LLaMA 3's split regex (llama-models llama3/tokenizer.py ``pat_str``).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama 4's (llama-models llama4/tokenizer.py ``Tokenizer.O200K_PATTERN``; transformers'
# convert_llama4_weights_to_hf.py has the same string). Unlike LLaMA 3's it keeps a word's
# upper-case head with its lower-case tail, attaches contractions to the word before them, and
# lets a punctuation run swallow trailing "/".
O200K_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class TiktokenScheme:
    """A family's regex and special tokens; ``special_names[i]`` has id ``n_ranks + i``."""

    pattern: str
    special_names: tuple[str, ...]
    bos: str
    eos: str  # base models' eos
    instruct_eos: str  # chat models' eos: the end-of-turn token their templates close with
    # The pad token the published files name; None where they name none (LLaMA 3.x).
    pad: str | None = None
    # How many of the last specials have no row in the model's embedding: Llama 3.2 Vision's
    # <|image|> (128256) is read from learnable_embedding, not tok_embeddings.
    beyond_embedding: int = 0

    @property
    def n_special(self) -> int:
        return len(self.special_names)

    @property
    def embedding_rows(self) -> int:
        """Specials the model's embedding has rows for."""
        return self.n_special - self.beyond_embedding

    def special_id(self, name: str, *, n_ranks: int) -> int:
        return n_ranks + self.special_names.index(name)


def _numbered(prefix: str, count: int, *, start: int = 0) -> list[str]:
    """Meta's reserved fillers: ``<|{prefix}_{start}|>`` .. ``<|{prefix}_{start + count - 1}|>``."""
    return [f"<|{prefix}_{i}|>" for i in range(start, start + count)]


def _filled(named: Sequence[str], total: int, *, first_reserved: int) -> tuple[str, ...]:
    """``named`` then ``<|reserved_special_token_N|>`` from N = ``first_reserved`` up to
    ``total`` tokens: both generations fill the rest of their block so."""
    tail = _numbered("reserved_special_token", total - len(named), start=first_reserved)
    names = (*named, *tail)
    assert len(set(names)) == total, "special token names must be distinct"
    return names


BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
_R = "<|reserved_special_token_{}|>".format

# LLaMA 3.0: 256 specials (num_reserved_special_tokens), reserved 5.. after the named ones.
_LLAMA3_0_NAMED = (BOS, EOS, _R(0), _R(1), _R(2), _R(3), "<|start_header_id|>",
                   "<|end_header_id|>", _R(4), "<|eot_id|>")
# LLaMA 3.1-3.3: two reserved slots renamed (pad, eom), python_tag added; reserved 3.. after.
_LLAMA3_1_NAMED = (BOS, EOS, _R(0), _R(1), "<|finetune_right_pad_id|>", _R(2),
                   "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                   "<|python_tag|>")

# Llama 3.2 Vision, as transformers' convert_mllama_weights_to_hf.py (4.47.1) names them:
# <|step_id|> at 128005, reserved 2..246 after the named ones, then <|image|> at 128256 (Meta's
# tokenizer has <|image|> at 128011 and the model input carries 128256 in its place;
# docs/llama32_vision_facts.md section 6).
_LLAMA3_2_VISION_NAMED = (BOS, EOS, _R(0), _R(1), "<|finetune_right_pad_id|>", "<|step_id|>",
                          "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
                          "<|eot_id|>", "<|python_tag|>")

# Llama 4: 2,048 specials in blocks (ids 200000-202047 after the real file's 200,000 ranks).
_LLAMA4_BASIC = (BOS, EOS, "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>")
_LLAMA4_TEXT_POST_TRAIN = (
    "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>",
    *_numbered("text_post_train_reserved_special_token", 6),
    "<|python_start|>", "<|python_end|>", "<|finetune_right_pad|>",
    *_numbered("text_post_train_reserved_special_token", 61, start=8),
)  # 75 tokens, 200005-200079
_LLAMA4_VISION = (
    "<|image_start|>", "<|image_end|>", *_numbered("vision_reserved_special_token", 2),
    "<|tile_x_separator|>", "<|tile_y_separator|>",
    *_numbered("vision_reserved_special_token", 4, start=2),
    "<|image|>", "<|vision_reserved_special_token_6|>", "<|patch|>",
    *_numbered("vision_reserved_special_token", 1041, start=7),
)  # 1,054 tokens, 200080-201133
# 201134-201143. Present in llama-models 0.3.0, absent from transformers' converter (which
# names nothing from 201134 on): Meta's names are kept, so every id the model has a row for
# reads as Meta's tokenizer reads it (docs/tokenizers.md, "Differences from the published files").
_LLAMA4_REASONING = (*_numbered("reasoning_reserved_special_token", 8),
                     "<|reasoning_thinking_start|>", "<|reasoning_thinking_end|>")

LLAMA3_0_SCHEME = TiktokenScheme(
    pattern=LLAMA3_PATTERN, special_names=_filled(_LLAMA3_0_NAMED, 256, first_reserved=5),
    bos=BOS, eos=EOS, instruct_eos="<|eot_id|>")
LLAMA3_1_SCHEME = TiktokenScheme(
    pattern=LLAMA3_PATTERN, special_names=_filled(_LLAMA3_1_NAMED, 256, first_reserved=3),
    bos=BOS, eos=EOS, instruct_eos="<|eot_id|>")
LLAMA3_2_VISION_SCHEME = TiktokenScheme(
    pattern=LLAMA3_PATTERN,
    special_names=(*_filled(_LLAMA3_2_VISION_NAMED, 256, first_reserved=2), "<|image|>"),
    bos=BOS, eos=EOS, instruct_eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
    beyond_embedding=1)
LLAMA4_SCHEME = TiktokenScheme(
    pattern=O200K_PATTERN,
    special_names=_filled((*_LLAMA4_BASIC, *_LLAMA4_TEXT_POST_TRAIN, *_LLAMA4_VISION,
                           *_LLAMA4_REASONING), 2048, first_reserved=0),
    # eos <|eot|> for Instruct and pad <|finetune_right_pad|> (200018, the published configs'
    # pad_token_id): transformers' converter names "<|finetune_right_pad_id|>", a LLaMA 3 name
    # that is no Llama 4 token (docs/llama4_facts.md section 5).
    bos=BOS, eos=EOS, instruct_eos="<|eot|>", pad="<|finetune_right_pad|>")

# By the name a family description's TokenizerScheme.specials gives (model/families/).
SCHEMES = {"llama3.0": LLAMA3_0_SCHEME, "llama3.1": LLAMA3_1_SCHEME,
           "llama3.2-vision": LLAMA3_2_VISION_SCHEME, "llama4": LLAMA4_SCHEME}


def tiktoken_scheme(family: str) -> TiktokenScheme:
    """The special tokens scheme of a tiktoken family (its description names it)."""
    description = describe(family)
    name = description.tokenizer.specials
    if name is None:
        raise ValueError(f"{description.label} does not use a tiktoken tokenizer")
    return SCHEMES[name]


def special_token_names(family: str) -> list[str]:
    """The family's special tokens in id order (ids n_ranks, n_ranks + 1, ...)."""
    return list(tiktoken_scheme(family).special_names)
