"""`streamconv plan --json`: the whole plan as data, everything the executor will do.

The tables of `plan` (plan_report.py) summarise; this prints every job with its copy blocks and
the exact input byte ranges each one reads (file, offset, length), where its rows go, how they
are transformed and cast, and the memory schedule, so that a conversion can be checked or
replayed without reading the code (issue 21, "a plan that is data"). The executor reads those
ranges and no others (tests/test_plan_json.py records its reads to show it).
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from streamconv.pipeline.preparation import Prepared
from streamconv.planning.jobs import Job, Plan
from streamconv.planning.layout import ByteRange, CopyBlock
from streamconv.planning.output_files import OutputFile

JSON_FORMAT_VERSION = 1


def _range(plan: Plan, source: ByteRange | None) -> dict[str, Any] | None:
    if source is None:
        return None
    return {"file": str(plan.read_paths[source.file_idx]), "file_idx": source.file_idx,
            "offset": source.offset_bytes, "length": source.n_bytes}


def _block(plan: Plan, block: CopyBlock) -> dict[str, Any]:
    return {
        "meta_name": block.meta_name,
        "rank_idx": block.rank_idx,
        "read": _range(plan, block.read),
        "scale_read": _range(plan, block.scale_read),
        "src_rows": [block.src_row_start, block.src_row_start + block.n_rows],
        "dst_rows": [block.dst_row_start, block.dst_row_start + block.n_rows],
        "dst_cols": [block.dst_col_start, block.dst_col_start + block.n_cols],
        "transpose": block.transpose,
    }


def _cast(job: Job) -> str | None:
    """What happens to the values between the rank file and the output, None for a copy."""
    enc = job.encoding
    steps = [job.src_dtype.name]
    if job.dequantize:
        steps[0] += " * scales"
    if enc.values != job.src_dtype or job.dequantize:
        steps.append(enc.values.name)
    if enc.stored is not None:
        steps.append(enc.stored.name)
    if enc.quantized:
        steps.append("q8_0")
    return " -> ".join(steps) if len(steps) > 1 else None


def _job(plan: Plan, job: Job) -> dict[str, Any]:
    return {
        "job_idx": job.job_idx,
        "hf_name": job.hf_name,
        "destination": {"file": plan.files[job.file_idx].name, "file_idx": job.file_idx,
                        "offset": job.file_offset, "length": job.out_bytes,
                        "rows": [job.row_start, job.row_stop], "n_cols": job.n_cols},
        "transform": ({"rotary_permute_head_dim": job.rotary_head_dim}
                      if job.rotary_head_dim else None),
        "cast": _cast(job),
        # The rows start as zeros and the blocks fill part of them (a computed tensor).
        "zero_fill": job.zero_fill,
        "blocks": [_block(plan, block) for block in job.blocks],
    }


def _file(out_file: OutputFile) -> dict[str, Any]:
    return {"name": out_file.name, "bytes": out_file.total_bytes,
            "header_bytes": out_file.data_start,
            "tensors": [{"hf_name": t.layout.hf_name, "offset": out_file.data_start
                         + t.data_offset, "length": t.nbytes} for t in out_file.tensors]}


def plan_dict(prepared: Prepared) -> dict[str, Any]:
    """The plan of a prepared conversion as plain JSON-able data."""
    plan = prepared.plan
    return {
        "format_version": JSON_FORMAT_VERSION,
        "input_dir": str(prepared.input_dir),
        "input_files": [str(path) for path in plan.read_paths],
        "family": prepared.spec.label,
        "output_format": "gguf" if prepared.gguf is not None else "safetensors",
        "output_files": [_file(f) for f in plan.files],
        "memory": {"budget_bytes": plan.budget_bytes, "baseline_bytes": plan.baseline_bytes,
                   "depth": plan.depth, "slot_bytes": plan.slot_bytes,
                   "predicted_peak_bytes": plan.predicted_peak_bytes,
                   "min_budget_bytes": plan.min_budget_bytes},
        "read_bytes": plan.read_bytes,
        "output_bytes": plan.output_bytes,
        "jobs": [_job(plan, job) for job in plan.jobs],
        "warnings": list(prepared.warnings),
    }


def print_plan_json(console: Console, prepared: Prepared) -> None:
    """Plain text on the console (no markup, highlighting or wrapping), parseable as JSON."""
    console.out(json.dumps(plan_dict(prepared), indent=1), highlight=False)
