"""The resume journal: which byte ranges of the staged shards are durable, with a checksum.

OUT/.streamconv-partial/journal.jsonl. The first line identifies the conversion: the input
(shard names, sizes and the CRC32 of every zip member, straight from each archive's directory, so
no data is read) and the output layout (every file's name and header, hence every tensor's dtype,
shape and offset). Each later line lists the output ranges (file, offset, length, sampled CRC32:
see sampled_crc.py) of jobs
completed since the previous line, appended only after the shard files were fsynced, so a line
means those bytes survive a crash or power loss. Ranges rather than job numbers, because how the
budget cuts tensors into jobs depends on --max-ram and on the process's own size, which may
differ on resume. A torn last line (killed while appending) is ignored: its jobs are redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from streamconv.errors import OutputError
from streamconv.planning.jobs import Plan
from streamconv.runtime.sampled_crc import sample_crc
from streamconv.source.tensor_index import Checkpoint

JOURNAL_NAME = "journal.jsonl"
COMMIT_BYTES = 256 << 20
COMMIT_SECONDS = 5.0


def conversion_fingerprint(checkpoint: Checkpoint, plan: Plan) -> str:
    digest = hashlib.sha256()
    for path in checkpoint.read_paths:  # rank files, then FP8 scale files (if any)
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                digest.update(f"{info.filename}:{info.CRC}:{info.file_size}".encode())
    for out_file in plan.files:
        digest.update(out_file.name.encode() + out_file.header)
    return digest.hexdigest()


def journal_started(path: Path) -> bool:
    """Whether the journal's first line (which conversion it belongs to) is complete.

    A run killed after the staging folder was created but before that line was durable leaves
    no journal, an empty one or a torn line: nothing in the folder was recorded as durable, so
    there is nothing to resume and the run starts over."""
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError:
        return False
    try:
        header = json.loads(first) if first.endswith(b"\n") else None
    except ValueError:
        return False
    return isinstance(header, dict) and "fingerprint" in header


Range = tuple[int, int, int, int]  # file_idx, offset, n_bytes, sampled crc32


def read_journal(path: Path, fingerprint: str) -> list[Range]:
    """The ranges recorded as durable; refuses another conversion's journal."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("fingerprint") != fingerprint:
        raise OutputError(f"{path} belongs to a different input or different options (--dtype, "
                          "--max-shard-size); rerun with the original options, or pass --force "
                          "instead of --resume to start over")
    done: list[Range] = []
    for line in lines[1:]:
        try:
            entries = json.loads(line)["ranges"]
            done += [(int(f), int(o), int(n), int(c)) for f, o, n, c in entries]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            break  # torn tail from a kill during the append: redo those jobs
    return done


class Journal:
    """Appends durable range records; the fsync and the append run on a background thread.

    Syncing in the job loop would stall reading while the disk catches up with writes; on its
    own thread the fsync overlaps the next jobs, which is what keeps resumability nearly free.
    Records are handed over only after the jobs completed, and appended only after the fsync
    that covers them returned.
    """

    def __init__(self, path: Path, fingerprint: str, *, fresh: bool,
                 sync: Callable[[], None]) -> None:
        self.path = path
        self._sync = sync
        self._pending: list[Range] = []
        self._pending_bytes = 0
        self._last_commit = time.monotonic()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._inflight: Future[None] | None = None
        if fresh:
            self._append({"fingerprint": fingerprint, "version": 1})

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self._worker.shutdown(wait=True)

    def _append(self, record: dict[str, object]) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, separators=(",", ":")) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise OutputError(f"cannot write {self.path} ({e.strerror}); was the output folder "
                              "moved or deleted during the conversion? run again with --force") \
                from e

    def _commit(self, batch: list[Range]) -> None:
        self._sync()
        if batch:
            self._append({"ranges": batch})

    def record(self, file_idx: int, offset: int, n_bytes: int, crc: int) -> None:
        """A job's bytes are written (not yet durable); commit soon if enough has piled up."""
        self._pending.append((file_idx, offset, n_bytes, crc))
        self._pending_bytes += n_bytes
        if self._inflight is not None:
            if not self._inflight.done():
                return
            self._inflight.result()  # a failed fsync surfaces here
            self._inflight = None
        if self._pending_bytes >= COMMIT_BYTES or (
                time.monotonic() - self._last_commit >= COMMIT_SECONDS):
            batch, self._pending, self._pending_bytes = self._pending, [], 0
            self._last_commit = time.monotonic()
            self._inflight = self._worker.submit(self._commit, batch)

    def flush(self) -> None:
        """Wait for the background commit, then make everything recorded durable."""
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            inflight.result()
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        self._commit(batch)


def verified_ranges(staging: Path, plan: Plan, ranges: list[Range]) -> list[Range]:
    """The recorded ranges whose bytes in the staged files still match their sampled CRC."""
    by_file: dict[int, list[Range]] = {}
    for entry in ranges:
        if 0 <= entry[0] < len(plan.files):
            by_file.setdefault(entry[0], []).append(entry)
    good: list[Range] = []
    for file_idx, entries in by_file.items():
        path = staging / plan.files[file_idx].name
        if not path.is_file() or path.stat().st_size != plan.files[file_idx].total_bytes:
            continue
        with open(path, "rb") as f:

            def read(position: int, size: int) -> bytes:
                f.seek(position)
                return f.read(size)

            good += [entry for entry in sorted(set(entries))
                     if sample_crc(read, entry[1], entry[2]) == entry[3]]
    return good


def covered_jobs(plan: Plan, ranges: list[Range]) -> set[int]:
    """Jobs whose whole output range lies inside durable, verified ranges."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for file_idx, offset, n_bytes, _crc in sorted(ranges):
        merged = spans.setdefault(file_idx, [])
        if merged and offset <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], offset + n_bytes))
        else:
            merged.append((offset, offset + n_bytes))
    done = set()
    for job in plan.jobs:
        for start, end in spans.get(job.file_idx, []):
            if start <= job.file_offset and job.file_offset + job.out_bytes <= end:
                done.add(job.job_idx)
                break
    return done
