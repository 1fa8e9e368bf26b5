"""Start reading the checkpoint while the interpreter is still importing torch.

Importing torch takes 1.1-1.3 s here, during which the disk would sit idle: 7% of a 7B
conversion that otherwise runs at the disk's speed. The command line asks the kernel to read the
start of every rank file into the page cache first (POSIX_FADV_WILLNEED, which returns at once), so
the first jobs find their bytes there. It is only a hint: nothing waits for it, errors are
ignored (a missing or unreadable file is reported properly later), and the page cache is not
resident memory of this process.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from streamconv.system.platform_io import has_os_call

# About what this disk reads while torch imports; split over the rank files, whose first bytes the
# first jobs read (every job reads its rows from every rank file).
PREFETCH_BYTES = 1 << 30
# Linux reads at most the readahead window (here 8 MiB) per WILLNEED call.
ADVICE_BYTES = 8 << 20


def start_prefetch(input_dir: Path) -> threading.Thread | None:
    """Hint the kernel to read the first PREFETCH_BYTES of the rank files, in the background."""
    if not has_os_call("posix_fadvise"):
        return None  # macOS, Windows, STREAMCONV_PORTABLE
    try:
        paths = sorted(input_dir.glob("consolidated.*.pth"))
    except OSError:
        return None
    if not paths:
        return None
    thread = threading.Thread(target=_advise, args=(paths, prefetched_bytes(len(paths))),
                              name="prefetch", daemon=True)
    thread.start()
    return thread


def _advise(paths: list[Path], n_bytes: int) -> None:
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            for offset in range(0, n_bytes, ADVICE_BYTES):
                os.posix_fadvise(fd, offset, ADVICE_BYTES, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def prefetched_bytes(n_ranks: int) -> int:
    """How much of the start of each rank file start_prefetch asks the kernel to read."""
    return PREFETCH_BYTES // max(n_ranks, 1)
