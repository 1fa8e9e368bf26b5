"""Bytes already in the page cache are read from there, the rest past it (system/page_cache.py,
RankReader): the bytes come back exact whichever way each part was read."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from conftest import evict

from streamconv.runtime.executor import aligned_empty, as_buffer
from streamconv.source.rank_reader import RankReader
from streamconv.system.direct_io import ALIGN, SPAN_SLACK, open_direct
from streamconv.system.page_cache import PAGE, ResidencyMap

FILE_BYTES = 4 * (1 << 20) + 300


def cache(path: Path, offset: int, n_bytes: int) -> None:
    with open(path, "rb") as f:
        f.seek(offset)
        f.read(n_bytes)


@pytest.fixture()
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "consolidated.00.pth"
    data = random.Random(3).randbytes(FILE_BYTES)
    path.write_bytes(data)
    if open_direct(path, os.O_RDONLY) is None or not hasattr(os, "posix_fadvise"):
        pytest.skip("needs O_DIRECT and posix_fadvise")
    evict(path)
    return path, data


def test_residency_follows_the_page_cache(data_file: tuple[Path, bytes]) -> None:
    path, _ = data_file
    fd = os.open(path, os.O_RDONLY)
    residency = ResidencyMap(path, fd)
    try:
        assert residency.resident_prefix(0, FILE_BYTES) == 0
        cache(path, 0, 10 * PAGE)
        assert residency.resident_prefix(100, 5 * PAGE) == 5 * PAGE
        got = residency.resident_prefix(100, FILE_BYTES - 100)
        assert 10 * PAGE - 100 <= got < FILE_BYTES - 100  # readahead may have cached more
    finally:
        residency.close()
        os.close(fd)


@pytest.mark.parametrize("cached_pages", [0, 3, 10_000])
def test_read_span_mixes_cached_pages_and_direct_blocks(data_file: tuple[Path, bytes],
                                                        cached_pages: int) -> None:
    path, data = data_file
    offset, n_bytes = 3 * ALIGN + 777, 2 * (1 << 20) + 5
    if cached_pages:
        cache(path, offset, cached_pages * PAGE)
    area = aligned_empty(n_bytes + SPAN_SLACK)
    with RankReader([path]) as reader:
        cached = reader.cached_bytes(0, offset, n_bytes)
        assert (cached > 0) == (cached_pages > 0)
        assert reader.reads_direct(0, offset, n_bytes) == (cached < n_bytes)
        start = reader.read_span(0, offset, n_bytes, as_buffer(area))
    assert bytes(area[start:start + n_bytes]) == data[offset:offset + n_bytes]
