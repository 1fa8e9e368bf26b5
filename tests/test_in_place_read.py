"""Plain blocks read with O_DIRECT straight into their output rows (runtime/in_place_read.py):
the rows get exactly the file's bytes and every byte around them in the slot is kept."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from conftest import evicted_file

from streamconv.errors import CheckpointError
from streamconv.runtime.executor import aligned_empty, as_buffer
from streamconv.runtime.in_place_read import read_in_place
from streamconv.source.rank_reader import RankReader
from streamconv.system.direct_io import ALIGN, dio_alignment, open_direct

FILE_BYTES = 2 * (1 << 20) + 700  # not whole blocks: reads at the end come back short
SLOT_BYTES = 1 << 20


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    return evicted_file(tmp_path_factory.mktemp("in_place"), FILE_BYTES, seed=1)


def direct_alignment(path: Path) -> int | None:
    fd = open_direct(path, os.O_RDONLY)
    if fd is None:
        return None
    try:
        return dio_alignment(fd)
    finally:
        os.close(fd)


# (file offset, start in the slot, bytes): the same position within an ALIGN block, a 512-byte
# one only, and the end of the file
CASES = [(0, 0, 8192), (4096 + 64, 64, 100_000), (3 * 4096 + 960, 8192 + 960, 300_000),
         (512 + 128, 1024 + 128, 70_000), (FILE_BYTES - 5000, (FILE_BYTES - 5000) % ALIGN, 5000)]


@pytest.mark.parametrize("offset,start,n_bytes", CASES)
def test_rows_get_the_file_bytes_and_the_rest_of_the_slot_is_kept(
        data_file: tuple[Path, bytes], offset: int, start: int, n_bytes: int) -> None:
    path, data = data_file
    align = direct_alignment(path)
    slot = aligned_empty(SLOT_BYTES)
    before = random.Random(2).randbytes(SLOT_BYTES)
    view = as_buffer(slot)
    view[:] = before
    with RankReader([path]) as reader:
        done = read_in_place(reader, 0, offset, view, start=start, n_bytes=n_bytes)
    expected_done = align is not None and (start - offset) % align == 0
    assert done == expected_done
    after = bytes(view)
    if done:
        assert after[start:start + n_bytes] == data[offset:offset + n_bytes]
        assert after[:start] == before[:start]
        assert after[start + n_bytes:] == before[start + n_bytes:]
    else:
        assert after == before


def test_positions_that_disagree_read_nothing(data_file: tuple[Path, bytes]) -> None:
    path, _ = data_file
    slot = aligned_empty(SLOT_BYTES)
    with RankReader([path]) as reader:
        assert not read_in_place(reader, 0, 64, as_buffer(slot), start=128, n_bytes=4096)


def test_bytes_the_kernel_was_asked_to_cache_are_not_read_direct(
        data_file: tuple[Path, bytes]) -> None:
    path, _ = data_file
    slot = aligned_empty(SLOT_BYTES)
    with RankReader([path], cached_prefix=1 << 20) as reader:
        assert not reader.reads_direct(0, 0, 4096)
        assert not read_in_place(reader, 0, 0, as_buffer(slot), start=0, n_bytes=4096)


def test_a_truncated_file_is_an_error_and_the_slot_is_kept(
        data_file: tuple[Path, bytes]) -> None:
    path, _ = data_file
    if direct_alignment(path) is None:
        pytest.skip("no O_DIRECT on this file system")
    slot = aligned_empty(SLOT_BYTES)
    view = as_buffer(slot)
    view[:] = bytes(SLOT_BYTES)
    offset = FILE_BYTES - FILE_BYTES % ALIGN
    with RankReader([path]) as reader, pytest.raises(CheckpointError, match="ended early"):
        read_in_place(reader, 0, offset, view, start=0, n_bytes=8192)
    assert bytes(view[8192:]) == bytes(SLOT_BYTES - 8192)
