"""The journal's sampled CRC: where it looks, and what it notices."""

from __future__ import annotations

import pytest

from streamconv.runtime.sampled_crc import SAMPLE_BYTES, STRIDE_BYTES, sample_crc, sample_positions


def crc_of(data: bytes, offset: int = 0, n: int | None = None) -> int:
    n = len(data) - offset if n is None else n
    return sample_crc(lambda pos, size: data[pos:pos + size], offset, n)


def test_positions_cover_start_end_and_each_mib() -> None:
    blocks = sample_positions(100, 3 * STRIDE_BYTES + 10)
    starts = [pos for pos, _ in blocks]
    assert starts[:4] == [100 + k * STRIDE_BYTES for k in range(4)]
    last_pos, last_len = blocks[-1]
    assert last_pos + last_len == 100 + 3 * STRIDE_BYTES + 10 and last_len == SAMPLE_BYTES
    assert sample_positions(0, 10) == [(0, 10)]


@pytest.mark.parametrize("damage", ["zero_tail", "truncate", "zero_first_block", "shift"])
def test_damage_that_resume_must_notice(damage: str) -> None:
    data = bytes(range(256)) * (3 * STRIDE_BYTES // 256 + 77)
    good = crc_of(data)
    if damage == "zero_tail":
        bad = data[:-1000] + bytes(1000)
    elif damage == "truncate":
        bad = data[:-1]
    elif damage == "zero_first_block":
        bad = bytes(SAMPLE_BYTES) + data[SAMPLE_BYTES:]
    else:
        bad = data[1:] + data[:1]
    assert crc_of(bad, 0, len(data)) != good
