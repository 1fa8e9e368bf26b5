"""The input dtypes as `plan` and the progress line show them: `bfloat16`, or for Meta's FP8
release `float8_e4m3fn (feed-forward of layers 1-124) + bfloat16` (which layers are fp8 is
read off the plan's dequantizing jobs, source/fp8_scales.py says why only those)."""

from __future__ import annotations

import re

from streamconv.planning.jobs import Plan
from streamconv.source.fp8_scales import FP8_DTYPE
from streamconv.system.dtypes import DType

_LAYER_RE = re.compile(r"^layers\.(\d+)\.")


def _layer_label(layer_ids: list[int]) -> str:
    runs: list[str] = []
    start = prev = layer_ids[0]
    for layer_idx in [*layer_ids[1:], None]:
        if layer_idx is not None and layer_idx == prev + 1:
            prev = layer_idx
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if layer_idx is not None:
            start = prev = layer_idx
    return ", ".join(runs)


def describe_dtypes(quantized_layers: list[int], other: DType) -> str:
    """`float8_e4m3fn (feed-forward of layers 1-124) + bfloat16`, or just `bfloat16`."""
    if not quantized_layers:
        return other.name
    return (f"{FP8_DTYPE.name} (feed-forward of layers "
            f"{_layer_label(sorted(set(quantized_layers)))}) + {other.name}")


def layer_of(meta_name: str) -> int:
    match = _LAYER_RE.match(meta_name)
    assert match, meta_name
    return int(match.group(1))


def source_dtype_label(plan: Plan) -> str:
    """The plan's input dtypes, with the layers whose weights are fp8."""
    quantized = [layer_of(job.blocks[0].meta_name) for job in plan.jobs if job.dequantize]
    return describe_dtypes(quantized, plan.src_dtype)
