"""FamilyDescription: everything streamconv knows about one model family, in one object.

Detection, the shape checks, the planner (through the tensor table), the config writer, the
tokenizer builder, the GGUF writer and `plan` read a family only through its description, so
adding a family is registering one more description (families/registry.py) with its table,
facts and tests; tests/test_structure.py checks that no code outside this package branches on
a family's name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from streamconv.model.family_rules import Evidence, Facts
    from streamconv.model.spec import ModelSpec
    from streamconv.model.tensor_table import TensorTable
    from streamconv.source.params import MetaParams
    from streamconv.source.tensor_index import Checkpoint

TokenizerKind = Literal["sentencepiece", "tiktoken"]
PlanRow = tuple[str, str, str]  # (what, value, where it came from), as `plan` prints it


@dataclass(frozen=True, kw_only=True)
class FamilyFacts:
    """What a family's published Hugging Face configs hold that params.json does not say."""

    context_length: int
    bos_token_id: int
    eos_token_id: int
    # generation_config.json of the base and of the chat models, without bos/eos.
    base_generation: tuple[tuple[str, Any], ...]
    instruct_generation: tuple[tuple[str, Any], ...]
    # eos ids of the chat models (config.json and generation_config.json); None: the base eos.
    instruct_eos: tuple[int, ...] | None = None
    # config.json's eos_token_id of the chat models, where it differs from generation's list.
    instruct_config_eos: int | None = None
    rope_scaling_factor: float | None = None
    # Context length when rope_theta is not the family's long-context theta (Code Llama's 70B
    # Python / Instruct went back to 10000 and 4096): (long theta, context otherwise).
    short_context: tuple[float, int] | None = None


@dataclass(frozen=True, kw_only=True)
class TokenizerScheme:
    """How the family's tokenizer.model becomes tokenizer files. The tokenizer stage owns the
    scheme tables and template files; the description names which ones apply."""

    kind: TokenizerKind
    # tokenizer/tiktoken_specials.py's scheme name (tiktoken only): the special tokens Meta
    # adds in code after the ranks.
    specials: str | None = None
    # tokenizer/templates/<file>: the chat template the chat models publish; None: none.
    chat_template: str | None = None


Detector = Callable[["MetaParams", "Checkpoint", tuple[bool, str]], "ModelSpec"]


@dataclass(frozen=True, kw_only=True)
class FamilyDescription:
    """One family. Built with keyword arguments only (tests/test_structure.py checks it).

    A family is found one of two ways: `recognise` claims a checkpoint from its params.json
    keys or tensor names before any evidence rule runs (Llama 4; Llama 3.2 Vision would be
    recognised by vision_chunk_size > 0), or, with `evidence` set, it is one of the candidates the
    evidence rules (model/family_rules.py) choose among (LLaMA 1-3.x), ranked by
    `evidence_rank` where the evidence cannot tell candidates apart.
    """

    key: str  # --llama-version's value and ModelSpec.family
    label: str
    facts: FamilyFacts
    tensors: TensorTable
    tokenizer: TokenizerScheme
    config: Callable[[ModelSpec, str], dict[str, Any]]  # (spec, dtype name) -> config.json
    generation_config: Callable[[ModelSpec], dict[str, Any]]
    recognise: Callable[[MetaParams, Checkpoint], bool] | None = None
    # A recognised family's own detection; None: the LLaMA-style detection over `tensors`.
    detect: Detector | None = None
    evidence: Callable[[Facts], Iterable[Evidence]] | None = None
    evidence_rank: int | None = None
    # The family's layer sets beyond range(n_layers) as "all", from params.json (a LayerMap
    # where HF numbers the layers otherwise, tensor_table.LayerMap), for the LLaMA-style
    # detection; a family with its own `detect` builds them there (Llama 4).
    layer_sets: Callable[[MetaParams], Mapping[str, Sequence[int]]] | None = None
    # A family whose converted config equals this one's: not reported as an alternative.
    same_config_as: str | None = None
    # Rank files split the embedding by vocabulary rows (0) or hidden columns (1).
    embedding_split_dim: int = 1
    # bos sits this many ids below the vocabulary's end (tiktoken specials follow the ranks);
    # None: facts.bos_token_id.
    bos_below_vocab_end: int | None = None
    ties_output: bool = False
    # The rows `plan` prints for the FFN and anything family-specific.
    plan_rows: Callable[[ModelSpec, Callable[[str], str]], Sequence[PlanRow]] | None = None
    # llama.cpp: gguf.MODEL_ARCH member name, BPE pre-tokenizer name, and whether a BPE
    # vocabulary is written even where a tokenizer.model sits in the folder.
    gguf_arch: str = "LLAMA"
    gguf_pre_tokenizer: str = "llama-bpe"
    gguf_bpe_only: bool = False
    # config.json keys the GGUF writer moves (Llama 4: dense FFN width as intermediate_size).
    gguf_hparams: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # Why GGUF output is refused for this spec, or None (Llama 4's FP8 release).
    gguf_refusal: Callable[[ModelSpec], str | None] | None = None
    # JSON files the family publishes beyond config, generation config and tokenizer (Llama
    # 3.2 Vision's preprocessor_config.json): file name -> content.
    extra_files: Callable[[ModelSpec], Mapping[str, dict[str, Any]]] | None = None

    @property
    def flag(self) -> str:
        """The key as --llama-version spells it (a Family member's value)."""
        return str(getattr(self.key, "value", self.key))

    def context_length(self, *, rope_theta: float) -> int:
        short = self.facts.short_context
        if short is not None and rope_theta != short[0]:
            return short[1]
        return self.facts.context_length

    def rope_scaling(self, *, use_scaled_rope: bool) -> dict[str, Any] | None:
        """LLaMA 3.1+'s frequency scaling as Hugging Face writes it (rope_type llama3)."""
        factor = self.facts.rope_scaling_factor
        if factor is None or not use_scaled_rope:
            return None
        return {"factor": factor, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}

    def eos_token_ids(self, *, bos_token_id: int, instruct: bool,
                      for_config: bool) -> int | list[int]:
        """The published eos ids, moved along with bos: tiktoken's special tokens follow the
        ranks, so a smaller (test) vocabulary shifts them all alike."""
        facts = self.facts
        shift = bos_token_id - facts.bos_token_id
        if not instruct or facts.instruct_eos is None:
            return facts.eos_token_id + shift
        if for_config and facts.instruct_config_eos is not None:
            return facts.instruct_config_eos + shift
        return [eos + shift for eos in facts.instruct_eos]

    def generation_defaults(self, *, instruct: bool) -> dict[str, Any]:
        facts = self.facts
        return dict(facts.instruct_generation if instruct else facts.base_generation)

    def bos_token_id(self, *, vocab_size: int) -> int:
        if self.bos_below_vocab_end is not None:
            return vocab_size - self.bos_below_vocab_end
        return self.facts.bos_token_id
