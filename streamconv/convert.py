"""Orchestration: input folder -> plan -> jobs in bounded slots -> published output folder.

Knows nothing of the terminal: it reports through the small Progress protocol, which the CLI
implements with rich and tests implement with lists.
"""

from __future__ import annotations

import os
import queue
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .checkpoint import Checkpoint, ShardReader, open_checkpoint
from .detect import ModelSpec, detect_model
from .errors import Interrupted, OutputError, TokenizerError
from .family import Family
from .hf_config import config_dict, generation_config_dict, to_json_bytes
from .layout import TensorLayout, hf_layouts, permute_rotary_into
from .memory import current_rss_bytes, default_max_ram_bytes, format_size, peak_rss_bytes
from .params import read_params
from .plan import Job, Plan, needs_stage, plan_conversion, slot_layout
from .writer import STAGING_DIR, ShardWriter

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_MAX_SHARD_BYTES = 5 << 30
_DISK_MARGIN_BYTES = 64 << 20


@dataclass(frozen=True)
class ConvertOptions:
    max_ram_bytes: int | None = None  # None: memory.default_max_ram_bytes()
    dtype: str = "auto"
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    llama_version: str = "auto"
    force: bool = False
    instruct: bool = False
    tokenizer: bool = True


@dataclass(frozen=True)
class Prepared:
    """Everything known before writing: what `streamconv plan` prints."""

    input_dir: Path
    checkpoint: Checkpoint
    spec: ModelSpec
    layouts: list[TensorLayout]
    plan: Plan
    tokenizer_path: Path | None
    tokenizer_kind: str | None


@dataclass
class Report:
    input_dir: str
    output_dir: str
    family: str
    seconds: float
    bytes_read: int
    bytes_written: int
    peak_rss_bytes: int
    max_ram_bytes: int
    predicted_peak_bytes: int
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Progress(Protocol):
    def started(self, prepared: Prepared) -> None: ...

    def job_done(self, job: Job, *, bytes_read: int) -> None: ...


class _Silent:
    def started(self, prepared: Prepared) -> None:
        pass

    def job_done(self, job: Job, *, bytes_read: int) -> None:
        pass


