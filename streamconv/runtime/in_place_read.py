"""Reading a plain block straight into its output rows, without the staging copy.

A block that is copied unchanged (same dtype, whole rows, no permute) is normally read with
O_DIRECT into the slot's staging area and then copied into the output rows, because O_DIRECT
lands the bytes at their file offset's position within a disk block, and the output rows sit at
*their* file offset's position (so they can be written with O_DIRECT too, plan.slot_layout).
When the two positions agree, modulo the file system's O_DIRECT alignment (512 bytes for ext4 on
a 512-byte-sector disk, direct_io.dio_alignment), the read can target the rows themselves. The
copy it saves was the largest CPU cost of a 7B conversion after start-up (0.67 s of 3.5 s in
`perf record`); on the benchmark 7B a quarter of the blocks agree (torch.save aligns tensors to
64 bytes, so the position of a tensor's bytes modulo 512 is one of 8 values).

The whole blocks read around the rows reach up to one alignment unit into the bytes before
(earlier blocks' rows, or the slot's start) and after them; those bytes are put back.
"""

from __future__ import annotations

from streamconv.source.rank_reader import RankReader
from streamconv.system.direct_io import buffer_address


def read_in_place(reader: RankReader, rank_idx: int, offset: int, slot: memoryview, *,
                  start: int, n_bytes: int) -> bool:
    """Read [offset, offset + n_bytes) of a rank file into slot[start:start + n_bytes] with
    O_DIRECT if the positions agree; False (nothing changed) otherwise."""
    align = reader.dio_align(rank_idx)
    address = buffer_address(slot)
    if (address is None or not reader.reads_direct(rank_idx, offset, n_bytes)
            or (address + start - offset) % align):
        return False
    head = offset % align
    lo, hi = start - head, start - head + -(-(head + n_bytes) // align) * align
    if lo < 0 or hi > len(slot):
        return False
    stop = start + n_bytes
    before, after = bytes(slot[lo:start]), bytes(slot[stop:hi])
    try:
        done = reader.read_direct(rank_idx, offset - head, slot[lo:hi], needed=head + n_bytes)
    finally:
        slot[lo:start], slot[stop:hi] = before, after
    return done
