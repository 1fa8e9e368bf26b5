"""The mapping facts of docs/llama4_facts.md (section 3), checked by two implementations nobody here
wrote: transformers' Llama4ForConditionalGeneration, loaded from the folder that
tests/llama4_hf_mapping.py writes from a tiny MP1 Meta checkpoint, must give the text logits, the
vision tower's output and the logits with an image that Meta's own code gives on the Meta
checkpoint (tests/llama4_reference_runner.py, in .venv-meta).

The same comparisons run on the folder streamconv writes from the model stored in 8 rank files (the
oracle of issue 12), and on the naive mapping's folder, which validates the facts (wqkv split
without rope permute, experts fused as [gate | up] on the last dim, router transposed, norms
renamed, chunked / NoPE layers and qk norm in config.json, Scout's rope scaling 16 / 1, the vision
names) before anything in streamconv relies on them.

transformers 5.24.0's Llama4ForConditionalGeneration.forward fails on any input
(`'MoeCausalLMOutputWithPast' object has no attribute 'image_outputs'`), so the logits come from
its `language_model` with the image features scattered in by hand, as that forward would.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import in_process_budget
from llama4_hf_mapping import write_hf_folder
from llama4_reference import MetaRun, missing_reason, run_meta_reference

import streamconv
from fixtures.llama4_checkpoint import (
    BATCH,
    Llama4Spec,
    VisionSpec,
    batch_image_positions,
    fixed_image,
    fixed_tokens,
    maverick_like,
    scout_like,
    write_llama4_checkpoint,
)

ATOL = 1e-4  # fp32 both sides; measured ~3e-6 on logits of magnitude ~0.8

pytestmark = pytest.mark.oracle(missing_reason())




def _load_hf(folder: Path) -> torch.nn.Module:
    from transformers import Llama4ForConditionalGeneration

    model = Llama4ForConditionalGeneration.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


def _streamconv_folder(meta_dir: Path, out_dir: Path) -> Path:
    options = streamconv.ConvertOptions(max_ram_bytes=int(in_process_budget()), tokenizer=False)
    streamconv.convert(meta_dir, out_dir, options)
    return out_dir


# "mapping": the naive in-memory mapping of the facts (MP1); "streamconv": the streaming
# conversion of the same model stored in 8 rank files, as Meta ships Llama 4.
WRITERS = {"mapping": (1, write_hf_folder), "streamconv": (8, _streamconv_folder)}


def _meta_and_hf(spec: Llama4Spec, tmp_path: Path,
                 writer: str = "mapping") -> tuple[MetaRun, torch.nn.Module]:
    n_ranks, write = WRITERS[writer]
    spec = replace(spec, n_ranks=n_ranks)
    meta_dir = write_llama4_checkpoint(spec, tmp_path / "meta")
    kwargs = {}
    if spec.vision is not None:
        kwargs = {"image": fixed_image(spec.vision),
                  "image_positions": batch_image_positions(spec.vision)}
    meta = run_meta_reference(meta_dir, fixed_tokens(spec.vocab_size), **kwargs)
    return meta, _load_hf(write(meta_dir, tmp_path / "hf"))


# With a tiny vision tower: without one, transformers builds the default 34-layer tower at random.
# floor_scale 4 (8192 in the real models) makes the NoPE layers' attention temperature tuning
# act within SEQ_LEN tokens.
_TEMPERATURE = (("attn_temperature_tuning", True), ("floor_scale", 4.0))


@pytest.mark.parametrize("spec", [scout_like(vision=VisionSpec()),
                                  maverick_like(vision=VisionSpec()),
                                  scout_like(vision=VisionSpec(), extra_params=_TEMPERATURE)],
                         ids=["scout-like", "maverick-like", "scout-like-temperature-tuning"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_text_logits_match_meta(spec: Llama4Spec, writer: str, tmp_path: Path) -> None:
    meta, hf = _meta_and_hf(spec, tmp_path, writer)
    with torch.no_grad():
        logits = hf.language_model(input_ids=fixed_tokens(spec.vocab_size)).logits
    diff = (logits - meta.logits).abs().max().item()
    print(f"max abs logit diff {diff:.3e}")
    assert diff <= ATOL


@pytest.mark.parametrize("writer", list(WRITERS))
def test_vision_and_image_logits_match_meta(writer: str, tmp_path: Path) -> None:
    spec = scout_like(vision=VisionSpec())
    assert spec.vision is not None
    meta, hf = _meta_and_hf(spec, tmp_path, writer)
    assert meta.vision is not None and meta.image_logits is not None
    tokens = fixed_tokens(spec.vocab_size)
    positions = batch_image_positions(spec.vision)
    with torch.no_grad():
        features = hf.get_image_features(pixel_values=fixed_image(spec.vision)).last_hidden_state
        projected = hf.multi_modal_projector(features.reshape(-1, features.shape[-1]))
        embeds = hf.language_model.get_input_embeddings()(tokens)
        per_sample = projected.repeat(BATCH, 1)  # one image per sample, as the runner gives
        embeds = embeds.masked_scatter(positions.unsqueeze(-1), per_sample)
        image_logits = hf.language_model(inputs_embeds=embeds).logits
    reference = meta.vision["fp32"]
    torch.testing.assert_close(features.reshape(reference["adapter"].shape), reference["adapter"],
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(projected.reshape(reference["projection"].shape),
                               reference["projection"], rtol=0, atol=1e-5)
    diff = (image_logits - meta.image_logits).abs().max().item()
    print(f"max abs image-logit diff {diff:.3e}")
    assert diff <= ATOL
