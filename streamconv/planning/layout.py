"""Meta -> Hugging Face, tensor by tensor: the family's tensor table resolved to this model.

Pure functions over shapes. Every output tensor is treated as a matrix of rows (a 1-D norm is
one row, an (experts, rows, cols) tensor experts x rows rows), so that any job, however the
budget cuts it, is "rows [a, b) of one HF tensor", built from copy blocks that each read a
contiguous byte range of one rank file. Which tensors exist,
their names, shapes, splits and transforms come from model/tensor_table.py; nothing here knows
a tensor by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from streamconv.model.row_gathers import GATHERS, Move
from streamconv.model.spec import ModelSpec
from streamconv.model.tensor_table import (
    OutputFormat,
    Split,
    TensorEntry,
    Transform,
    dims_of,
    effective_split,
    evaluate,
    full_shape,
    hf_name,
    meta_full_shape,
    meta_name,
    rank_shape,
    rotary_head_dim,
    transform_in,
    written_shape,
)
from streamconv.source.fp8_scales import FP8_DTYPE, ScaleLayout, row_scale_layout
from streamconv.system.dtypes import DType


@dataclass(frozen=True, kw_only=True)
class Piece:
    """Where the rank slices of one Meta tensor (or of one part of a fused one) land in a
    Hugging Face tensor, in resolved numbers (model/tensor_table.py says it symbolically)."""

    meta_name: str
    split: Split  # ROWS, COLS or REPLICATED (the embedding's resolved)
    src_shape: tuple[int, ...]  # the shape each rank file holds
    n_cols: int  # output columns this piece fills (all ranks together)
    col_offset: int = 0  # the first of them
    # (first output row, rows) of the band this piece fills (TensorEntry.row_offset); None:
    # every row of the output tensor. Within its band a piece is planned as if the band were
    # the whole tensor, so each split's rules apply to it unchanged.
    row_band: tuple[int, int] | None = None
    row_offset: int = 0  # ROWS: the piece's first row in each rank's tensor
    unit_rows: int = 0  # ROWS: rows per rank of one stacked unit (0 for the other splits)
    stack: int = 1  # ROWS: stacked units (experts), each split across the ranks
    transpose: bool = False  # the rank tensor is this tensor transposed
    # Each rank's band of a stacked unit is transposed (Transform.BAND_TRANSPOSE): COLS, the
    # ranks' bands are stacked down the unit's rows; ROWS, side by side across its columns.
    band_transpose: bool = False
    scale: ScaleLayout | None = None  # fp8 only: where its scales are and what they scale
    # A computed tensor's moves (model/row_gathers.py): REPLICATED rows placed in the output,
    # which is zero elsewhere.
    gather: tuple[Move, ...] | None = None


@dataclass(frozen=True)
class TensorLayout:
    hf_name: str
    shape: tuple[int, ...]
    pieces: tuple[Piece, ...]
    # The dtype in the rank files: the model's, or fp8_scales.FP8_DTYPE for the feed-forward weights
    # of Meta's FP8 release, which are dequantized with their row scales on the way.
    src_dtype: DType
    rotary_head_dim: int | None = None  # rows are permuted within heads of this many rows
    # The columns of the matrix the planner cuts, where `shape` (as written) is a reshape of
    # it (TensorEntry.stored_shape); None: shape[-1].
    matrix_cols: int | None = None

    @property
    def zero_fill(self) -> bool:
        """Whether the tensor's jobs start from zeros: a row gather fills only part of it."""
        return any(p.gather is not None for p in self.pieces)

    @property
    def scales(self) -> list[ScaleLayout]:
        """The fp8 pieces' scale layouts (none for float tensors)."""
        return [p.scale for p in self.pieces if p.scale is not None]

    @property
    def meta_name(self) -> str:
        """The (first) Meta tensor it is made from."""
        return self.pieces[0].meta_name

    @property
    def n_rows(self) -> int:
        """Every tensor is a matrix of rows: all dimensions but the last (a vector: one row)."""
        if self.matrix_cols is not None:
            return math.prod(self.shape) // self.matrix_cols
        return math.prod(self.shape[:-1])

    @property
    def n_cols(self) -> int:
        return self.shape[-1] if self.matrix_cols is None else self.matrix_cols

    @property
    def row_unit(self) -> int:
        """Jobs cut this tensor at multiples of this many rows (whole heads for q/k; the whole
        tensor when it is transposed on the way)."""
        if any(p.transpose for p in self.pieces):
            return self.n_rows
        bands = [_band_rows(p, self.n_rows) for p in self.pieces if p.band_transpose]
        if bands:
            return max(bands)
        return self.rotary_head_dim or 1


