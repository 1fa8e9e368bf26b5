"""Memory as the OS reports it, and sizes as messages show them (reading the sizes users
write is the command line's: cli/sizes.py).

The budget is about resident memory as the OS counts it (VmHWM on Linux, ru_maxrss elsewhere),
mapped file pages included, so every figure here comes from the OS, never from our own tally.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import psutil


def format_size(n_bytes: float) -> str:
    """Bytes -> a short binary-unit string (1.5 GiB) for messages and tables."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_flag_size(n_bytes: int) -> str:
    """Bytes -> a value the user can paste into --max-ram, rounded up (1.8G, 760M)."""
    gib = n_bytes / (1 << 30)
    if gib >= 1:
        return f"{(int(gib * 10) + 1) / 10:.1f}G"
    return f"{int(n_bytes / (1 << 20)) + 1}M"


def current_rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """The process's high-water mark of resident memory as the kernel tracks it."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    try:  # Unix only; imported here so that the package imports on Windows
        resource = importlib.import_module("resource")
    except ImportError:
        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))  # Windows: the peak working set
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes


def default_max_ram_bytes() -> int:
    """Half of the memory available right now, at least 1 GiB.

    Half, because the page cache (which makes streaming fast) and the rest of the desktop need the
    other half; available rather than total, so a busy laptop gets a smaller default.
    """
    available = int(psutil.virtual_memory().available)
    return max(available // 2, 1 << 30)

