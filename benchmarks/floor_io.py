"""Floors from Python: read every input byte once and write as many bytes, then fsync.

Run as a child (`python floor_io.py [--direct | --copy-threads N] OUT_DIR PHASES.json FILE...`).
Unlike `cp` (which
the kernel may do with copy_file_range, never crossing into user space), this is what a converter
minimally does from Python: read(2) into a reused buffer, write(2) from it, fsync. The two
phases are timed apart, so the report also gives this disk's cold read and write speeds on their
own; their sum is the time of a converter that never overlaps reading with writing.

With --direct (the third floor, floor-direct) both passes bypass the page cache (O_DIRECT, as
streamconv's writer does for block-aligned jobs): the disk's own read and write speeds, without
the kernel's copies. The tail that is not a whole block is written through the page cache.

With --copy-threads N (floor-copy) each input is copied to OUT_DIR by N threads, each reading a
32 MiB piece with O_DIRECT and writing it at the same offset with O_DIRECT, into a file
pre-allocated with posix_fallocate: streamconv's own I/O (its depth-3 slots, its piece size, its
pre-allocation) with no conversion in between. On a disk that serves several requests at once
faster than one, this is the speed a converter can reach, and the other floors are not.
"""

from __future__ import annotations

import json
import mmap
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from streamconv.system.direct_io import huge_page_memory

CHUNK_BYTES = 64 << 20  # I/O calls this large run at full speed, as the converter's (32 MiB) do


BLOCK = 4096
DIRECT = 0  # os.O_DIRECT with --direct
PIECE_BYTES = 32 << 20  # streamconv's slots.MAX_PIECE_BYTES


def io_buffer(n_bytes: int) -> memoryview:
    """Memory on 2 MiB pages where the kernel offers them, exactly as streamconv's slots get
    it (its direct_io module, which imports neither torch nor the rest of the package). On
    4 KiB pages an O_DIRECT call reaches the disk in requests as small as 512 KiB, depending on
    where the allocator put the pages, which makes a floor slower by chance."""
    huge = huge_page_memory(n_bytes)
    if huge is None:
        return memoryview(mmap.mmap(-1, n_bytes))  # page-aligned, as O_DIRECT needs
    memory, skip = huge
    return memoryview(memory)[skip:skip + n_bytes]


def read_all(paths: list[Path], view: memoryview) -> int:
    total = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY | DIRECT)
        try:
            while n := os.readv(fd, [view]):
                total += n
        finally:
            os.close(fd)
    return total


def write_count(path: Path, n_bytes: int, view: memoryview) -> float:
    """Write n_bytes (the buffer over and over) and fsync; returns the fsync's share in s."""
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


def _copy_pieces(src: int, dst: int, dst_tail: int, pieces: Iterator[tuple[int, int]],
                 lock: threading.Lock) -> None:
    """One thread: take the next piece, read it past the page cache, write it back the same way
    (a last part block through the page cache, which O_DIRECT cannot write)."""
    view = io_buffer(PIECE_BYTES)
    while True:
        with lock:
            piece = next(pieces, None)
        if piece is None:
            return
        offset, n = piece
        got = 0
        while got < n:
            k = os.preadv(src, [view[got:-(-n // BLOCK) * BLOCK]], offset + got)
            if k == 0:
                raise OSError(f"input ended early at {offset + got}")
            got += k
        whole = n // BLOCK * BLOCK
        done = 0
        while done < whole:
            done += os.pwrite(dst, view[done:whole], offset + done)
        if whole < n:
            os.pwrite(dst_tail, view[whole:n], offset + whole)


def copy_parallel(paths: list[Path], out_dir: Path, n_threads: int) -> tuple[int, float]:
    """Copy every file with n_threads threads; returns (bytes, fsync s)."""
    total, fsync_s = 0, 0.0
    for path in paths:
        size = path.stat().st_size
        out = out_dir / path.name
        tail_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.posix_fallocate(tail_fd, 0, max(size, 1))
        os.ftruncate(tail_fd, size)
        src = os.open(path, os.O_RDONLY | os.O_DIRECT)
        dst = os.open(out, os.O_WRONLY | os.O_DIRECT)
        try:
            pieces = ((o, min(PIECE_BYTES, size - o)) for o in range(0, size, PIECE_BYTES))
            lock = threading.Lock()
            with ThreadPoolExecutor(n_threads) as pool:
                for future in [pool.submit(_copy_pieces, src, dst, tail_fd, pieces, lock)
                               for _ in range(n_threads)]:
                    future.result()  # a thread's error fails the floor
            start = time.monotonic()
            os.fsync(tail_fd)
            fsync_s += time.monotonic() - start
        finally:
            for fd in (src, dst, tail_fd):
                os.close(fd)
        total += size
    return total, fsync_s


def main(argv: list[str]) -> int:
    global DIRECT
    threads = 0
    if argv[0] == "--direct":
        DIRECT, argv = os.O_DIRECT, argv[1:]
    elif argv[0] == "--copy-threads":
        threads, argv = int(argv[1]), argv[2:]
    out_dir, phases_path, inputs = Path(argv[0]), Path(argv[1]), [Path(p) for p in argv[2:]]
    out_dir.mkdir(parents=True, exist_ok=True)
    if threads:
        start = time.monotonic()
        n_bytes, fsync_s = copy_parallel(inputs, out_dir, threads)
        phases_path.write_text(json.dumps({"bytes": n_bytes, "threads": threads,
                                           "piece_bytes": PIECE_BYTES,
                                           "copy_s": time.monotonic() - start,
                                           "write_fsync_s": fsync_s}, indent=2))
        return 0
    buf = io_buffer(CHUNK_BYTES)
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