def _band_rows(piece: Piece, n_rows: int) -> int:
    """Output rows one rank band of a band-transposed piece fills: the rank's columns (COLS),
    or a whole unit (ROWS: each band is a column band of the unit's rows)."""
    if piece.split is Split.COLS:
        return piece.src_shape[-1]
    return n_rows // piece.stack


@dataclass(frozen=True, kw_only=True)
class ByteRange:
    """One positioned read: `n_bytes` at `offset_bytes` of input file `file_idx`, an index into
    Checkpoint.read_paths (the rank files, then the FP8 scale files), which is how RankReader
    numbers the files it opens."""

    file_idx: int
    offset_bytes: int
    n_bytes: int


@dataclass(frozen=True, kw_only=True)
class CopyBlock:
    """Rows of one rank file's tensor -> a rectangle of the output tensor (with `transpose`,
    the rank's rows are the rectangle's columns)."""

    rank_idx: int
    meta_name: str
    src_row_start: int
    n_rows: int
    dst_row_start: int
    dst_col_start: int
    n_cols: int
    transpose: bool = False
    scale: ScaleLayout | None = None  # the piece's, for fp8 blocks
    # Where its bytes are, and its scales' (fp8 blocks), once the plan is located against the
    # tensor index (source_ranges.locate_reads); None in a plan of shapes alone.
    read: ByteRange | None = None
    scale_read: ByteRange | None = None


def _piece(entry: TensorEntry, layer_idx: int | None, spec: ModelSpec,
           dims: dict[str, int], output_format: OutputFormat) -> Piece:
    src_shape = rank_shape(entry, spec)
    split = effective_split(entry, spec)
    stack = evaluate(entry.stack, dims) if entry.stack else 1
    row_offset, unit_rows = 0, 0
    transform = transform_in(entry, output_format)
    band = transform is Transform.BAND_TRANSPOSE
    if entry.part is not None:
        row_offset, unit_rows = (evaluate(e, dims) for e in entry.part)
    elif split is Split.ROWS or band:
        unit_rows = src_shape[0] // stack
    meta_cols = meta_full_shape(entry, spec)[-1]
    transpose = transform is Transform.TRANSPOSE
    n_cols = (full_shape(entry, spec)[-1] if split is Split.ROWS or transpose or band
              else meta_cols)
    col_offset = evaluate(entry.col_offset, dims) if entry.col_offset else 0
    gather = None
    if entry.gather is not None:
        assert split is Split.REPLICATED and entry.part is None and stack == 1, entry
        gather = GATHERS[entry.gather](meta_full_shape(entry, spec), full_shape(entry, spec))
    row_band = None
    if entry.row_offset is not None:
        assert entry.part is None and stack == 1 and not (transpose or band), entry
        row_band = (evaluate(entry.row_offset, dims),
                    math.prod(meta_full_shape(entry, spec)[:-1]))
    return Piece(meta_name=meta_name(entry, layer_idx), split=split, src_shape=src_shape,
                 n_cols=n_cols, col_offset=col_offset, row_offset=row_offset,
                 row_band=row_band, unit_rows=unit_rows, stack=stack, transpose=transpose,
                 band_transpose=band, gather=gather)


