"""Sampled CRC32 of a byte range: what the resume journal stores for each durable range.

A full CRC of every output byte cost about as much CPU as the rest of the conversion together
(0.45 s per GB here), on a machine where the conversion is meant to run at disk speed. The
journal's job is narrower: to tell, on resume, whether a range recorded after fdatasync is still
what was written (not a file recreated, truncated, zero-filled or never synced). A CRC over the
first and last 4 KiB and one 4 KiB block per MiB catches those; single flipped bits anywhere are
`streamconv verify`'s job, which compares every byte.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

SAMPLE_BYTES = 4096
STRIDE_BYTES = 1 << 20


def sample_positions(offset: int, n_bytes: int) -> list[tuple[int, int]]:
    """(position, length) of the sampled blocks of [offset, offset + n_bytes)."""
    end = offset + n_bytes
    blocks = [(pos, min(SAMPLE_BYTES, end - pos)) for pos in range(offset, end, STRIDE_BYTES)]
    last = max(offset, end - SAMPLE_BYTES)
    if n_bytes and (last, end - last) not in blocks:
        blocks.append((last, end - last))
    return blocks


def sample_crc(read: Callable[[int, int], bytes | memoryview], offset: int, n_bytes: int) -> int:
    """read(position, length) -> bytes; short reads make the CRC differ, as they should."""
    value = zlib.crc32(n_bytes.to_bytes(8, "little"))
    for pos, size in sample_positions(offset, n_bytes):
        value = zlib.crc32(read(pos, size), value)
    return value


def sample_crc_of_buffer(data: memoryview, offset: int) -> int:
    """The sampled CRC of bytes about to sit at file position offset, taken from memory: after a
    successful write it equals sample_crc of the file's range, without reading the disk back
    (with O_DIRECT writes the bytes are not in the page cache)."""
    view = data.cast("B")
    return sample_crc(lambda pos, size: view[pos - offset:pos - offset + size], offset,
                      view.nbytes)
