"""Reading and writing past the page cache (O_DIRECT), and what it asks of buffers and offsets.

On the machine this is measured on, the kernel's copies between the page cache and the process
cost more CPU than everything else in a conversion (13.5 GB read through the page cache: 16 s of
system time on 2 CPUs; with O_DIRECT the disk's DMA fills the process's buffer). O_DIRECT needs
the file offset, the length and the buffer's address to be multiples of the device's block size;
ALIGN covers 512-byte and 4 KiB devices. File systems without it (tmpfs) refuse the open, and
callers then use the ordinary descriptor.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

ALIGN = 4096


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


def open_direct(path: Path, flags: int) -> int | None:
    """A descriptor that bypasses the page cache, or None where the OS or file system has none."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return None
    try:
        return os.open(path, flags | direct)
    except OSError:
        return None
# Room a read of n bytes needs beyond n when it is done in whole blocks (ShardReader.read_span).
SPAN_SLACK = 2 * ALIGN