def hf_layouts(spec: ModelSpec, *, quantized: frozenset[str] | None = None,
               output_format: OutputFormat = OutputFormat.SAFETENSORS) -> list[TensorLayout]:
    """All output tensors in the order HF's save_pretrained writes them, entries that fill the
    same tensor merged into its pieces. The Meta tensors stored as fp8 are spec.quantized (or
    `quantized`, for planner tests); every other one is in spec.dtype. The transforms are the
    ones `output_format` applies (tensor_table.FORMAT_TRANSFORMS)."""
    if quantized is None:
        quantized = spec.quantized
    dims = dims_of(spec)
    found: dict[str, tuple[TensorEntry, list[Piece], int | None]] = {}
    for entry, layer_idx, hf_layer_idx in spec.tensors.placed(spec.layer_sets, output_format):
        if entry.unless_tied and spec.tie_word_embeddings:
            continue
        name = hf_name(entry, hf_layer_idx)
        first, pieces, rotary = found.setdefault(
            name, (entry, [], rotary_head_dim(entry, spec, output_format)))
        pieces.append(_piece(entry, layer_idx, spec, dims, output_format))
    layouts = []
    for name, (first, pieces, rotary) in found.items():
        shape = written_shape(first, spec)
        matrix_cols = full_shape(first, spec)[-1] if first.stored_shape else None
        assert len({p.row_band is None for p in pieces}) == 1, f"{name}: every piece or none " \
            "of a tensor has a row band (TensorEntry.row_offset)"
        if pieces[0].meta_name not in quantized:
            layouts.append(TensorLayout(name, shape, tuple(pieces), spec.dtype, rotary,
                                        matrix_cols))
            continue
        scaled = tuple(replace(p, scale=spec.scale_layouts.get(p.meta_name)
                               or row_scale_layout(p.meta_name)) for p in pieces)
        layouts.append(TensorLayout(name, shape, scaled, FP8_DTYPE, rotary, matrix_cols))
    return layouts


def _replicas(piece: Piece, layout: TensorLayout, n_ranks: int) -> int:
    """How many ranks hold each row group of a ROWS piece (more than one: 405B's kv heads in 16
    ranks)."""
    return n_ranks * piece.unit_rows * piece.stack // layout.n_rows


def _in_band(piece: Piece, layout: TensorLayout) -> tuple[Piece, TensorLayout, int]:
    """A row-band piece as a piece of a tensor that is its band alone, and the band's first
    output row; any other piece as it is."""
    if piece.row_band is None:
        return piece, layout, 0
    first, n_rows = piece.row_band
    return replace(piece, row_band=None), replace(layout, shape=(n_rows, layout.n_cols)), first


def _piece_blocks(piece: Piece, layout: TensorLayout, n_ranks: int, row_start: int,
                  row_stop: int) -> list[CopyBlock]:
    """The blocks of one piece for output rows [row_start, row_stop): a row-band piece gives
    those of the rows that fall in its band (a job may cut a band anywhere), planned within
    the band and moved down to where the band starts."""
    if piece.row_band is None:
        return _whole_piece_blocks(piece, layout, n_ranks, row_start, row_stop)
    inner, band_layout, first = _in_band(piece, layout)
    start, stop = max(row_start, first), min(row_stop, first + band_layout.n_rows)
    if start >= stop:
        return []
    return [replace(block, dst_row_start=block.dst_row_start + first)
            for block in _whole_piece_blocks(inner, band_layout, n_ranks, start - first,
                                             stop - first)]


