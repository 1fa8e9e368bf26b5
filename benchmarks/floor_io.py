"""Floor, second form: read every input byte once, then write as many bytes and fsync them.

Run as a child (`python floor_io.py [--direct] OUT_DIR PHASES.json FILE...`). Unlike `cp` (which
the kernel may do with copy_file_range, never crossing into user space), this is what a converter
minimally does from Python: read(2) into a reused buffer, write(2) from it, fsync. The two
phases are timed apart, so the report also gives this disk's cold read and write speeds on their
own; their sum is the time of a converter that never overlaps reading with writing.

With --direct (the third floor, floor-direct) both passes bypass the page cache (O_DIRECT, as
streamconv's writer does for block-aligned jobs): the disk's own read and write speeds, without
the kernel's copies. The tail that is not a whole block is written through the page cache.
"""

from __future__ import annotations

import json
import mmap
import os
import sys
import time
from pathlib import Path

CHUNK_BYTES = 64 << 20  # I/O calls this large run at full speed, as the converter's (32 MiB) do


BLOCK = 4096
DIRECT = 0  # os.O_DIRECT with --direct


def read_all(paths: list[Path], buf: mmap.mmap) -> int:
    view = memoryview(buf)
    total = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY | DIRECT)
        try:
            while n := os.readv(fd, [view]):
                total += n
        finally:
            os.close(fd)
    return total


def write_count(path: Path, n_bytes: int, buf: mmap.mmap) -> float:
    """Write n_bytes (the buffer over and over) and fsync; returns the fsync's share in s."""
    view = memoryview(buf)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    bulk = n_bytes // BLOCK * BLOCK if DIRECT else n_bytes
    direct_fd = os.open(path, os.O_WRONLY | DIRECT) if DIRECT else fd
    try:
        done = 0
        while done < bulk:
            done += os.pwrite(direct_fd, view[:min(len(view), bulk - done)], done)
        if done < n_bytes:
            os.pwrite(fd, view[:n_bytes - done], done)
        start = time.monotonic()
        os.fsync(fd)
        return time.monotonic() - start
    finally:
        os.close(fd)
        if direct_fd != fd:
            os.close(direct_fd)


def main(argv: list[str]) -> int:
    global DIRECT
    if argv[0] == "--direct":
        DIRECT, argv = os.O_DIRECT, argv[1:]
    out_dir, phases_path, inputs = Path(argv[0]), Path(argv[1]), [Path(p) for p in argv[2:]]
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = mmap.mmap(-1, CHUNK_BYTES)  # page-aligned, as O_DIRECT needs
    start = time.monotonic()
    n_read = read_all(inputs, buf)
    read_s = time.monotonic() - start
    start = time.monotonic()
    fsync_s = write_count(out_dir / "floor.bin", n_read, buf)
    write_s = time.monotonic() - start
    phases_path.write_text(json.dumps({"bytes": n_read, "read_s": read_s, "write_s": write_s,
                                       "write_fsync_s": fsync_s}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
