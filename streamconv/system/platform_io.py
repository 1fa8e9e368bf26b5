"""The operating-system calls that are not everywhere, one switch to turn them off, and fsync.

The fast path uses Linux (and some BSD) calls: O_DIRECT, transparent huge pages
(MADV_HUGEPAGE), posix_fadvise, posix_fallocate, preadv and pwrite. Each has a fallback for
systems without it (macOS has no O_DIRECT, MADV_HUGEPAGE, fadvise or fallocate; Windows has none
of them), and a fallback that never runs is a fallback that does not work. STREAMCONV_PORTABLE=1
makes every one of those calls look absent, so the Linux test suite runs the fallbacks too and
can compare their output with the fast path's, byte for byte.

fsync itself differs too: on macOS fsync(2) hands the data to the drive, whose cache may still
lose it on power loss; only fcntl(F_FULLFSYNC) asks the drive to write it (Apple's fsync(2) man
page). full_fsync is the one function every durable write in the package goes through.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

PORTABLE_ENV = "STREAMCONV_PORTABLE"


def portable() -> bool:
    """Whether STREAMCONV_PORTABLE asks for the fallbacks (read at each call, so tests can set
    it for one conversion)."""
    return os.environ.get(PORTABLE_ENV, "").strip() not in ("", "0")


def has_os_call(name: str) -> bool:
    """Whether os.<name> (an OS-specific call: preadv, pwrite, posix_fallocate, ...) may be
    used: it exists here and STREAMCONV_PORTABLE is not set."""
    return not portable() and hasattr(os, name)


def _full_fsync_call() -> tuple[ModuleType, int] | None:
    """(fcntl, F_FULLFSYNC) where the OS has it (macOS), else None."""
    try:  # Unix only; imported here so that the package imports on Windows
        fcntl = importlib.import_module("fcntl")
    except ImportError:
        return None
    full = getattr(fcntl, "F_FULLFSYNC", None)
    return (fcntl, full) if isinstance(full, int) else None


def full_fsync(fd: int) -> None:
    """Make fd's data and metadata durable: fcntl(F_FULLFSYNC) where the OS has it (macOS),
    falling back to fsync where the file system refuses it (some network file systems)."""
    call = _full_fsync_call()
    if call is not None:
        fcntl, full = call
        try:
            fcntl.fcntl(fd, full)
            return
        except OSError:
            pass
    os.fsync(fd)


def data_sync(fd: int) -> None:
    """Make fd's data durable when its size is already on disk: fdatasync where it exists and
    reaches the disk (Linux), full_fsync elsewhere (macOS's fdatasync leaves it in the drive's
    cache)."""
    if hasattr(os, "fdatasync") and _full_fsync_call() is None:
        os.fdatasync(fd)
    else:
        full_fsync(fd)


def fsync_dir(path: Path) -> None:
    """Make the entries of a folder (created and renamed files) durable."""
    if os.name == "nt":
        return  # Windows cannot open a folder for fsync; NTFS journals renames itself
    fd = os.open(path, os.O_RDONLY)
    try:
        full_fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """Make a file's content durable, by name (for files written and closed earlier)."""
    # Windows' fsync (_commit) needs a descriptor open for writing.
    fd = os.open(path, (os.O_RDWR if os.name == "nt" else os.O_RDONLY)
                 | getattr(os, "O_BINARY", 0))
    try:
        full_fsync(fd)
    finally:
        os.close(fd)
