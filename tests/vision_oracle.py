"""Compare a converted Llama 3.2 Vision folder, run by transformers, with Meta's own forward.

`compare_with_hf(hf_dir, reference)` loads hf_dir with the transformers of .venv as
`MllamaForConditionalGeneration` in float32 and runs the inputs Meta's model ran
(tests/vision_reference.py): the text-only prompt, the image+text prompt (image first, as the
processor puts it) and the projected vision tokens. `.assert_close()` applies the tolerances.

Tolerances: the runner's weights are bf16 values held in fp32, and a converter that writes bf16
keeps them exactly, so both sides compute in fp32 from the same numbers and differ only by the
order of operations (complex vs. half-split rotary, fused vs. per-rank matmuls, all-reduce sums).
Measured on the tiny model (logits of order 1-6, 128256 wide) at MP 1, 2 and 8: max abs
difference <= 5.5e-6, relative <= 1.1e-6. ATOL
1e-4 leaves room for other BLAS paths and is still far below any real mistake: a wrong permute,
an off-by-one layer interleave or a transposed tile grid moves logits by 0.1-5.

One transformers behaviour is worked around here, not in any converter's output
(docs/llama32_vision_facts.md section 7, pitfall 1): since huggingface/transformers PR #39643
(in 4.57.6 and 5.25; 4.47.1 matched Meta) `MllamaVisionModel` takes the *output* of the layers
in `intermediate_layers_indices`, where Meta takes their *input*. The published config keeps
Meta's indices, so after loading, the model's own attribute is set to indices - 1 (the output of
layer i - 1 is the input of layer i). Without that the vision tokens differ by ~0.1-0.2 relative.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from vision_reference import MetaVisionReference

from fixtures.llama32_vision_inputs import VisionInputs

ATOL = 1e-4
# transformers releases from this one on read intermediate layers one layer late (see above):
# 4.57.6 and 5.25 were read; 4.48-4.56 were not checked.
SHIFTED_INTERMEDIATE_SINCE = (4, 57)


@dataclass(frozen=True)
class Difference:
    """max |hf - meta| and that over max |meta|, for one output."""

    max_abs: float
    max_rel: float


@dataclass(frozen=True)
class VisionComparison:
    text_logits: Difference
    image_logits: Difference
    vision_tokens: Difference
    shifted_intermediate_layers: bool

    def assert_close(self, *, atol: float = ATOL) -> None:
        for label in ("text_logits", "image_logits", "vision_tokens"):
            diff: Difference = getattr(self, label)
            assert diff.max_abs <= atol, f"{label}: max abs difference {diff.max_abs:.3g} > {atol}"


def _difference(hf: torch.Tensor, meta: torch.Tensor) -> Difference:
    assert hf.shape == meta.shape, f"shapes differ: transformers {hf.shape}, Meta {meta.shape}"
    max_abs = float((hf.float() - meta.float()).abs().max())
    return Difference(max_abs=max_abs, max_rel=max_abs / float(meta.abs().max()))


def _transformers_reads_layer_outputs() -> bool:
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return (major, minor) >= SHIFTED_INTERMEDIATE_SINCE


def load_hf_model(hf_dir: Path) -> tuple[Any, bool]:
    """(model in fp32 eval mode, whether the intermediate-layer workaround was applied)."""
    from transformers import MllamaForConditionalGeneration

    model = MllamaForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    shifted = _transformers_reads_layer_outputs()
    if shifted:
        vision = model.model.vision_model
        vision.intermediate_layers_indices = [i - 1 for i in vision.intermediate_layers_indices]
    return model, shifted


def hf_image_inputs(model: Any, inputs: VisionInputs) -> dict[str, torch.Tensor]:
    """The tensors MllamaImageProcessor would give for these tiles (padded to max_num_tiles)."""
    vision_config = model.config.vision_config
    max_tiles = int(vision_config.max_num_tiles)
    n_tiles = inputs.tiles.shape[0]
    pixel_values = torch.zeros(1, 1, max_tiles, *inputs.tiles.shape[1:])
    pixel_values[0, 0, :n_tiles] = inputs.tiles
    supported = [tuple(ratio) for ratio in vision_config.supported_aspect_ratios]
    aspect_ratio_id = supported.index(tuple(inputs.aspect_ratio)) + 1  # 0 is padding
    tile_mask = torch.zeros(1, 1, max_tiles, dtype=torch.long)
    tile_mask[..., :n_tiles] = 1
    seq = inputs.tokens.shape[1]
    cross_attention_mask = tile_mask.unsqueeze(1).expand(1, seq, 1, max_tiles).clone()
    return {"pixel_values": pixel_values, "aspect_ratio_ids": torch.tensor([[aspect_ratio_id]]),
            "aspect_ratio_mask": tile_mask, "cross_attention_mask": cross_attention_mask}


def compare_with_hf(hf_dir: Path, reference: MetaVisionReference) -> VisionComparison:
    """Run transformers on hf_dir with reference's inputs; the differences from Meta."""
    model, shifted = load_hf_model(hf_dir)
    inputs = reference.inputs
    image = hf_image_inputs(model, inputs)
    with torch.inference_mode():
        text_logits = model(input_ids=inputs.text_tokens).logits
        image_logits = model(input_ids=inputs.tokens, **image).logits
        vision = model.model.vision_model(
            pixel_values=image["pixel_values"], aspect_ratio_ids=image["aspect_ratio_ids"],
            aspect_ratio_mask=image["aspect_ratio_mask"]).last_hidden_state
        vision_tokens = model.model.multi_modal_projector(vision)
    return VisionComparison(
        text_logits=_difference(text_logits, reference.text_logits),
        image_logits=_difference(image_logits, reference.image_logits),
        vision_tokens=_difference(vision_tokens, reference.vision_tokens),
        shifted_intermediate_layers=shifted)
