"""Tiny checkpoints laid out like Meta's Llama 3.1 405B FP8 release, and an independent
dequantization of them.

Facts (docs/meta_formats.md section 1): 8 ranks of consolidated.NN.pth plus fp8_scales_{rank}.pt;
only layers.{i}.feed_forward.w1/w3/w2.weight for i = 1 .. n_layers-2 are float8_e4m3fn, with
one fp32 scale per output row of each rank's tensor under f"{i}_feed_forward.{w}_{rank}"
(llama-models llama3/quantization/loader.py); Meta made them with fbgemm's
quantize_fp8_per_row: scale = max(rowmax|w| / 448, 1 / (448 * 512)), q = w / scale saturated to
e4m3 (FBGEMM quantize.cu). Each rank is quantized on its own, so w2 (split on its input dim)
has a different scale vector on every rank, as in Meta's files.

The dequantization here shares no code with streamconv: it is the formula, in torch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from fixtures.synthetic import SyntheticSpec, write_checkpoint

FP8_MAX = 448.0
_WEIGHTS = ("w1", "w3", "w2")


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fbgemm's row-wise rule: (fp8 weight, fp32 dequantization scale per row)."""
    w = weight.float()
    scale = torch.clamp(w.abs().amax(dim=1) / FP8_MAX, min=1.0 / (FP8_MAX * 512))
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def _load(path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(path, weights_only=True)
    return state


def write_fp8_checkpoint(spec: SyntheticSpec, out_dir: Path, *,
                         column_scales: bool = False) -> Path:
    """A bf16 checkpoint of spec whose middle layers' w1/w3/w2 are fp8, plus the scale files.
    column_scales stores each scale as [N, 1] instead of [N] (the real shape is not public)."""
    assert spec.dtype == "bfloat16"
    write_checkpoint(spec, out_dir)
    for rank in range(spec.n_ranks):
        path = out_dir / f"consolidated.{rank:02d}.pth"
        state = _load(path)
        scales: dict[str, torch.Tensor] = {}
        for layer_idx in range(1, spec.n_layers - 1):
            for w in _WEIGHTS:
                meta_name = f"layers.{layer_idx}.feed_forward.{w}.weight"
                q, scale = quantize_rows(state[meta_name])
                state[meta_name] = q
                scales[f"{layer_idx}_feed_forward.{w}_{rank}"] = (
                    scale[:, None].contiguous() if column_scales else scale)
        torch.save(state, path)
        torch.save(scales, out_dir / f"fp8_scales_{rank}.pt")
    return out_dir


def dequantized_shards(fp8_dir: Path, *,
                       dtype: torch.dtype = torch.bfloat16) -> list[dict[str, torch.Tensor]]:
    """Every rank with its fp8 tensors turned into dtype by Meta's formula:
    (W_fp8.float() * scale[:, None]).to(bfloat16), with that rank's scales."""
    shards = []
    for rank, path in enumerate(sorted(fp8_dir.glob("consolidated.*.pth"))):
        state = _load(path)
        scales = _load(fp8_dir / f"fp8_scales_{rank}.pt")
        for meta_name, tensor in state.items():
            if tensor.dtype == torch.float8_e4m3fn:
                layer_idx, w = meta_name.split(".")[1], meta_name.split(".")[3]
                scale = scales[f"{layer_idx}_feed_forward.{w}_{rank}"].reshape(-1)
                state[meta_name] = (tensor.float() * scale[:, None]).to(dtype)
        shards.append(state)
    return shards


def write_dequantized_checkpoint(fp8_dir: Path, out_dir: Path) -> Path:
    """The dequantized ranks as a plain bf16 Meta checkpoint (for the reference forward pass)."""
    out_dir.mkdir(parents=True)
    for rank, state in enumerate(dequantized_shards(fp8_dir)):
        torch.save(state, out_dir / f"consolidated.{rank:02d}.pth")
    shutil.copy(fp8_dir / "params.json", out_dir / "params.json")
    return out_dir
