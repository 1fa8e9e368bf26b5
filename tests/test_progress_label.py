"""The progress line's "layer k/n" comes from the family's table, not from a fixed
`model.layers.N` pattern (which missed Llama 4's `language_model.model.layers.N`)."""

from __future__ import annotations

import pytest

from streamconv.cli.progress import hf_layer_count, progress_label
from streamconv.model.families.registry import describe
from streamconv.model.family import Family


def _prefix(family: Family) -> str:
    return describe(family).tensors.entry("q").hf_name.split("{layer}")[0]


@pytest.mark.parametrize(("family", "hf_name", "label"), [
    (Family.LLAMA2, "model.layers.3.self_attn.q_proj.weight", "layer 4/8"),
    (Family.LLAMA2, "model.embed_tokens.weight", "embed_tokens"),
    (Family.LLAMA4, "language_model.model.layers.3.self_attn.q_proj.weight", "layer 4/8"),
    (Family.LLAMA4, "language_model.model.embed_tokens.weight", "embed_tokens"),
    # The vision tower's layers are not the decoder's: named, not counted against n_layers.
    (Family.LLAMA4, "vision_model.model.layers.5.mlp.fc1.weight", "fc1"),
])
def test_progress_names_the_decoder_layer(family: Family, hf_name: str, label: str) -> None:
    assert progress_label(hf_name, layer_prefix=_prefix(family), n_layers=8) == label


def test_layer_count_is_in_hugging_face_numbering() -> None:
    """Interleaved layer sets (a layer map) give more HF layers than params.json's n_layers."""
    names = [f"model.layers.{i}.self_attn.q_proj.weight" for i in (0, 1, 2, 3)]
    assert hf_layer_count([*names, "model.norm.weight"], layer_prefix="model.layers.") == 4
    assert hf_layer_count(["model.norm.weight"], layer_prefix="model.layers.") == 0
