"""Reads past the page cache: any byte range, at any offset, comes back exact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import evict, evicted_file

from streamconv.errors import CheckpointError
from streamconv.runtime.executor import aligned_empty, as_buffer
from streamconv.source.rank_reader import RankReader
from streamconv.system.direct_io import ALIGN, SPAN_SLACK, direct_span, open_direct

FILE_BYTES = 3 * (1 << 20) + 1000  # not a whole number of blocks: the last read is a part one


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    return evicted_file(tmp_path_factory.mktemp("direct"), FILE_BYTES, seed=0)


def has_direct(path: Path) -> bool:
    fd = open_direct(path, os.O_RDONLY)
    if fd is None:
        return False
    os.close(fd)
    return True


READAHEAD = 4 << 20  # more than Linux's default readahead window
RANGES = [(0, 4096), (64, 100_000), (4032, 8192), (ALIGN * 7 + 960, 1 << 20),
          (FILE_BYTES - 1000, 1000), (FILE_BYTES - 70_000, 70_000), (5, 1)]


@pytest.mark.parametrize("cached_prefix", [0, 1 << 20])
def test_read_span_returns_the_exact_bytes(data_file: tuple[Path, bytes],
                                           cached_prefix: int) -> None:
    path, data = data_file
    evict(path)  # the other parameter's prefix left pages in the page cache
    area = aligned_empty(max(n for _, n in RANGES) + SPAN_SLACK)
    with RankReader([path], cached_prefix=cached_prefix) as reader:
        assert reader.direct(0) == has_direct(path)
        for offset, n in RANGES:
            start = reader.read_span(0, offset, n, as_buffer(area))
            assert bytes(area[start:start + n]) == data[offset:offset + n], (offset, n)
            # Past the cached prefix and the kernel's readahead after it, bytes come in whole
            # blocks with O_DIRECT (cached pages are read from the page cache: page_cache.py).
            if reader.direct(0) and (not cached_prefix or offset > cached_prefix + READAHEAD):
                assert start == offset % ALIGN


def test_read_span_past_the_end_is_a_truncated_file(data_file: tuple[Path, bytes]) -> None:
    path, _ = data_file
    area = aligned_empty(8192 + SPAN_SLACK)
    with RankReader([path]) as reader, pytest.raises(CheckpointError, match="ended early"):
        reader.read_span(0, FILE_BYTES - 100, 8192, as_buffer(area))


def test_unaligned_area_falls_back_to_the_page_cache(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    area = aligned_empty(20_000 + SPAN_SLACK + 64)[64:]
    with RankReader([path]) as reader:
        start = reader.read_span(0, 4096, 20_000, as_buffer(area))
    assert start == 0 and bytes(area[:20_000]) == data[4096:24_096]


@pytest.mark.parametrize("offset,n_bytes", [(0, 3 * ALIGN), (2048, 5 * ALIGN), (2048, 100),
                                            (100, ALIGN), (ALIGN - 1, 2 * ALIGN + 1), (0, 10)])
def test_direct_span_covers_exactly_the_whole_blocks(offset: int, n_bytes: int) -> None:
    slot = aligned_empty(8 * ALIGN)
    data = as_buffer(slot[offset % ALIGN:offset % ALIGN + n_bytes])
    lo, hi = direct_span(data, offset)
    blocks = [b for b in range(offset // ALIGN, (offset + n_bytes) // ALIGN + 1)
              if b * ALIGN >= offset and (b + 1) * ALIGN <= offset + n_bytes]
    if not blocks:
        assert (lo, hi) == (0, 0)
    else:
        assert (offset + lo, offset + hi) == (blocks[0] * ALIGN, (blocks[-1] + 1) * ALIGN)


def test_direct_span_refuses_a_buffer_off_the_file_position() -> None:
    slot = aligned_empty(8 * ALIGN)
    assert direct_span(as_buffer(slot[:4 * ALIGN]), 2048) == (0, 0)
    assert direct_span(as_buffer(slot[512:512 + 4 * ALIGN]), 0) == (0, 0)
