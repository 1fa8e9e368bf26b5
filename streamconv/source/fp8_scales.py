"""Meta's FP8 release of Llama 3.1 405B: which weights are fp8, where their scales are, and how
to turn them back into floats.

Facts (docs/meta_formats.md section 1, with its sources):
- Meta's loader (llama-models `models/llama3/quantization/loader.py`,
  convert_to_fp8_quantized_model) quantizes only `layers.{i}.feed_forward.w1/w3/w2.weight`, for
  i = 1 .. n_layers-2; everything else is bf16. The fp8 bytes are `torch.float8_e4m3fn`.
- Each rank r has `fp8_scales_{r}.pt`, a dict keyed `f"{layer_id}_feed_forward.{w}_{r}"` of fp32
  vectors, one value per output row of that rank's tensor, produced by fbgemm's
  quantize_fp8_per_row (the stored value is the dequantization multiplier). Whether the file
  holds [N] or [N, 1] is not public, so both are accepted.
- Dequantization: W = (W_fp8.float() * scale[:, None]).to(bfloat16), what fbgemm's
  f8f8bf16_rowwise computes per weight row.
- w2 is split across ranks on its input dim and every rank has its own scale vector, so a rank's
  block must be dequantized with that rank's scales before the blocks are put side by side; the
  planner's copy blocks are per rank, so the executor does exactly that.

Why bf16 and not Hugging Face's fbgemm_fp8 layout: transformers refuses fbgemm_fp8 without a CUDA
(or XPU) GPU of compute capability >= 9.0 (quantizer_fbgemm_fp8.py validate_environment), so that
output could neither be tested here nor used by anyone on CPU (docs/meta_formats.md 1.7).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from streamconv.errors import CheckpointError
from streamconv.source.tensor_index import Checkpoint, TensorRef
from streamconv.system import dtypes
from streamconv.system.dtypes import DType

FP8_DTYPE = dtypes.FLOAT8_E4M3FN
SCALE_DTYPE = dtypes.FLOAT32
_FLOAT_DTYPES = dtypes.FLOATS
# A per-layer weight: the scale key is made of its layer index and the part after it.
_LAYER_WEIGHT_RE = re.compile(r"^layers\.(\d+)\.(.+)\.weight$")


@dataclass(frozen=True)
class ScaleLayout:
    """Where an fp8 tensor's scales are in its rank's fp8_scales_N.pt, and what each scales.

    405B: one fp32 per stored row (group_rows 1). Llama 4's FP8 Maverick: Meta's loader
    transposes each expert's (D, F) block before quantizing it per row, so in the stored
    layout one fp32 vector over the columns scales every row of one expert (group_rows = the
    expert's stored rows, per_column). Both are W = fp8.float() * scale, rounded once.
    """

    key: str  # "{rank}" stands for the rank
    group_rows: int = 1
    per_column: bool = False

    def key_for(self, rank: int) -> str:
        return self.key.format(rank=rank)

    def groups(self, src_row_start: int, n_rows: int) -> tuple[int, int]:
        """(first group, number of groups) of stored rows [src_row_start, +n_rows)."""
        first = src_row_start // self.group_rows
        return first, (src_row_start + n_rows - 1) // self.group_rows - first + 1

    def read_bytes(self, src_row_start: int, n_rows: int, n_cols: int) -> int:
        """Scale bytes a block of those rows needs."""
        width = n_cols if self.per_column else 1
        return self.groups(src_row_start, n_rows)[1] * width * SCALE_DTYPE.itemsize


def row_scale_layout(meta_name: str) -> ScaleLayout | None:
    """405B: `layers.7.feed_forward.w2.weight` of rank 3 -> key `7_feed_forward.w2_3` (Meta's
    loader), one value per stored row."""
    match = _LAYER_WEIGHT_RE.match(meta_name)
    if not match:
        return None
    return ScaleLayout(f"{match.group(1)}_{match.group(2)}_{{rank}}")


def _name(dtype: DType) -> str:
    return dtype.name


def _check_scale(ckpt: Checkpoint, ref: TensorRef, layout: ScaleLayout) -> None:
    rank = ref.rank_idx
    key = layout.key_for(rank)
    scale_path = ckpt.scale_paths[rank]
    scale = ckpt.scales[rank].get(key)
    if scale is None:
        raise CheckpointError(f"{scale_path} has no scale {key!r} for {ref.meta_name} of "
                              f"{ref.path.name}; the scale file belongs to another download: "
                              "fetch fp8_scales and consolidated files again together")
    n_rows = ref.shape[0] if ref.shape else 0
    if layout.per_column:
        n_groups, width = n_rows // layout.group_rows, ref.shape[-1]
        fits = scale.nbytes == n_groups * width * SCALE_DTYPE.itemsize and bool(scale.shape) \
            and scale.shape[0] in (n_groups, n_groups * width)
        needs = f"one value per column for each of {n_groups} experts ({n_groups}x{width})"
    else:
        fits = scale.shape in ((n_rows,), (n_rows, 1))
        needs = f"one value per row ({n_rows})"
    if scale.dtype != SCALE_DTYPE or not fits:
        got = "x".join(map(str, scale.shape))
        raise CheckpointError(f"scale {key!r} in {scale_path} is {_name(scale.dtype)} of shape "
                              f"{got} but {ref.meta_name} in {ref.path.name} needs float32 with "
                              f"{needs}; the scale file belongs to another download: fetch it "
                              "again")


def quantized_names(ckpt: Checkpoint, scale_layout: Callable[[str], ScaleLayout | None]
                    = row_scale_layout) -> dict[str, ScaleLayout]:
    """Meta names stored as fp8 with their scales, after checking them; empty for other
    releases.

    Tensors of a dtype that is not a plain float are fp8 candidates when `scale_layout` knows
    where their scales are (Meta quantized only feed-forward weights; a scale must exist for
    each); anything else with another dtype is left to detect's "one float dtype" check.
    """
    names: dict[str, ScaleLayout] = {}
    for refs in ckpt.tensors:
        for ref in refs.values():
            layout = scale_layout(ref.meta_name)
            if layout is None or ref.dtype in _FLOAT_DTYPES:
                continue
            where = f"{ref.meta_name} in {ref.path}"
            if ref.dtype != FP8_DTYPE:
                raise CheckpointError(f"{where} is {_name(ref.dtype)}, but Meta's FP8 release "
                                      f"stores {_name(FP8_DTYPE)}; use Meta's original file")
            if not ckpt.scale_paths:
                raise CheckpointError(f"{where} is {_name(FP8_DTYPE)} but {ckpt.input_dir} has "
                                      "no fp8_scales_N.pt files; copy Meta's fp8_scales_0.pt ... "
                                      "next to the consolidated files")
            _check_scale(ckpt, ref, layout)
            names[ref.meta_name] = layout
    for meta_name in names:
        dtypes = {refs[meta_name].dtype for refs in ckpt.tensors if meta_name in refs}
        if len(dtypes) > 1:
            raise CheckpointError(f"{meta_name} is fp8 in some consolidated files and not in "
                                  "others; the files come from different downloads: fetch them "
                                  "again together")
    return names
