"""Orchestration: prepared plan -> jobs in bounded slots -> journal -> published output folder.

Knows nothing of the terminal: it reports through the small Progress protocol, which the CLI
implements with rich and tests implement with lists.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from streamconv.errors import Interrupted
from streamconv.pipeline.output_checks import (
    check_gguf_output,
    check_output_dir,
    output_dir_error,
)
from streamconv.pipeline.preparation import ConvertOptions, Prepared, hf_files, prepare
from streamconv.planning.jobs import Job
from streamconv.runtime.executor import JobRunner, run_jobs
from streamconv.runtime.gguf_output import GGUFOutput, gguf_staging
from streamconv.runtime.journal import (
    JOURNAL_NAME,
    Journal,
    conversion_fingerprint,
    covered_jobs,
    journal_started,
    read_journal,
    verified_ranges,
)
from streamconv.runtime.output_folder import STAGING_DIR, OutputFolder
from streamconv.runtime.sampled_crc import sample_crc_of_buffer
from streamconv.source.prefetch import prefetched_bytes
from streamconv.source.rank_reader import RankReader
from streamconv.system.interrupts import DeferredInterrupt, writing_begins
from streamconv.system.memory import peak_rss_bytes

__all__ = ["ConvertOptions", "Prepared", "Progress", "Report", "convert", "prepare"]


@dataclass
class Report:
    input_dir: str
    output_dir: str
    family: str
    instruct: bool
    seconds: float
    bytes_read: int
    bytes_written: int
    peak_rss_bytes: int
    max_ram_bytes: int
    predicted_peak_bytes: int
    resumed_bytes: int = 0
    # Wall-clock times (time.time()): convert() called, first byte range read by a job; with
    # the process's own start they give the fixed costs before the disk is busy.
    started_unix: float = 0.0
    first_read_unix: float | None = None
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Ctrl-C arrived while the finished model was being published (it was finished anyway).
    interrupted_after_complete: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Progress(Protocol):
    def started(self, prepared: Prepared, *, resumed_bytes: int) -> None: ...

    def job_done(self, job: Job, *, bytes_read: int) -> None: ...


class _Silent:
    def started(self, prepared: Prepared, *, resumed_bytes: int) -> None:
        pass

    def job_done(self, job: Job, *, bytes_read: int) -> None:
        pass


def extra_files(prepared: Prepared) -> dict[str, bytes]:
    """config, generation config and tokenizer files, as bytes to publish with the shards."""
    return hf_files(prepared.spec, dtype=prepared.plan.dst_dtype,
                    tokenizer_path=prepared.tokenizer_path)


# Peak memory of building the tokenizer files, measured as VmHWM over the baseline on Meta's real
# files: 55 MB for LLaMA 2's SentencePiece model, 175 MB for LLaMA 3's 128k ranks; with headroom.
_TOKENIZER_PEAK_BYTES = {"sentencepiece": 96 << 20, "tiktoken": 256 << 20}


class _ExtraFiles:
    """extra_files() in a thread while the tensor jobs run, when the budget has room for it
    beside the slots (taking 2-3 s of a conversion off its end); otherwise when asked for."""

    def __init__(self, prepared: Prepared) -> None:
        self._prepared = prepared
        self._result: dict[str, bytes] | None = None
        self._error: BaseException | None = None
        plan = prepared.plan
        need = _TOKENIZER_PEAK_BYTES.get(prepared.tokenizer_kind or "", 0)
        self._thread: threading.Thread | None = None
        if plan.budget_bytes - plan.predicted_peak_bytes >= need:
            self._thread = threading.Thread(target=self._build, name="extra-files", daemon=True)
            self._thread.start()

    def _build(self) -> None:
        try:
            self._result = extra_files(self._prepared)
        except BaseException as e:  # re-raised in the caller's thread by result()
            self._error = e

    def result(self) -> dict[str, bytes]:
        if self._thread is None:
            return extra_files(self._prepared)
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def _jobs_already_done(prepared: Prepared, staging: Path, fingerprint: str) -> set[int]:
    ranges = read_journal(staging / JOURNAL_NAME, fingerprint)
    return covered_jobs(prepared.plan, verified_ranges(staging, prepared.plan, ranges))


def convert(input_dir: Path, output_dir: Path, options: ConvertOptions,
            progress: Progress | None = None) -> Report:
    progress = progress or _Silent()
    start, started_unix = time.monotonic(), time.time()
    first_read_unix: float | None = None
    prepared = prepare(input_dir, options)
    plan = prepared.plan
    to_gguf = prepared.gguf is not None  # then output_dir is the .gguf file's path
    staging = gguf_staging(output_dir) if to_gguf else output_dir / STAGING_DIR
    check = check_gguf_output if to_gguf else check_output_dir
    try:
        check(input_dir, output_dir, prepared, force=options.force, resume=options.resume)
    except OSError as e:  # a read-only parent, a dangling link, a file in the path, a long name
        raise output_dir_error(e, output_dir) from e
    resume = options.resume and journal_started(staging / JOURNAL_NAME)
    if options.resume and staging.exists() and not resume:
        prepared.warnings.append(f"{staging} records nothing as durable (the earlier run "
                                 "stopped before its journal's first line): starting over")
    fingerprint = conversion_fingerprint(prepared.checkpoint, plan)
    done = _jobs_already_done(prepared, staging, fingerprint) if resume else set()
    writing_begins()  # Ctrl-C from here stops cleanly for --resume (system/interrupts.py)
    if not resume:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        (output_dir.parent if to_gguf else output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_dir_error(e, output_dir) from e
    jobs = [job for job in plan.jobs if job.job_idx not in done]
    resumed_bytes = sum(job.out_bytes for job in plan.jobs if job.job_idx in done)
    progress.started(prepared, resumed_bytes=resumed_bytes)
    bytes_read = 0
    late = DeferredInterrupt()
    try:
        paths = prepared.checkpoint.read_paths  # shards, then FP8 scale files if any
        output: OutputFolder | GGUFOutput = (
            GGUFOutput(output_dir, plan.files[0], resume=resume) if to_gguf
            else OutputFolder(output_dir, plan.files, resume=resume))
        with RankReader(paths, cached_prefix=prefetched_bytes(len(paths))) as reader, \
                output as folder:
            with Journal(staging / JOURNAL_NAME, fingerprint, fresh=not resume,
                         sync=folder.sync_shards) as journal:

                crcs: dict[int, int] = {}

                def write(job: Job, data: memoryview) -> None:
                    folder.write_job(job, data)
                    crcs[job.job_idx] = sample_crc_of_buffer(data, job.file_offset)

                def on_done(job: Job, n_read: int) -> None:
                    nonlocal bytes_read
                    bytes_read += n_read
                    journal.record(job.file_idx, job.file_offset, job.out_bytes,
                                   crcs.pop(job.job_idx))
                    progress.job_done(job, bytes_read=n_read)

                runner = JobRunner(plan, reader, write)
                extra_builder = None if to_gguf else _ExtraFiles(prepared)
                try:
                    run_jobs(plan, jobs, runner, on_done)
                except BaseException:
                    with contextlib.suppress(Exception):  # keep what is durable for --resume
                        journal.flush()
                    raise
                journal.flush()
            first_read_unix = reader.first_read_unix
            extra = {} if extra_builder is None else extra_builder.result()
            late.start()  # once publishing starts it finishes (system/interrupts.py)
            if options.force and not to_gguf:
                _remove_stale_outputs(output_dir, prepared)
            folder.fill(extra)
            folder.sync()
            published = folder.publish()
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: nothing was published to {output_dir}; run the same "
                          "command with --resume to continue where it stopped") from None
    finally:
        late.stop()
    return Report(
        input_dir=str(input_dir), output_dir=str(output_dir), family=prepared.spec.label,
        instruct=prepared.spec.instruct, seconds=time.monotonic() - start, bytes_read=bytes_read,
        bytes_written=sum(p.stat().st_size for p in published),
        peak_rss_bytes=peak_rss_bytes(), max_ram_bytes=plan.budget_bytes,
        predicted_peak_bytes=plan.predicted_peak_bytes, resumed_bytes=resumed_bytes,
        started_unix=started_unix, first_read_unix=first_read_unix,
        files=[p.name for p in published], warnings=prepared.warnings,
        interrupted_after_complete=late.received)


def _remove_stale_outputs(output_dir: Path, prepared: Prepared) -> None:
    """With --force, shards of an earlier conversion with another shard count must go."""
    keep = {f.name for f in prepared.plan.files}
    for path in output_dir.glob("model*.safetensors"):
        if path.name not in keep:
            os.remove(path)
