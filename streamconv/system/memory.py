"""Sizes as users write them, and memory as the OS reports it.

The budget is about resident memory as the OS counts it (VmHWM on Linux, ru_maxrss elsewhere),
mapped file pages included, so every figure here comes from the OS, never from our own tally.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import psutil

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
SIZE_UNITS_HELP = ("sizes: 5GB = 5*10^9 bytes and 500MB = 500*10^6 (decimal, as in Hugging "
                   "Face); 8GiB = 8*2^30 and 512MiB = 512*2^20 (binary); a bare 8G or 512M is "
                   "binary too, as in earlier versions")


def parse_size(text: str) -> int:
    """'5GB', '8GiB', '8G', '512M', '1.5g' or plain bytes -> bytes.

    The units Hugging Face uses: "GB", "MB", "KB", "TB" are decimal (5GB = 5 * 10^9 bytes, as in
    huggingface_hub's parse_size_to_int, so --max-shard-size 5GB splits where save_pretrained's
    max_shard_size="5GB" does), "GiB", "MiB", "KiB", "TiB" binary. A bare letter ("8G", "512M",
    any case) stays binary, as it was before streamconv read GB as decimal: a user who types 8G
    for --max-ram means 8 GiB of RAM. Letters are case-insensitive, like huggingface_hub's.
    """
    match = _SIZE_RE.match(text)
    if not match or (match.group(3) and not match.group(2)):
        raise ValueError(f"cannot read size {text!r}: use a number with an optional unit, "
                         "like 8G or 8GiB (binary), 5GB (decimal), 512M or 1073741824")
    number, prefix, binary, byte = match.groups()
    power = _POWER[prefix.lower()]
    base = 1024 if binary or not byte else 1000
    return int(float(number) * base**power)


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

