"""The chat templates Meta publishes in its instruct models' tokenizer_config.json.

The texts are package data, `templates/*.jinja`, verbatim and byte for byte: they are copied
into the output's tokenizer_config.json, so they are never edited, only replaced by a newer
published text. Where each comes from is in templates/SOURCES.md (not in a Jinja comment,
which would change the bytes written).
"""

from __future__ import annotations

import functools
from importlib import resources

from streamconv.model.family import Family

# One file per published text: LLaMA 3.3 publishes 3.1's template (templates/SOURCES.md).
_TEMPLATE_FILES = {
    Family.LLAMA2: "llama2_chat.jinja",
    Family.CODE_LLAMA: "code_llama_instruct.jinja",
    Family.LLAMA3: "llama3_instruct.jinja",
    Family.LLAMA3_1: "llama3_1_instruct.jinja",
    Family.LLAMA3_2: "llama3_2_instruct.jinja",
    Family.LLAMA3_3: "llama3_1_instruct.jinja",
    Family.LLAMA4: "llama4_instruct.jinja",
}


@functools.cache
def read_template(file_name: str) -> str:
    """One template file's text, exactly as stored (no newline translation)."""
    folder = resources.files("streamconv.tokenizer").joinpath("templates")
    return folder.joinpath(file_name).read_bytes().decode("utf-8")


def chat_template(family: Family, *, instruct: bool) -> str | None:
    """The template Meta publishes for the family's chat models; None for base models and for
    LLaMA 1, which has no chat model."""
    file_name = _TEMPLATE_FILES.get(family)
    if not instruct or file_name is None:
        return None
    return read_template(file_name)
