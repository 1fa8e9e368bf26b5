"""The chat templates Meta publishes in its instruct models' tokenizer_config.json.

The texts are package data, `templates/*.jinja`, verbatim and byte for byte: they are copied
into the output's tokenizer_config.json, so they are never edited, only replaced by a newer
published text. Where each comes from is in templates/SOURCES.md (not in a Jinja comment,
which would change the bytes written).
"""

from __future__ import annotations

import functools
from importlib import resources

from streamconv.model.families.registry import describe


@functools.cache
def read_template(file_name: str) -> str:
    """One template file's text, exactly as stored (no newline translation)."""
    folder = resources.files("streamconv.tokenizer").joinpath("templates")
    return folder.joinpath(file_name).read_bytes().decode("utf-8")


def chat_template(family: str, *, instruct: bool) -> str | None:
    """The template Meta publishes for the family's chat models (the file its description
    names); None for base models and for LLaMA 1, which has no chat model."""
    file_name = describe(family).tokenizer.chat_template
    if not instruct or file_name is None:
        return None
    return read_template(file_name)
