"""The LLaMA families streamconv knows, and the per-family facts that are not in params.json.

Facts come from Meta's releases and transformers' convert_llama_weights_to_hf.py (4.47.1):
context lengths, token ids, and how the embedding is split across model-parallel shards.
"""

from __future__ import annotations

import enum


class Family(str, enum.Enum):
    LLAMA1 = "1"
    LLAMA2 = "2"
    CODE_LLAMA = "code"
    LLAMA3 = "3"
    LLAMA3_1 = "3.1"
    LLAMA3_2 = "3.2"
    LLAMA3_3 = "3.3"

    @property
    def is_llama3(self) -> bool:
        return self in (Family.LLAMA3, Family.LLAMA3_1, Family.LLAMA3_2, Family.LLAMA3_3)

    @property
    def label(self) -> str:
        return "Code Llama" if self is Family.CODE_LLAMA else f"LLaMA {self.value}"


# max_position_embeddings written to config.json (transformers' script: CONTEXT_LENGTH_FOR_VERSION,
# and 16384 for Code Llama, detected there by rope_theta > 10000).
MAX_POSITION_EMBEDDINGS: dict[Family, int] = {
    Family.LLAMA1: 2048,
    Family.LLAMA2: 4096,
    Family.CODE_LLAMA: 16384,
    Family.LLAMA3: 8192,
    Family.LLAMA3_1: 131072,
    Family.LLAMA3_2: 131072,
    Family.LLAMA3_3: 131072,
}

# SentencePiece ids for LLaMA 1/2/Code Llama; tiktoken specials for LLaMA 3.x.
BOS_TOKEN_ID: dict[bool, int] = {False: 1, True: 128000}
EOS_TOKEN_ID: dict[bool, int] = {False: 2, True: 128001}
