"""The output folder's lifecycle: staged, filled in place, then published in one step.

Everything is written inside OUT/.streamconv-partial/ first. Shard files are created at their
final size with their headers, so a full disk fails at the start, not at minute 50, and every job
writes its bytes at a known offset in any order. Only when every byte is on disk (fsync) are the
files moved into OUT, the index last: until then OUT holds nothing that transformers would load
as a model.

Job bytes that are block-aligned (offset, length and buffer address; real models' are) go through
a second descriptor opened with O_DIRECT, straight from the job's buffer to the disk (a 4 GB
write here: 3.4-10.9 s of system time through the page cache, 0.6 s direct; see direct_io.py).
Anything unaligned, and file systems without O_DIRECT (tmpfs), use the ordinary descriptor; the
kernel keeps the two coherent.
"""

from __future__ import annotations

import enum
import errno
import json
import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path

from .direct_io import direct_span, is_aligned, open_direct
from .errors import OutputError
from .memory import format_size
from .plan import Job
from .shards import INDEX_NAME, OutputFile, index_json

STAGING_DIR = ".streamconv-partial"


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    DONE = "done"
    CLOSED = "closed"


def _disk_error(e: OSError, path: Path, needed: int) -> OutputError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(path.parent).free
        return OutputError(f"disk full while writing {path} ({format_size(needed)} needed, "
                           f"{format_size(free)} free); free some space and run the same "
                           "command with --resume")
    return OutputError(f"cannot write {path} ({e.strerror}); check the output folder's "
                       "permissions and free space")


def _datasync(fd: int) -> None:
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # macOS, Windows
        os.fsync(fd)


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":
        return  # Windows cannot open a directory for fsync; renames there are journaled
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardWriter:
    """Creates, fills and publishes the output shards; refuses calls out of order."""

    def __init__(self, out_dir: Path, files: tuple[OutputFile, ...], *,
                 resume: bool = False) -> None:
        self.out_dir = out_dir
        self.resume = resume
        self.staging = out_dir / STAGING_DIR
        self.files = files
        self._fds: list[int] = []
        self._direct_fds: list[int | None] = []
        self._refused: list[int] = []
        self.direct_bytes = 0  # written through O_DIRECT, for tests and reports
        self._locks = [threading.Lock() for _ in files]
        self._state = _State.NEW

    def __enter__(self) -> ShardWriter:
        if self._state is not _State.NEW:
            raise AssertionError("ShardWriter entered twice")
        self.staging.mkdir(parents=True, exist_ok=True)
        self._state = _State.OPEN
        try:
            for out_file in self.files:
                self._fds.append(self._create(out_file))
                self._direct_fds.append(open_direct(self.staging / out_file.name, os.O_WRONLY))
        except BaseException:
            self._close_fds()
            raise
        return self

    def _create(self, out_file: OutputFile) -> int:
        """Open the staged file: reused as it is on resume if its size is right, else new."""
        path = self.staging / out_file.name
        keep = self.resume and path.is_file() and path.stat().st_size == out_file.total_bytes
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0) | (0 if keep else os.O_TRUNC)
        fd = os.open(path, flags, 0o644)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, out_file.total_bytes)
            else:  # macOS, Windows: sparse until written, so a full disk shows up later
                os.ftruncate(fd, out_file.total_bytes)
            self._pwrite(fd, out_file.header, 0)
        except OSError as e:
            os.close(fd)
            raise _disk_error(e, path, out_file.total_bytes) from e
        return fd

    def _pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            if hasattr(os, "pwrite"):
                done += os.pwrite(fd, view[done:], offset + done)
            else:
                with self._locks[self._fds.index(fd)]:
                    os.lseek(fd, offset + done, os.SEEK_SET)
                    done += os.write(fd, view[done:])

    def write_job(self, job: Job, data: memoryview) -> None:
        """Write a job's bytes in place; safe from several threads (positioned writes)."""
        if self._state is not _State.OPEN:
            raise AssertionError(f"write_job() while writer is {self._state.value}")
        offset = job.file_offset
        try:
            lo, hi = direct_span(data, offset)
            buffered: list[tuple[int, int]] = [(0, data.nbytes)]
            if hi > lo and self._write_direct(job.file_idx, data[lo:hi], offset + lo):
                buffered = [(0, lo), (hi, data.nbytes)]
            for start, stop in buffered:
                if stop > start:
                    self._pwrite(self._fds[job.file_idx], data[start:stop], offset + start)
        except OSError as e:
            raise _disk_error(e, self.staging / self.files[job.file_idx].name, len(data)) from e

    def _write_direct(self, file_idx: int, data: memoryview, offset: int) -> bool:
        """Whether the bytes went through O_DIRECT; False leaves them to the caller."""
        fd = self._direct_fds[file_idx]
        if fd is None or not is_aligned(data, offset):
            return False
        try:
            self._pwrite(fd, data, offset)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            # The file system opened the file with O_DIRECT but refuses the I/O: stop trying
            # (the descriptor stays open until close, another thread may be using it).
            self._direct_fds[file_idx] = None
            self._refused.append(fd)
            return False
        with self._locks[file_idx]:
            self.direct_bytes += data.nbytes
        return True

    def sync(self) -> None:
        """Make every byte written so far durable (the journal records only after this).

        fdatasync suffices: the files' sizes were fixed when they were created."""
        for file_idx, fd in enumerate(self._fds):
            try:
                _datasync(fd)
            except OSError as e:
                raise _disk_error(e, self.staging / self.files[file_idx].name, 0) from e

    def publish(self, extra_files: Mapping[str, bytes]) -> list[Path]:
        """fsync everything, then move it into OUT; the index goes last."""
        if self._state is not _State.OPEN:
            raise AssertionError(f"publish() while writer is {self._state.value}")
        try:
            for fd in self._fds:
                os.fsync(fd)
            self._close_fds()
            for name, content in extra_files.items():
                (self.staging / name).write_bytes(content)
            index = json.dumps(index_json(self.files), indent=2).encode() + b"\n"
            (self.staging / INDEX_NAME).write_bytes(index)
            _fsync_dir(self.staging)
            order = [*extra_files, *(f.name for f in self.files), INDEX_NAME]
            published = []
            for name in order:
                target = self.out_dir / name
                os.replace(self.staging / name, target)
                published.append(target)
            _fsync_dir(self.out_dir)
        except OSError as e:
            raise _disk_error(e, self.out_dir, 0) from e
        shutil.rmtree(self.staging, ignore_errors=True)
        self._state = _State.DONE
        return published

    def _close_fds(self) -> None:
        for fd in [*self._fds, *self._direct_fds, *self._refused]:
            if fd is not None:
                os.close(fd)
        self._fds, self._direct_fds, self._refused = [], [], []

    def __exit__(self, *exc: object) -> None:
        self._close_fds()
        if self._state is _State.OPEN:
            self._state = _State.CLOSED
