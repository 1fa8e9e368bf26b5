"""Every rank file against the family's tensor table, before anything is written: the names
(nothing missing, nothing unknown), the number of rank files, and every shape."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from streamconv.errors import CheckpointError, ParamsError
from streamconv.model.tensor_table import LayerSets, TensorTable, rank_shape
from streamconv.source.params import MetaParams
from streamconv.source.rank_files import missing_ranks_error
from streamconv.source.tensor_index import Checkpoint, TensorRef
from streamconv.system import dtypes
from streamconv.system.dtypes import DType

if TYPE_CHECKING:
    from streamconv.model.spec import ModelSpec


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


# Text-model layers are `layers.N.` in every family (LLaMA 1-3, Llama 4).
_TEXT_LAYER = re.compile(r"^layers\.(\d+)\.")


def check_layer_count(ckpt: Checkpoint, params: MetaParams) -> None:
    """n_layers against the layers the rank files hold, before any per-layer name is built:
    a damaged n_layers (1e6) must cost no memory or time of its own."""
    found: set[int] = set()
    for refs in ckpt.tensors:
        found.update(int(m.group(1)) for n in refs if (m := _TEXT_LAYER.match(n)))
    if not found or max(found) + 1 == params.n_layers:
        return  # no layers at all: check_names names what is missing
    path = ckpt.rank_paths[0]
    if max(found) + 1 < params.n_layers:
        raise CheckpointError(
            f"{path} lacks layers.{max(found) + 1}. and beyond (params.json says "
            f"n_layers={params.n_layers}, the rank files hold {max(found) + 1} layers); the "
            "file or params.json belongs to another model")
    raise CheckpointError(
        f"{path} holds layers.{params.n_layers}. and beyond ({max(found) + 1} layers, but "
        f"params.json says n_layers={params.n_layers}); the file or params.json belongs to "
        "another model")


def check_same_names(ckpt: Checkpoint, table: TensorTable) -> None:
    """Every rank file holds the same tensors (a model-parallel rank is a slice of each): a
    tensor absent from one rank is named here, never a KeyError in the middle of a job."""
    first = {n for n in ckpt.tensors[0] if not table.is_ignored(n)}
    for rank_idx, refs in enumerate(ckpt.tensors[1:], start=1):
        names = {n for n in refs if not table.is_ignored(n)}
        lacks, extra = sorted(first - names), sorted(names - first)
        path, path0 = ckpt.rank_paths[rank_idx], ckpt.rank_paths[0].name
        if lacks:
            raise CheckpointError(f"{path} (rank {rank_idx}) lacks {_listed(lacks)}, which "
                                  f"{path0} holds; every rank file holds the same tensors: "
                                  "download it again")
        if extra:
            raise CheckpointError(f"{path} (rank {rank_idx}) holds {_listed(extra)}, which "
                                  f"{path0} lacks; every rank file holds the same tensors: "
                                  "download the rank files again together")


def check_names(ckpt: Checkpoint, params: MetaParams, table: TensorTable,
                layers: int | LayerSets) -> None:
    expected = set(table.meta_names(layers))
    required = set(table.meta_names(layers, required_only=True))
    for rank_idx, refs in enumerate(ckpt.tensors):
        path = ckpt.rank_paths[rank_idx]
        unknown = sorted(n for n in set(refs) - expected if not table.is_ignored(n))
        if unknown and all(n.startswith(("model.", "lm_head.")) for n in unknown):
            raise CheckpointError(f"{path} holds Hugging Face tensor names ({unknown[0]}, ...), "
                                  "not Meta's: it is already in Hugging Face format and needs no "
                                  "conversion")
        missing = sorted(required - set(refs))
        if missing:
            raise CheckpointError(
                f"{path} lacks {_listed(missing)} (params.json says n_layers={params.n_layers});"
                " the file or params.json belongs to another model")
        if unknown:
            raise CheckpointError(
                f"{path} holds tensors streamconv does not know: {_listed(unknown)}; it is not "
                "a plain LLaMA text checkpoint (n_layers in params.json may be wrong)")


def check_rank_count(ckpt: Checkpoint, table: TensorTable, merged_rows: int) -> None:
    """q's Meta tensor (LLaMA's wq, Llama 4's fused wqkv) is split by rows in every family:
    its `merged_rows` over the rows of one rank file tell how many rank files there are."""
    wq = ckpt.tensors[0].get(table.name("q", 0))
    if wq is None or len(wq.shape) != 2 or wq.shape[0] == 0 or merged_rows % wq.shape[0]:
        return  # check_names and check_shapes say what is wrong
    expected = merged_rows // wq.shape[0]
    if expected > ckpt.n_ranks:
        raise missing_ranks_error(ckpt.input_dir, list(range(ckpt.n_ranks, expected)),
                                  ckpt.n_ranks, expected)
    if expected < ckpt.n_ranks:
        raise CheckpointError(f"{ckpt.input_dir} holds {ckpt.n_ranks} rank files but their "
                              f"shapes and params.json make {expected}; remove consolidated files "
                              "that belong to another model")


def check_shapes(spec: ModelSpec, ckpt: Checkpoint) -> None:
    n = spec.n_ranks
    splits = {"n_heads": spec.n_heads, "ffn_dim": spec.ffn_dim, "vocab_size": spec.vocab_size}
    for what, size in splits.items():
        if size % n:
            raise ParamsError(f"{what}={size} does not divide into {n} rank files; a rank file "
                              "is missing or extra in the input folder")
    if spec.n_kv_heads % n and n % spec.n_kv_heads:
        raise ParamsError(f"n_kv_heads={spec.n_kv_heads} and {n} rank files do not divide either "
                          "way; a rank file is missing or extra in the input folder")
    for refs in ckpt.tensors:
        for meta_name, ref in refs.items():
            entry = spec.tensors.lookup(meta_name)
            if entry is not None:
                _check_one(spec, ref, rank_shape(entry, spec))


def _check_one(spec: ModelSpec, ref: TensorRef, expected: tuple[int, ...]) -> None:
    if ref.shape != expected:
        got = "x".join(map(str, ref.shape))
        want = "x".join(map(str, expected))
        raise CheckpointError(f"{ref.meta_name} in {ref.path} has shape {got}, expected {want} "
                              f"for {spec.label} with {spec.n_ranks} rank file(s); the file "
                              "does not belong with params.json and the other rank files")


def source_dtype(ckpt: Checkpoint, table: TensorTable,
                  quantized: frozenset[str]) -> DType:
    """The float dtype of every tensor except Meta's FP8 feed-forward weights (`quantized`,
    checked against their scale files instead); an FP8 release's dtype is its bf16."""
    found_dtypes: dict[DType, str] = {}
    for refs in ckpt.tensors:
        for ref in refs.values():
            if not table.is_ignored(ref.meta_name) and ref.meta_name not in quantized:
                found_dtypes.setdefault(ref.dtype, f"{ref.path.name}:{ref.meta_name}")
    if len(found_dtypes) != 1 or not set(found_dtypes) <= set(dtypes.FLOATS):
        found = ", ".join(f"{d} ({where})" for d, where in found_dtypes.items())
        raise CheckpointError(f"weights must share one float dtype, found {found}; the rank "
                              "files come from different downloads: fetch them again together")
    return next(iter(found_dtypes))
