"""The first bytes of a few tensors, read straight from the rank files.

Detection compares tensors byte for byte without reading them whole: whether output.weight is
the embedding itself (tied), and whether neighbouring ranks hold copies of one kv head (Meta's
405B MP16 release). A sample of each is enough to tell, and costs a few reads at any model size.
"""

from __future__ import annotations

from collections.abc import Sequence

from streamconv.source.rank_reader import RankReader
from streamconv.source.tensor_index import Checkpoint


def tensor_prefixes(ckpt: Checkpoint, wanted: Sequence[tuple[int, str]], *,
                    max_bytes: int) -> list[bytes]:
    """The first min(max_bytes, size) bytes of each (rank index, Meta name), in order; only the
    rank files named are opened."""
    ranks = sorted({rank_idx for rank_idx, _ in wanted})
    slot = {rank_idx: i for i, rank_idx in enumerate(ranks)}
    samples = []
    with RankReader([ckpt.rank_paths[r] for r in ranks]) as reader:
        for rank_idx, name in wanted:
            ref = ckpt.tensors[rank_idx][name]
            buf = bytearray(min(max_bytes, ref.nbytes))
            reader.read_into(slot[rank_idx], ref.offset_bytes, memoryview(buf))
            samples.append(bytes(buf))
    return samples
