"""How one output tensor's rows are stored: the dtype the copy blocks produce, and what follows.

A Hugging Face shard stores every tensor in one dtype, produced directly by the copy blocks (a
copy, a cast, a permute, FP8 dequantization). A GGUF file mixes types (norms in F32, weights in
BF16, F16 or Q8_0), and some need a second step after the blocks have filled the job's rows:
Q8_0 quantizes whole rows of values, and FP8 weights are first dequantized into the Hugging Face
dtype and only then cast, so that they match llama.cpp's conversion of the Hugging Face folder
(which holds them in that dtype). That second step works from a `values` area of the job's slot
into its output rows; the planner counts both.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamconv.system.dtypes import DType

# Q8_0 (ggml's block_q8_0; gguf-py gguf/constants.py GGML_QUANT_SIZES): 32 values per block,
# stored as an fp16 scale and 32 int8.
Q8_0_BLOCK_VALUES = 32
Q8_0_BLOCK_BYTES = 2 + Q8_0_BLOCK_VALUES
# The quantizer's values per step (runtime/q8_0.py): 256 KiB per float32 work array, so a
# step's arrays stay in a core's L2 cache and torch's per-call cost is small against the work.
Q8_0_CHUNK_VALUES = 1 << 16
_CHUNK_BLOCKS = Q8_0_CHUNK_VALUES // Q8_0_BLOCK_VALUES
# Its scratch: three float32 arrays of a chunk, two float32 and one bool per block, alignment.
Q8_0_SCRATCH_BYTES = 3 * Q8_0_CHUNK_VALUES * 4 + _CHUNK_BLOCKS * 9 + 64


def q8_0_row_bytes(n_cols: int) -> int:
    """Stored bytes of one Q8_0 row of n_cols values (a multiple of Q8_0_BLOCK_VALUES)."""
    return n_cols // Q8_0_BLOCK_VALUES * Q8_0_BLOCK_BYTES


def can_quantize_q8_0(n_cols: int) -> bool:
    """gguf-py's rule (`__Quant.can_quantize`): rows of whole blocks; otherwise llama.cpp's
    converter stores that tensor in F16 instead."""
    return n_cols % Q8_0_BLOCK_VALUES == 0


@dataclass(frozen=True)
class Encoding:
    values: DType  # what the copy blocks produce
    stored: DType | None = None  # cast to this afterwards (None: stored as produced)
    quantized: bool = False  # Q8_0 of the values (runtime/q8_0.py)

    @property
    def two_stage(self) -> bool:
        """Whether the rows pass through a values area before the output rows."""
        return self.stored is not None or self.quantized

    def row_bytes(self, n_cols: int) -> int:
        """Stored bytes of one row."""
        if self.quantized:
            return q8_0_row_bytes(n_cols)
        return n_cols * (self.stored or self.values).itemsize

    def values_row_bytes(self, n_cols: int) -> int:
        """Bytes of one row in the values area (0 when there is none)."""
        return n_cols * self.values.itemsize if self.two_stage else 0

    @property
    def scratch_bytes(self) -> int:
        """Working memory of the second step beyond the values area."""
        return Q8_0_SCRATCH_BYTES if self.quantized else 0
