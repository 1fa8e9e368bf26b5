"""Which bytes of a file are already in the page cache, without reading any (mincore(2)).

A checkpoint that was just downloaded or copied is often still in the page cache; an O_DIRECT
read goes to the disk anyway (the kernel only writes back dirty pages first), so such bytes are
better read through the page cache. mincore on a mapping of the file answers per page and
starts no I/O, unlike a buffered preadv2(RWF_NOWAIT), which on a miss starts the readahead it
declines to wait for (mm/filemap.c, filemap_get_pages). The mapping is never touched, so it
costs address space, not memory.

Linux hides page cache state of files the caller could not open for writing: mincore then
reports every page as resident (mm/mincore.c, can_do_mincore). For such files nothing is
reported resident, and reads stay on O_DIRECT.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

from streamconv.system.platform_io import portable

PAGE = mmap.PAGESIZE
# mincore sets bit 0 of a page's byte when it is resident; the other bits are undefined.
_BIT0 = bytes(b & 1 for b in range(256))


class ResidencyMap:
    """A read-only, never-touched mapping of one file, asked which pages are cached."""

    def __init__(self, path: Path, fd: int) -> None:
        self._address: int | None = None
        self._size = os.fstat(fd).st_size
        if portable() or self._size == 0 or not _may_ask(path):
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._mincore = libc.mincore
            self._munmap = libc.munmap
            mmap_call = libc.mmap
        except (OSError, AttributeError):
            return
        mmap_call.restype = ctypes.c_void_p
        mmap_call.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        self._mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        self._munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        address = mmap_call(None, self._size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address is not None and address != ctypes.c_void_p(-1).value:
            self._address = address

    def resident_prefix(self, offset: int, n_bytes: int) -> int:
        """How many of the bytes from offset are cached, counted in whole pages from the first
        (clipped to n_bytes and to the file's end); 0 where this cannot be known."""
        n_bytes = min(n_bytes, self._size - offset)
        if self._address is None or n_bytes <= 0:
            return 0
        first = offset // PAGE * PAGE
        n_pages = -(-(offset + n_bytes - first) // PAGE)
        # The first page alone first: a cold file answers in one page, not thousands (asking
        # for 8192 pages costs 0.7 ms, which over a 7B's blocks would be 0.3 s of CPU).
        if self._resident_pages(first, 1) == 0:
            return 0
        pages = self._resident_pages(first, n_pages)
        return max(0, min(n_bytes, first + pages * PAGE - offset))

    def _resident_pages(self, first: int, n_pages: int) -> int:
        """How many pages from the one at file offset `first` are resident, up to n_pages."""
        assert self._address is not None
        vec = ctypes.create_string_buffer(n_pages)
        if self._mincore(self._address + first, n_pages * PAGE, vec) != 0:
            return 0
        missing = vec.raw.translate(_BIT0).find(b"\x00")
        return n_pages if missing < 0 else missing

    def close(self) -> None:
        if self._address is not None:
            self._munmap(self._address, self._size)
            self._address = None


def _may_ask(path: Path) -> bool:
    """Whether mincore tells the truth about this file (see the module's docstring)."""
    try:
        return os.stat(path).st_uid == os.geteuid() or os.access(path, os.W_OK)
    except (OSError, AttributeError):  # AttributeError: no geteuid (Windows)
        return False
