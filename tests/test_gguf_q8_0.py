"""The Q8_0 quantizer gives gguf-py's bytes (the oracle: `gguf.quants.quantize`, llama.cpp's own
numpy implementation of ggml's block_q8_0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from streamconv.runtime import q8_0


def _ours(values: torch.Tensor) -> np.ndarray:
    out = torch.empty(values.numel() // 32 * 34, dtype=torch.uint8)
    scratch = q8_0.Q8Scratch(torch.empty(q8_0.SCRATCH_BYTES, dtype=torch.uint8))
    q8_0.quantize_into(out, values.contiguous(), scratch)
    return out.numpy()


def _gguf(values: torch.Tensor) -> np.ndarray:
    data = values.float().numpy().reshape(-1, values.shape[-1])
    with np.errstate(all="ignore"):  # gguf-py's 1 / d overflows for subnormal scales
        return quants.quantize(data, GGMLQuantizationType.Q8_0).reshape(-1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("scale", [0.02, 1.0, 300.0])
def test_random_rows_equal_gguf_py(dtype: torch.dtype, scale: float) -> None:
    # More values than one chunk, and a row count that leaves a partial last chunk.
    gen = torch.Generator().manual_seed(int(scale * 100))
    values = (torch.randn(37, 4160, generator=gen) * scale).to(dtype)
    assert np.array_equal(_ours(values), _gguf(values))


def test_edge_values_equal_gguf_py() -> None:
    blocks = [
        torch.zeros(32),  # all-zero block: d = 0, id = 0
        torch.full((32,), -0.0),
        torch.tensor([127.0] + [-127.0] * 31),  # +-max
        torch.tensor([1.0, -1.0] * 16) * torch.finfo(torch.bfloat16).max,
        # values that land exactly on .5 after scaling (ties round away from zero)
        torch.tensor([127.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5] + [0.0] * 23),
        torch.tensor([254.0, 1.0, -1.0, 3.0, -3.0, 5.0] + [0.25] * 26),
        torch.tensor([1e-30, -1e-38, 1e-40] + [0.0] * 29),  # tiny and subnormal
        torch.tensor([1.0] * 32),  # every value the max
        torch.tensor([0.49999997, 1.0 / 127] + [1.0] + [0.0] * 29),
    ]
    values = torch.stack(blocks)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        cast = values.to(dtype)
        assert np.array_equal(_ours(cast), _gguf(cast)), dtype


def test_every_bfloat16_pattern_equal_gguf_py() -> None:
    """All finite bfloat16 values, each block scaled by its own max: every rounding case."""
    bits = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    finite = bits[torch.isfinite(bits)]
    n = finite.numel() // 32 * 32
    values = finite[:n].reshape(-1, 32)
    assert np.array_equal(_ours(values), _gguf(values))
    shuffled = values.reshape(-1)[torch.randperm(n, generator=torch.Generator().manual_seed(1))]
    assert np.array_equal(_ours(shuffled.reshape(-1, 64)), _gguf(shuffled.reshape(-1, 64)))
