"""The output shards inside the staging folder: created at full size, filled in place.

Shard files are created at their final size with their headers, so a full disk fails at the
start, not at minute 50, and every job writes its bytes at a known offset in any order. The
folder they live in, and when they move into OUT, are output_folder.py's business.

Job bytes that are block-aligned (offset, length and buffer address; real models' are) go through
a second descriptor opened with O_DIRECT, straight from the job's buffer to the disk (a 4 GB
write here: 3.4-10.9 s of system time through the page cache, 0.6 s direct; see direct_io.py).
Anything unaligned, and file systems without O_DIRECT (tmpfs), use the ordinary descriptor; the
kernel keeps the two coherent.
"""

from __future__ import annotations

import enum
import errno
import os
import shutil
import threading
from pathlib import Path

from streamconv.errors import LifecycleError, OutputError
from streamconv.planning.jobs import Job
from streamconv.planning.output_files import OutputFile
from streamconv.system.direct_io import direct_span, is_aligned, open_direct
from streamconv.system.memory import format_size
from streamconv.system.platform_io import data_sync, full_fsync, has_os_call


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    FINISHED = "finished"
    CLOSED = "closed"


def disk_error(e: OSError, path: Path, needed: int) -> OutputError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(path.parent).free
        return OutputError(f"disk full while writing {path} ({format_size(needed)} needed, "
                           f"{format_size(free)} free); free some space and run the same "
                           "command with --resume")
    return OutputError(f"cannot write {path} ({e.strerror}); check the output folder's "
                       "permissions and free space")


class ShardWriter:
    """Creates and fills the output shards in a staging folder; refuses calls out of order."""

    def __init__(self, staging: Path, files: tuple[OutputFile, ...], *,
                 resume: bool = False) -> None:
        self.resume = resume
        self.staging = staging
        self.files = files
        self._fds: list[int] = []
        self._direct_fds: list[int | None] = []
        self._refused: list[int] = []
        self.direct_bytes = 0  # written through O_DIRECT, for tests and reports
        self._locks = [threading.Lock() for _ in files]
        self._state = _State.NEW

    def __enter__(self) -> ShardWriter:
        if self._state is not _State.NEW:
            raise LifecycleError(f"the shard writer for {self.staging} was entered twice")
        self._state = _State.OPEN
        try:
            for out_file in self.files:
                self._fds.append(self._create(len(self._fds), out_file))
                self._direct_fds.append(open_direct(self.staging / out_file.name, os.O_WRONLY))
        except BaseException:
            self._close_fds()
            raise
        return self

    def _create(self, file_idx: int, out_file: OutputFile) -> int:
        """Open the staged file: reused as it is on resume if its size is right, else new."""
        path = self.staging / out_file.name
        keep = self.resume and path.is_file() and path.stat().st_size == out_file.total_bytes
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0) | (0 if keep else os.O_TRUNC)
        fd = os.open(path, flags, 0o644)
        try:
            if has_os_call("posix_fallocate"):
                os.posix_fallocate(fd, 0, out_file.total_bytes)
            else:  # macOS, Windows: sparse until written, so a full disk shows up later
                os.ftruncate(fd, out_file.total_bytes)
            self._pwrite(file_idx, fd, out_file.header, 0)
        except OSError as e:
            os.close(fd)
            raise disk_error(e, path, out_file.total_bytes) from e
        return fd

    def _pwrite(self, file_idx: int, fd: int, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            if has_os_call("pwrite"):
                done += os.pwrite(fd, view[done:], offset + done)
            else:
                with self._locks[file_idx]:
                    os.lseek(fd, offset + done, os.SEEK_SET)
                    done += os.write(fd, view[done:])

    def write_job(self, job: Job, data: memoryview) -> None:
        """Write a job's bytes in place; safe from several threads (positioned writes)."""
        self._require_open("write_job")
        offset = job.file_offset
        try:
            lo, hi = direct_span(data, offset)
            buffered: list[tuple[int, int]] = [(0, data.nbytes)]
            if hi > lo and self._write_direct(job.file_idx, data[lo:hi], offset + lo):
                buffered = [(0, lo), (hi, data.nbytes)]
            for start, stop in buffered:
                if stop > start:
                    self._pwrite(job.file_idx, self._fds[job.file_idx], data[start:stop],
                                 offset + start)
        except OSError as e:
            raise disk_error(e, self.staging / self.files[job.file_idx].name, len(data)) from e

    def _write_direct(self, file_idx: int, data: memoryview, offset: int) -> bool:
        """Whether the bytes went through O_DIRECT; False leaves them to the caller."""
        fd = self._direct_fds[file_idx]
        if fd is None or not is_aligned(data, offset):
            return False
        try:
            self._pwrite(file_idx, fd, data, offset)
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
                data_sync(fd)
            except OSError as e:
                raise disk_error(e, self.staging / self.files[file_idx].name, 0) from e

    def finish(self) -> None:
        """Make every shard durable (data and metadata) and close it; no more writes."""
        self._require_open("finish")
        for file_idx, fd in enumerate(self._fds):
            try:
                full_fsync(fd)
            except OSError as e:
                raise disk_error(e, self.staging / self.files[file_idx].name, 0) from e
        self._close_fds()
        self._state = _State.FINISHED

    def _require_open(self, step: str) -> None:
        if self._state is not _State.OPEN:
            raise LifecycleError(f"{step}() on the shards in {self.staging}, which are "
                                 f"{self._state.value}, not open; this is a bug in the caller")

    def _close_fds(self) -> None:
        for fd in [*self._fds, *self._direct_fds, *self._refused]:
            if fd is not None:
                os.close(fd)
        self._fds, self._direct_fds, self._refused = [], [], []

    def __exit__(self, *exc: object) -> None:
        self._close_fds()
        if self._state is _State.OPEN:
            self._state = _State.CLOSED
