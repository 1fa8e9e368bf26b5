"""The command line starts reading the checkpoint before torch has loaded.

Two facts make that work: importing the command line does not import torch, and start_prefetch
gets the first bytes of every shard into the page cache on its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamconv.source.prefetch import PREFETCH_BYTES, start_prefetch


def test_command_line_imports_without_torch() -> None:
    code = ("import sys, streamconv, streamconv.cli; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_nothing_to_prefetch_is_not_an_error(tmp_path: Path) -> None:
    assert start_prefetch(tmp_path / "missing") is None
    assert start_prefetch(tmp_path) is None  # no consolidated.*.pth


def _cached_bytes(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


@pytest.mark.skipif(shutil.which("fincore") is None or not hasattr(os, "posix_fadvise"),
                    reason="needs fincore (util-linux) and posix_fadvise")
def test_first_bytes_of_every_shard_reach_the_page_cache(tmp_path: Path) -> None:
    shard_bytes = 96 << 20
    paths = [tmp_path / f"consolidated.{i:02d}.pth" for i in range(2)]
    for path in paths:
        with path.open("wb") as f:
            f.write(os.urandom(1 << 20) * (shard_bytes >> 20))
            f.flush()
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if any(_cached_bytes(p) for p in paths):
        pytest.skip(f"{tmp_path} keeps files in memory (tmpfs?): nothing to prefetch")
    thread = start_prefetch(tmp_path)
    assert thread is not None
    thread.join(timeout=30)
    want = min(shard_bytes, PREFETCH_BYTES // len(paths))
    deadline = time.monotonic() + 30
    while any(_cached_bytes(p) < want for p in paths) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [_cached_bytes(p) >= want for p in paths] == [True, True]
