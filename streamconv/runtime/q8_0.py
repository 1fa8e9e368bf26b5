"""Q8_0 quantization with the same bytes as gguf-py's numpy quantizer, fast and in fixed memory.

The format (ggml's block_q8_0; gguf-py `gguf/quants.py`, class Q8_0): every 32 consecutive
values of a row become one 34-byte block, an fp16 scale d = max|x| / 127 followed by 32 int8
q = roundf(x * id) with id = 1 / d (0 for an all-zero block), where roundf rounds halves away
from zero (gguf-py's `np_roundf`). gguf-py computes in float32: d, id and every product are
rounded to float32; d is then rounded to fp16 (nearest even).

Why not call gguf-py: its `quantize()` allocates float32 temporaries of the whole tensor (several
times its size) and runs at about 100 M values/s on one core here, 70 s of CPU for a 7B. This
one quantizes CHUNK_VALUES values at a time in a scratch buffer the caller owns (the plan counts
it in every slot; planning/encoding.py holds the sizes), each step a vectorized torch kernel
writing into that scratch (`out=`): no allocation per call, and the working set stays in cache.
torch releases the GIL in its kernels, so the executor's job threads quantize on all cores.

Exactness: d, id and |y| = |x| * id are the same IEEE float32 operations as gguf-py's, in the
same order (IEEE multiplication is symmetric in sign: |x * id| = |x| * id). gguf-py's
roundf(y), floor(|y|) + floor(2 * (|y| - floor(|y|))) with y's sign, takes one pass instead of
four: |y| + (0.5 - 2^-25), truncated by the conversion to int8, with x's sign bit set. The
float32 addition rounds only above the next integer's boundary or onto it exactly at a half;
0.5 - 2^-25 instead of 0.5 keeps 0.5 - 2^-25 itself from rounding up to 1. Checked for every
float32 |y| <= 128 (|y| never exceeds 127 by more than a few ulps here);
tests/test_gguf_q8_0.py compares the bytes with gguf-py's on random, tied and edge values and
on every bfloat16 value.
"""

from __future__ import annotations

from typing import Any

from streamconv.planning import encoding

BLOCK_VALUES = encoding.Q8_0_BLOCK_VALUES
BLOCK_BYTES = encoding.Q8_0_BLOCK_BYTES
CHUNK_VALUES = encoding.Q8_0_CHUNK_VALUES
SCRATCH_BYTES = encoding.Q8_0_SCRATCH_BYTES
_CHUNK_BLOCKS = CHUNK_VALUES // BLOCK_VALUES
_FLOAT = 4


class Q8Scratch:
    """The quantizer's float32 work arrays, as views of a caller-owned uint8 tensor of at least
    SCRATCH_BYTES (no memory of its own)."""

    def __init__(self, raw: Any) -> None:
        import torch

        assert raw.numel() >= SCRATCH_BYTES, "scratch smaller than SCRATCH_BYTES"
        skip = -raw.data_ptr() % 64
        n = CHUNK_VALUES * _FLOAT
        floats = raw[skip:skip + 3 * n].view(torch.float32)
        self.x, self.a, self.t = (floats[i * CHUNK_VALUES:(i + 1) * CHUNK_VALUES]
                                  for i in range(3))
        blocks = raw[skip + 3 * n:skip + 3 * n + _CHUNK_BLOCKS * 2 * _FLOAT].view(torch.float32)
        self.d, self.inv = blocks[:_CHUNK_BLOCKS], blocks[_CHUNK_BLOCKS:]
        start = skip + 3 * n + _CHUNK_BLOCKS * 2 * _FLOAT
        self.zero = raw[start:start + _CHUNK_BLOCKS].view(torch.bool)


# The largest float32 below 0.5 (0.5 - 2^-25): trunc(m + HALF_DOWN) equals gguf-py's roundf(m)
# for every float32 0 <= m <= 128 (checked exhaustively, see the module doc).
_HALF_DOWN = 0.5 - 2.0 ** -25
_SIGN_BIT = -(1 << 31)  # float32's sign bit, as an int32


def _quantize_chunk(values: Any, out: Any, s: Q8Scratch) -> None:
    """values: a flat float32/float16/bfloat16 tensor of whole blocks; out: its uint8 bytes."""
    import torch

    n = values.numel()
    nb = n // BLOCK_VALUES
    x = s.x[:n].view(nb, BLOCK_VALUES)
    a = s.a[:n].view(nb, BLOCK_VALUES)
    sign = s.t[:n].view(torch.int32).view(nb, BLOCK_VALUES)
    d, inv, zero = s.d[:nb], s.inv[:nb], s.zero[:nb]
    x.copy_(values.view(nb, BLOCK_VALUES))  # exact: bfloat16 and float16 widen to float32
    torch.abs(x, out=a)
    torch.amax(a, dim=1, out=d)
    d.div_(127)
    torch.reciprocal(d, out=inv)
    torch.eq(d, 0, out=zero)
    inv.masked_fill_(zero, 0)
    a.mul_(inv[:, None])  # |y| = |x| * id (IEEE multiplication is symmetric in sign)
    a.add_(_HALF_DOWN)  # truncated by the conversion to int8 below: roundf(|y|)
    torch.bitwise_and(x.view(torch.int32), _SIGN_BIT, out=sign)
    a.view(torch.int32).bitwise_or_(sign)  # x's sign, by its bit: exact, and cheaper
    blocks = out.view(nb, BLOCK_BYTES)
    blocks[:, 2:].view(torch.int8).copy_(a)  # truncates toward zero; |values| <= 127
    blocks[:, :2].view(torch.float16).copy_(d[:, None])  # round to nearest even


def quantize_into(out: Any, values: Any, scratch: Q8Scratch) -> None:
    """out (a uint8 tensor of n_values / 32 * 34 bytes) = Q8_0 of `values` (a contiguous
    float32, float16 or bfloat16 tensor whose rows are whole blocks), CHUNK_VALUES at a time."""
    flat = values.reshape(-1)
    out_flat = out.reshape(-1)
    for start in range(0, flat.numel(), CHUNK_VALUES):
        stop = min(start + CHUNK_VALUES, flat.numel())
        _quantize_chunk(flat[start:stop],
                        out_flat[start // BLOCK_VALUES * BLOCK_BYTES:
                                 stop // BLOCK_VALUES * BLOCK_BYTES], scratch)
