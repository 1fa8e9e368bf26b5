"""Positioned reads of rank files into buffers the caller owns, past the page cache where the
file system allows it (system/direct_io.py)."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from streamconv.errors import CheckpointError
from streamconv.system.direct_io import ALIGN, dio_alignment, is_aligned, open_direct
from streamconv.system.page_cache import ResidencyMap
from streamconv.system.platform_io import has_os_call


class RankReader:
    """Open file handles for positioned reads into caller-owned buffers, from many threads.

    read_span reads with O_DIRECT where it can (see direct_io.py): the device's DMA fills the
    buffer instead of the kernel copying out of the page cache. Bytes below cached_prefix of
    every file are read through the page cache instead, because the command line has asked the
    kernel to read them there already (prefetch.py) and O_DIRECT would read them again.
    """

    def __init__(self, paths: Sequence[Path], *, cached_prefix: int = 0) -> None:
        self._paths = list(paths)
        self._fds: list[int] = []
        self._direct_fds: list[int | None] = []
        self._refused: list[int] = []
        self._dio_aligns: list[int] = []
        self._residency: list[ResidencyMap | None] = []
        self._locks = [threading.Lock() for _ in self._paths]
        self.cached_prefix = cached_prefix
        self.first_read_unix: float | None = None  # when the first job's read was issued

    def __enter__(self) -> RankReader:
        for path in self._paths:
            try:
                self._fds.append(os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0)))
            except OSError as e:
                self.close()
                raise CheckpointError(f"cannot open {path} ({e.strerror}); check that it is "
                                      "readable") from e
            fd = open_direct(path, os.O_RDONLY)
            self._direct_fds.append(fd)
            self._dio_aligns.append(ALIGN if fd is None else dio_alignment(fd))
            self._residency.append(None if fd is None else ResidencyMap(path, self._fds[-1]))
        return self

    def cached_bytes(self, rank_idx: int, offset: int, n_bytes: int) -> int:
        """How many bytes from offset are in the page cache already (page_cache.py), as a
        whole number of pages from the first; those are read from there, not with O_DIRECT."""
        residency = self._residency[rank_idx]
        return 0 if residency is None else residency.resident_prefix(offset, n_bytes)

    def direct(self, rank_idx: int) -> bool:
        """Whether read_span can bypass the page cache for this file."""
        return self._direct_fds[rank_idx] is not None

    def reads_direct(self, rank_idx: int, offset: int, n_bytes: int) -> bool:
        """Whether read_span reads [offset, offset + n_bytes) past the page cache; if not, the
        bytes may as well be read straight into their final place with read_into."""
        return (self._direct_fds[rank_idx] is not None and offset + n_bytes > self.cached_prefix
                and self.cached_bytes(rank_idx, offset, n_bytes) < n_bytes)

    def dio_align(self, rank_idx: int) -> int:
        """The O_DIRECT alignment of the file's offsets, lengths and buffers (a divisor of
        ALIGN; direct_io.dio_alignment), for read_direct."""
        return self._dio_aligns[rank_idx]

    def read_direct(self, rank_idx: int, position: int, window: memoryview, *,
                    needed: int) -> bool:
        """Fill window from position with O_DIRECT (both at dio_align); at least `needed` bytes
        must exist (fewer: the file is truncated). False if the file system refused (nothing
        was read; the caller reads another way, and later calls use ALIGN)."""
        self._note_read()
        fd, align = self._direct_fds[rank_idx], self._dio_aligns[rank_idx]
        if fd is None:  # another thread's read_span found O_DIRECT refused
            return False
        assert position % align == 0 and len(window) % align == 0
        done = 0
        try:
            while done < len(window):
                n = os.preadv(fd, [window[done:]], position + done)
                done += n
                if n == 0 or n % align:  # a part block: the end of the file
                    break
        except OSError as e:
            if e.errno != errno.EINVAL or done:
                raise
            self._dio_aligns[rank_idx] = ALIGN
            return False
        if done < needed:
            raise CheckpointError(f"{self._paths[rank_idx]} ended early (truncated?); "
                                  "download it again")
        return True

    def read_span(self, rank_idx: int, offset: int, n_bytes: int, area: memoryview) -> int:
        """Read [offset, offset + n_bytes) of a file into area; returns where in area it starts.

        area needs n_bytes + SPAN_SLACK bytes: O_DIRECT reads whole blocks, so the bytes land
        at offset's distance from the block boundary below it."""
        self._note_read()
        fd = self._direct_fds[rank_idx]
        start = offset % ALIGN
        length = -(-(start + n_bytes) // ALIGN) * ALIGN
        window = area[:length]
        cached = 0 if fd is None else self.cached_bytes(rank_idx, offset, n_bytes)
        if (fd is None or offset + n_bytes <= self.cached_prefix or cached == n_bytes
                or len(window) < length or not is_aligned(window, offset - start)):
            self.read_into(rank_idx, offset, area[:n_bytes])
            return 0
        skip = 0  # bytes of the window that came from the page cache: whole pages from start
        if cached:
            self.read_into(rank_idx, offset, area[start:start + cached])
            skip = start + cached  # offset + cached is on a page boundary
            window = window[skip:]
        try:
            got = skip + self._pread_all(fd, window, offset - start + skip)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            # The file system opened the file with O_DIRECT but refuses the I/O: stop trying
            # (the descriptor stays open until close, another thread may be using it).
            self._direct_fds[rank_idx] = None
            self._refused.append(fd)
            self.read_into(rank_idx, offset, area[:n_bytes])
            return 0
        if got < start + n_bytes:
            raise CheckpointError(f"{self._paths[rank_idx]} ended early (truncated?); "
                                  "download it again")
        return start

    @staticmethod
    def _pread_all(fd: int, window: memoryview, position: int) -> int:
        """Bytes read into window from position, fewer only at the end of the file."""
        done = 0
        while done < len(window):
            n = os.preadv(fd, [window[done:]], position + done)
            done += n
            if n == 0 or n % ALIGN:  # a part block: the end of the file
                break
        return done

    def _note_read(self) -> None:
        if self.first_read_unix is None:
            self.first_read_unix = time.time()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in [*self._fds, *self._direct_fds, *self._refused]:
            if fd is not None:
                os.close(fd)
        for residency in self._residency:
            if residency is not None:
                residency.close()
        self._fds, self._direct_fds, self._refused, self._dio_aligns = [], [], [], []
        self._residency = []

    def read_into(self, rank_idx: int, offset: int, buffer: memoryview) -> None:
        """Fill buffer from the file at offset; short reads are retried, EOF is an error."""
        self._note_read()
        fd = self._fds[rank_idx]
        done = 0
        while done < len(buffer):
            part = buffer[done:]
            if has_os_call("preadv"):
                n = os.preadv(fd, [part], offset + done)
            else:  # Windows: no positioned reads, so serialise seek + read per file
                with self._locks[rank_idx]:
                    os.lseek(fd, offset + done, os.SEEK_SET)
                    data = os.read(fd, len(part))
                part[:len(data)] = data
                n = len(data)
            if n == 0:
                raise CheckpointError(f"{self._paths[rank_idx]} ended early (truncated?); "
                                      "download it again")
            done += n