def find_tokenizer(input_dir: Path) -> Path | None:
    """tokenizer.model next to params.json, or one folder up, where Meta's LLaMA 2 download
    keeps the one tokenizer shared by all sizes."""
    for candidate in (input_dir / "tokenizer.model", input_dir.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    return None


def prepare(input_dir: Path, options: ConvertOptions) -> Prepared:
    """Read and check everything, decide the plan; writes nothing."""
    params = read_params(input_dir)
    checkpoint = open_checkpoint(input_dir)
    tokenizer_path = find_tokenizer(input_dir) if options.tokenizer else None
    if options.tokenizer and tokenizer_path is None:
        raise TokenizerError(f"no tokenizer.model in {input_dir} or its parent folder; copy "
                             "Meta's tokenizer.model next to params.json, or pass --no-tokenizer "
                             "to convert the weights only")
    kind = None
    if tokenizer_path is not None:
        from .tokenizer import detect_tokenizer_kind

        kind = detect_tokenizer_kind(tokenizer_path)
    override = None if options.llama_version == "auto" else Family(options.llama_version)
    spec = detect_model(params, checkpoint, family_override=override, tokenizer_kind=kind)
    if tokenizer_path is not None:
        _check_tokenizer_vocab(tokenizer_path, spec)
    layouts = hf_layouts(spec)
    dst_dtype = spec.dtype if options.dtype == "auto" else DTYPES[options.dtype]
    budget = options.max_ram_bytes or default_max_ram_bytes()
    plan = plan_conversion(spec, layouts, dst_dtype=dst_dtype, budget_bytes=budget,
                           baseline_bytes=current_rss_bytes(),
                           max_shard_bytes=options.max_shard_bytes)
    return Prepared(input_dir, checkpoint, spec, layouts, plan, tokenizer_path, kind)


def _check_tokenizer_vocab(path: Path, spec: ModelSpec) -> None:
    from .tokenizer import tokenizer_vocab_size

    n_tokens = tokenizer_vocab_size(path, family=spec.family)
    if n_tokens != spec.vocab_size:
        raise TokenizerError(f"{path} has {n_tokens} tokens but the model's embedding has "
                             f"{spec.vocab_size} rows; use the tokenizer.model that came with "
                             "this checkpoint")


def _check_output_dir(input_dir: Path, output_dir: Path, prepared: Prepared, *,
                      force: bool) -> None:
    src, dst = input_dir.resolve(), output_dir.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise OutputError(f"output folder {output_dir} and input folder {input_dir} overlap; "
                          "choose an output folder outside the input")
    if dst.exists() and not dst.is_dir():
        raise OutputError(f"output {output_dir} exists and is not a folder; choose another path")
    leftovers = [p for p in dst.iterdir() if p.name != STAGING_DIR] if dst.exists() else []
    if leftovers and not force:
        raise OutputError(f"output folder {output_dir} is not empty ({leftovers[0].name} and "
                          f"{len(leftovers) - 1} more); choose an empty folder or pass --force "
                          "to overwrite")
    probe = dst
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    needed = prepared.plan.output_bytes + _DISK_MARGIN_BYTES
    if free < needed:
        raise OutputError(f"not enough disk space for {output_dir}: the output needs "
                          f"{format_size(needed)}, {format_size(free)} is free; free some space "
                          "or choose another output folder")


def _extra_files(prepared: Prepared, staging: Path, options: ConvertOptions) -> dict[str, bytes]:
    """config, generation config and tokenizer files, as bytes to publish with the shards."""
    spec, dtype = prepared.spec, prepared.plan.dst_dtype
    files = {
        "config.json": to_json_bytes(config_dict(spec, dtype=dtype, instruct=options.instruct)),
        "generation_config.json": to_json_bytes(
            generation_config_dict(spec, instruct=options.instruct)),
    }
    if prepared.tokenizer_path is not None:
        from .tokenizer import write_tokenizer_files

        tok_dir = staging / "tokenizer"
        tok_dir.mkdir(exist_ok=True)
        names = write_tokenizer_files(prepared.tokenizer_path, tok_dir, family=spec.family,
                                      instruct=options.instruct,
                                      model_max_length=spec.max_position_embeddings)
        for name in names:
            files[name] = (tok_dir / name).read_bytes()
        shutil.rmtree(tok_dir)
    return files


def _buffer(raw: torch.Tensor) -> memoryview:
    """A writable view of a uint8 tensor's bytes, for positioned reads and writes (no copy)."""
    array: Any = raw.numpy()
    return memoryview(array)


class _JobRunner:
    """Runs one job in one slot: shard bytes in, output bytes out, nothing else allocated."""

    def __init__(self, prepared: Prepared, reader: ShardReader, writer: ShardWriter) -> None:
        self.refs = prepared.checkpoint.tensors
        self.plan = prepared.plan
        self.reader = reader
        self.writer = writer
        self.src_item = torch.empty((), dtype=self.plan.src_dtype).element_size()
        self.dst_item = torch.empty((), dtype=self.plan.dst_dtype).element_size()

    def run(self, job: Job, slot: torch.Tensor) -> int:
        plan, same = self.plan, self.plan.src_dtype == self.plan.dst_dtype
        out_offset, stage_offset = slot_layout(job)
        out_raw = slot[out_offset:out_offset + job.out_bytes]
        out = out_raw.view(plan.dst_dtype).view(job.row_stop - job.row_start, job.n_cols)
        row_bytes = job.n_cols * self.dst_item
        bytes_read = 0
        for block in job.blocks:
            ref = self.refs[block.shard_idx][block.meta_name]
            src_row_bytes = ref.shape[-1] * self.src_item
            file_offset = ref.offset_bytes + block.src_row_start * src_row_bytes
            n_bytes = block.n_rows * block.n_cols * self.src_item
            first = block.dst_row_start - job.row_start
            if not needs_stage(block, n_cols=job.n_cols, rotary=job.rotary_head_dim,
                               same_dtype=same):
                target = out_raw[first * row_bytes:(first + block.n_rows) * row_bytes]
                self.reader.read_into(block.shard_idx, file_offset, _buffer(target))
            else:
                stage_raw = slot[stage_offset:stage_offset + n_bytes]
                self.reader.read_into(block.shard_idx, file_offset,
                                      _buffer(stage_raw))
                src = stage_raw.view(plan.src_dtype).view(block.n_rows, block.n_cols)
                dst = out[first:first + block.n_rows,
                          block.dst_col_start:block.dst_col_start + block.n_cols]
                if job.rotary_head_dim:
                    permute_rotary_into(dst, src, job.rotary_head_dim)
                else:
                    dst.copy_(src)
            bytes_read += n_bytes
        self.writer.write(job.file_idx, job.file_offset, _buffer(out_raw))
        return bytes_read


def _run_jobs(prepared: Prepared, runner: _JobRunner, progress: Progress) -> int:
    """Feed jobs to `depth` threads; a job waits for a free slot, so memory stays bounded."""
    plan = prepared.plan
    free: queue.Queue[torch.Tensor] = queue.Queue()
    for _ in range(plan.depth):
        free.put(torch.empty(plan.slot_bytes, dtype=torch.uint8))
    pending: deque[tuple[Job, Future[int]]] = deque()
    total_read = 0

    def task(job: Job, slot: torch.Tensor) -> int:
        try:
            return runner.run(job, slot)
        finally:
            free.put(slot)

    def reap(block: bool) -> None:
        nonlocal total_read
        while pending and (block or pending[0][1].done()):
            job, future = pending.popleft()
            n = future.result()  # re-raises a worker's error here, in job order
            total_read += n
            progress.job_done(job, bytes_read=n)

    with ThreadPoolExecutor(max_workers=plan.depth, thread_name_prefix="job") as pool:
        try:
            for job in plan.jobs:
                while True:
                    reap(block=False)
                    try:
                        slot = free.get(timeout=0.1)
                        break
                    except queue.Empty:
                        continue
                pending.append((job, pool.submit(task, job, slot)))
            reap(block=True)
        except BaseException:
            for _job, future in pending:
                future.cancel()
            raise
    return total_read


def convert(input_dir: Path, output_dir: Path, options: ConvertOptions,
            progress: Progress | None = None) -> Report:
    progress = progress or _Silent()
    start = time.monotonic()
    prepared = prepare(input_dir, options)
    _check_output_dir(input_dir, output_dir, prepared, force=options.force)
    output_dir.mkdir(parents=True, exist_ok=True)
    progress.started(prepared)
    try:
        with ShardReader(prepared.checkpoint.shard_paths) as reader, \
                ShardWriter(output_dir, prepared.plan.files) as writer:
            extra = _extra_files(prepared, writer.staging, options)
            bytes_read = _run_jobs(prepared, _JobRunner(prepared, reader, writer), progress)
            if options.force:
                _remove_stale_outputs(output_dir, prepared)
            published = writer.publish(extra)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: nothing was published to {output_dir} (partial work is "
                          f"in {output_dir / STAGING_DIR}); run the same command again with "
                          "--force to start over") from None
    return Report(
        input_dir=str(input_dir), output_dir=str(output_dir), family=prepared.spec.family.label,
        seconds=time.monotonic() - start, bytes_read=bytes_read,
        bytes_written=sum(p.stat().st_size for p in published),
        peak_rss_bytes=peak_rss_bytes(), max_ram_bytes=prepared.plan.budget_bytes,
        predicted_peak_bytes=prepared.plan.predicted_peak_bytes,
        files=[p.name for p in published])


def _remove_stale_outputs(output_dir: Path, prepared: Prepared) -> None:
    """With --force, shards of an earlier conversion with another shard count must go."""
    keep = {f.name for f in prepared.plan.files}
    for path in output_dir.glob("model*.safetensors"):
        if path.name not in keep:
            os.remove(path)
