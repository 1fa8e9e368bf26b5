"""Reading and writing past the page cache (O_DIRECT), and what it asks of buffers and offsets.

On the machine this is measured on, the kernel's copies between the page cache and the process
cost more CPU than everything else in a conversion (13.5 GB read through the page cache: 16 s of
system time on 2 CPUs; with O_DIRECT the disk's DMA fills the process's buffer). O_DIRECT needs
the file offset, the length and the buffer's address to be multiples of the device's block size;
ALIGN covers 512-byte and 4 KiB devices. File systems without it (tmpfs) refuse the open, and
callers then use the ordinary descriptor.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
from pathlib import Path

from streamconv.system.platform_io import portable

ALIGN = 4096
# Slots are backed by transparent huge pages where the kernel offers them (madvise mode).
HUGE_PAGE = 2 << 20


def buffer_address(data: memoryview) -> int | None:
    """Where a buffer's bytes live, or None if that cannot be known (read-only buffers)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(data))
    except (TypeError, ValueError):
        return None


def is_aligned(data: memoryview, offset: int) -> bool:
    """Whether data can be written at offset (or read into from offset) with O_DIRECT."""
    address = buffer_address(data)
    return (address is not None and address % ALIGN == 0 and offset % ALIGN == 0
            and data.nbytes % ALIGN == 0 and data.nbytes > 0)


def direct_span(data: memoryview, offset: int) -> tuple[int, int]:
    """[lo, hi) of data that can be written at offset + lo with O_DIRECT: the whole disk blocks
    it covers, provided the buffer sits at the same position within a block as the file offset
    (slots place their output rows so, see plan.slot_layout). The partial blocks at either end
    go through the page cache; (0, 0) when nothing can go direct.

    Without this, a job whose bytes start mid-block (every tensor after a norm of 5120
    bf16 values, LLaMA-2 13B; the down projections of 7B, 11008 columns wide) went through the
    page cache whole: most of a 13B conversion's system time."""
    address = buffer_address(data)
    if address is None or (address - offset) % ALIGN:
        return 0, 0
    lo = min(-offset % ALIGN, data.nbytes)
    hi = lo + (data.nbytes - lo) // ALIGN * ALIGN
    return (lo, hi) if hi > lo else (0, 0)


def huge_page_memory(n_bytes: int) -> tuple[mmap.mmap, int] | None:
    """(private anonymous memory of n_bytes + HUGE_PAGE, offset of its first 2 MiB boundary),
    advised to be backed by huge pages; None where the OS has no such advice (or
    STREAMCONV_PORTABLE is set).

    Why: the disk sees an O_DIRECT call as requests of at most 254 physically contiguous runs
    (virtio's max_segments). Ordinary 4 KiB pages land wherever the allocator finds them, so a
    32 MiB read went out as 512 KiB requests on some runs and 4 MiB requests on others (1.0 vs
    2.5 GiB/s on the benchmark disk); with 2 MiB pages every request is as large as the device
    takes. Only touched pages count in RSS, so the slot costs at most one page more."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None or portable():
        return None
    memory = mmap.mmap(-1, n_bytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError):  # kernels without transparent huge pages
        memory.madvise(advice)
    address = buffer_address(memoryview(memory))
    assert address is not None
    return memory, -address % HUGE_PAGE


def open_direct(path: Path, flags: int) -> int | None:
    """A descriptor that bypasses the page cache, or None where the OS or file system has none
    (or STREAMCONV_PORTABLE is set)."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct or portable() or mmap.PAGESIZE > ALIGN:
        # With pages larger than a block (64 KiB on some arm64 kernels) a part block written
        # through the page cache shares its page with whole blocks written past it, which
        # the kernel does not keep coherent under concurrent writers.
        return None
    try:
        return os.open(path, flags | direct)
    except OSError:
        return None
# Room a read of n bytes needs beyond n when it is done in whole blocks (RankReader.read_span).
SPAN_SLACK = 2 * ALIGN

# statx(2): STATX_DIOALIGN asks for the O_DIRECT alignment of a file (Linux 6.1+, include/uapi/
# linux/stat.h); stx_dio_mem_align and stx_dio_offset_align are the u32s at bytes 152 and 156 of
# the 256-byte struct statx.
_STATX_DIOALIGN = 0x2000
_AT_EMPTY_PATH = 0x1000
_STATX_BYTES = 256
_DIO_ALIGN_AT = 152


def dio_alignment(fd: int) -> int:
    """The alignment O_DIRECT asks of this file's offsets, lengths and buffers, as the kernel
    reports it (statx STATX_DIOALIGN; 512 for ext4 on this benchmark machine's virtio disk), or
    ALIGN where it cannot be known. Never more than ALIGN, so ALIGN-aligned I/O always fits."""
    if portable() or not hasattr(os, "O_DIRECT"):
        return ALIGN
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        statx = libc.statx
    except (OSError, AttributeError):
        return ALIGN
    buf = ctypes.create_string_buffer(_STATX_BYTES)
    if statx(fd, b"", _AT_EMPTY_PATH, _STATX_DIOALIGN, buf) != 0:
        return ALIGN
    mask = int.from_bytes(buf.raw[:4], "little")
    mem = int.from_bytes(buf.raw[_DIO_ALIGN_AT:_DIO_ALIGN_AT + 4], "little")
    offset = int.from_bytes(buf.raw[_DIO_ALIGN_AT + 4:_DIO_ALIGN_AT + 8], "little")
    align = max(mem, offset)
    if not mask & _STATX_DIOALIGN or align <= 0 or ALIGN % align:
        return ALIGN
    return align
