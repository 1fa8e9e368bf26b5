"""Element types as plain data, so that nothing before the first byte read imports torch.

`import torch` takes 1-2 s of a conversion's start (issue 13: the 2-3 GiB class spent more time
importing torch than copying), and most conversions never need it: a checkpoint converted to
its own dtype is data movement only (plain copies, rows placed side by side, the rotary
permute, a transpose), which numpy does on unsigned-integer views of the same width. torch is
imported where arithmetic happens: a cast to another dtype, or FP8 dequantization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DType:
    name: str  # torch's attribute name: "bfloat16"
    itemsize: int
    safetensors: str = ""  # the safetensors header's name, for output dtypes

    def __str__(self) -> str:
        return self.name

    @property
    def torch(self) -> Any:
        """The torch.dtype (imports torch)."""
        import torch

        return getattr(torch, self.name)

    @property
    def same_width_uint(self) -> str:
        """The numpy unsigned type of this width, for moving elements without arithmetic."""
        return {1: "u1", 2: "u2", 4: "u4", 8: "u8"}[self.itemsize]


FLOAT32 = DType("float32", 4, "F32")
FLOAT16 = DType("float16", 2, "F16")
BFLOAT16 = DType("bfloat16", 2, "BF16")
FLOAT8_E4M3FN = DType("float8_e4m3fn", 1)
# Read from files only to be named in errors (no release stores them).
OTHER_FLOAT8 = tuple(DType(n, 1) for n in ("float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"))
COMPLEX = (DType("complex64", 8), DType("complex128", 16))
FLOAT64 = DType("float64", 8)
INT64, INT32, INT16 = DType("int64", 8), DType("int32", 4), DType("int16", 2)
INT8, UINT8, BOOL = DType("int8", 1), DType("uint8", 1), DType("bool", 1)

FLOATS = (FLOAT32, FLOAT16, BFLOAT16)
BY_NAME = {d.name: d for d in (FLOAT32, FLOAT16, BFLOAT16, FLOAT8_E4M3FN, FLOAT64, INT64, INT32,
                               INT16, INT8, UINT8, BOOL, *OTHER_FLOAT8, *COMPLEX)}