def _whole_piece_blocks(piece: Piece, layout: TensorLayout, n_ranks: int, row_start: int,
                        row_stop: int) -> list[CopyBlock]:
    n_rows = row_stop - row_start
    if piece.gather is not None:
        return [CopyBlock(rank_idx=0, meta_name=piece.meta_name, src_row_start=move.src_row,
                          n_rows=1, dst_row_start=move.dst_row, dst_col_start=move.dst_col,
                          n_cols=move.n_cols)
                for move in piece.gather if row_start <= move.dst_row < row_stop]
    if piece.band_transpose:
        return _band_blocks(piece, layout, n_ranks, row_start, row_stop)
    if piece.transpose:
        assert (row_start, row_stop) == (0, layout.n_rows), "a transposed tensor is one job"
        return [CopyBlock(rank_idx=0, meta_name=piece.meta_name, src_row_start=0,
                          n_rows=n_rows, dst_row_start=0, dst_col_start=piece.col_offset,
                          n_cols=piece.n_cols, transpose=True, scale=piece.scale)]
    if piece.split is Split.REPLICATED:
        return [CopyBlock(rank_idx=0, meta_name=piece.meta_name,
                          src_row_start=piece.row_offset + row_start, n_rows=n_rows,
                          dst_row_start=row_start, dst_col_start=piece.col_offset,
                          n_cols=piece.n_cols, scale=piece.scale)]
    if piece.split is Split.COLS:
        width = piece.src_shape[-1]
        return [CopyBlock(rank_idx=s, meta_name=piece.meta_name,
                          src_row_start=piece.row_offset + row_start, n_rows=n_rows,
                          dst_row_start=row_start, dst_col_start=piece.col_offset + s * width,
                          n_cols=width, scale=piece.scale)
                for s in range(n_ranks)]
    unit = layout.n_rows // piece.stack  # output rows of one stacked unit
    per_rank = piece.unit_rows
    replicas = _replicas(piece, layout, n_ranks)
    blocks = []
    row = row_start
    while row < row_stop:
        stacked, within = divmod(row, unit)
        group, offset = divmod(within, per_rank)
        stop = min(row_stop, stacked * unit + (group + 1) * per_rank)
        blocks.append(CopyBlock(rank_idx=group * replicas, meta_name=piece.meta_name,
                                src_row_start=piece.row_offset + stacked * per_rank + offset,
                                n_rows=stop - row, dst_row_start=row,
                                dst_col_start=piece.col_offset, n_cols=piece.n_cols,
                                scale=piece.scale))
        row = stop
    return blocks


def _band_blocks(piece: Piece, layout: TensorLayout, n_ranks: int, row_start: int,
                 row_stop: int) -> list[CopyBlock]:
    """One transposed block per rank band: the rank's rows of one unit (unit_rows of them, a
    contiguous read) become a rectangle of the unit, unit_rows wide."""
    unit = layout.n_rows // piece.stack
    band = _band_rows(piece, layout.n_rows)
    assert row_start % band == 0 and row_stop % band == 0, "jobs cut at whole bands"
    blocks = []
    for row in range(row_start, row_stop, band):
        stacked, within = divmod(row, unit)
        src_row = stacked * piece.unit_rows
        if piece.split is Split.COLS:
            blocks.append(CopyBlock(rank_idx=within // band, meta_name=piece.meta_name,
                                    src_row_start=src_row, n_rows=band, dst_row_start=row,
                                    dst_col_start=piece.col_offset, n_cols=piece.unit_rows,
                                    transpose=True))
            continue
        blocks += [CopyBlock(rank_idx=rank, meta_name=piece.meta_name, src_row_start=src_row,
                             n_rows=band, dst_row_start=row,
                             dst_col_start=piece.col_offset + rank * piece.unit_rows,
                             n_cols=piece.unit_rows, transpose=True)
                   for rank in range(n_ranks)]
    return blocks


def copy_blocks(layout: TensorLayout, spec: ModelSpec, row_start: int,
                row_stop: int) -> list[CopyBlock]:
    """The rank reads that produce rows [row_start, row_stop) of one output tensor.

    ROWS pieces whose ranks outnumber the distinct row groups (kv heads of 405B in 16 ranks)
    read each group from the first rank that holds it.
    """
    return [block for piece in layout.pieces
            for block in _piece_blocks(piece, layout, spec.n_ranks, row_start, row_stop)]


def replica_ranks(piece: Piece, layout: TensorLayout, spec: ModelSpec) -> list[list[int]]:
    """For each distinct row group of a piece, every rank holding a copy (agreement checks)."""
    piece, layout, _ = _in_band(piece, layout)
    if piece.split is Split.REPLICATED:
        return [list(range(spec.n_ranks))]
    if piece.split is Split.COLS or piece.band_transpose:
        return [[s] for s in range(spec.n_ranks)]
    replicas = _replicas(piece, layout, spec.n_ranks)
    return [list(range(g, g + replicas)) for g in range(0, spec.n_ranks, replicas)]
