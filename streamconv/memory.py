"""Sizes as users write them, and memory as the OS reports it.

The budget is about resident memory as the OS counts it (VmHWM on Linux, ru_maxrss elsewhere),
mapped file pages included, so every figure here comes from the OS, never from our own tally.
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import psutil

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNIT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'8G', '8GB', '8GiB', '512M', '1.5g' or plain bytes -> bytes.

    Binary units throughout: a user who types 8G for --max-ram means "8 GiB of my RAM", and
    --max-shard-size 5GB follows transformers' own reading closely enough (it splits a little
    below the limit anyway).
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"cannot read size {text!r}: use a number with an optional unit, "
                         "like 8G, 8GB, 8GiB, 512M or 1073741824")
    number, unit, _suffix = match.groups()
    return int(float(number) * _UNIT[unit.lower()])


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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes


def default_max_ram_bytes() -> int:
    """Half of the memory available right now, at least 1 GiB.

    Half, because the page cache (which makes streaming fast) and the rest of the desktop need the
    other half; available rather than total, so a busy laptop gets a smaller default.
    """
    available = int(psutil.virtual_memory().available)
    return max(available // 2, 1 << 30)

