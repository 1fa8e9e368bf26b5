"""Sizes as users write them on the command line (--max-ram, --max-shard-size), and the help
text that says how they are read. Showing sizes in messages is system/memory.py's
(format_size, format_flag_size), which the planner uses too."""

from __future__ import annotations

import re

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
