"""Computed tensors as row gathers: runs of a Meta tensor's rows placed in a Hugging Face one.

Some Hugging Face tensors are not a merge of rank slices but a rearrangement of them with
zeros in between: transformers' Mllama keeps, for each supported aspect ratio of a tiled image,
the tile embeddings Meta's model picks at run time for that ratio, precomputed into one row
per ratio (transformers' convert_mllama_weights_to_hf.py `pre_compute_positional_embedding`;
docs/llama32_vision_facts.md section 4). Such a tensor is still a list of contiguous reads
written into rectangles of the output, so the planner, the executor, `plan --json` and verify
handle it as they handle any copy block; the one difference is that a job of it starts from
zeros (Job.zero_fill). A gather names its function in TensorEntry.gather; the function gets
the merged Meta shape and the Hugging Face shape and returns the moves.

A move is (first Meta row, output row, first output column, columns): `columns` consecutive
values starting at Meta row `first Meta row` (rows of the Meta tensor's last dimension) land
in one output row. Its cost for the planner is that of its bytes, like any block's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from math import prod
from typing import NamedTuple


class Move(NamedTuple):
    src_row: int
    dst_row: int
    dst_col: int
    n_cols: int


Gather = Callable[[tuple[int, ...], tuple[int, ...]], tuple[Move, ...]]


def supported_aspect_ratios(max_tiles: int) -> list[tuple[int, int]]:
    """Every (tiles high, tiles wide) grid of at most max_tiles tiles, in the order
    transformers' image_processing_mllama.get_all_supported_aspect_ratios lists them (its
    pairs, read as (height, width) by pre_compute_positional_embedding): for 4,
    [(1,1), (1,2), (1,3), (1,4), (2,1), (2,2), (3,1), (4,1)], MllamaVisionConfig's default."""
    return [(a, b) for a in range(1, max_tiles + 1) for b in range(1, max_tiles + 1)
            if a * b <= max_tiles]


def aspect_ratio_tiles(meta_shape: tuple[int, ...], hf_shape: tuple[int, ...]) -> tuple[Move, ...]:
    """Meta (tiles, tiles, P, W) -> Hugging Face (ratios + 1, tiles * P * W). Row i + 1 holds,
    for the i-th ratio (h, w), the embeddings of Meta's tiles [:h, :w] in row-major order in
    its first h * w tile slots, as Meta's TilePositionEmbedding and
    VisionEncoder.apply_positional_embedding select them per image; row 0 (padding) and the
    slots past h * w stay zero."""
    tiles, tiles_wide, *inner = meta_shape
    per_tile = prod(inner)  # values of one tile: P * W
    rows_per_tile = per_tile // inner[-1]
    ratios = supported_aspect_ratios(tiles)
    if hf_shape != (len(ratios) + 1, tiles * per_tile) or tiles != tiles_wide:
        raise ValueError(f"aspect-ratio tiles: {meta_shape} cannot make {hf_shape}")
    moves = []
    for row, (high, wide) in enumerate(ratios, start=1):
        for slot in range(high * wide):
            meta_tile = (slot // wide) * tiles_wide + slot % wide
            moves.append(Move(meta_tile * rows_per_tile, row, slot * per_tile, per_tile))
    return tuple(moves)


GATHERS: Mapping[str, Gather] = {"aspect_ratio_tiles": aspect_ratio_tiles}
