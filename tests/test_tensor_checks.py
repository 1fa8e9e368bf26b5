"""model/tensor_checks.py: every rank file of a good tiny checkpoint passes; each damage (a
layer more or less, a tensor missing from one rank, a rank missing or extra, a wrong shape, a
second dtype) is refused with a message that names the rank file and says "rank file"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fixtures.synthetic import SyntheticSpec, rank_shapes, tiny
from streamconv.errors import CheckpointError, ParamsError
from streamconv.model.detect import detect_model
from streamconv.model.family import Family
from streamconv.model.spec import ModelSpec
from streamconv.model.tensor_checks import (
    check_layer_count,
    check_names,
    check_rank_count,
    check_same_names,
    check_shapes,
    source_dtype,
)
from streamconv.model.tensor_table import LLAMA_TENSORS
from streamconv.source.params import MetaParams, read_params
from streamconv.source.tensor_index import Checkpoint, TensorRef, open_checkpoint
from streamconv.system import dtypes

MakeCkpt = Callable[[SyntheticSpec], Path]
TWO_RANKS = tiny(Family.LLAMA2, n_ranks=2, with_tokenizer=False)  # float32, dim 64, 2 layers
WQ0 = "layers.0.attention.wq.weight"


@pytest.fixture
def opened(make_checkpoint: MakeCkpt) -> tuple[MetaParams, Checkpoint]:
    folder = make_checkpoint(TWO_RANKS)
    return read_params(folder), open_checkpoint(folder)


def _spec(params: MetaParams, ckpt: Checkpoint) -> ModelSpec:
    return detect_model(params, ckpt, family_override=Family.LLAMA2, tokenizer_kind=None,
                        instruct=(False, "test"))


def _with_rank(ckpt: Checkpoint, rank_idx: int, refs: dict[str, TensorRef]) -> Checkpoint:
    tensors = list(ckpt.tensors)
    tensors[rank_idx] = refs
    return replace(ckpt, tensors=tuple(tensors))


def _says_rank_file(error: pytest.ExceptionInfo[Exception]) -> str:
    message = str(error.value)
    assert "rank file" in message and "shard" not in message, message
    return message


def test_a_good_checkpoint_passes_every_check(opened: tuple[MetaParams, Checkpoint]) -> None:
    params, ckpt = opened
    assert [set(refs) for refs in ckpt.tensors] == [set(rank_shapes(TWO_RANKS))] * 2
    check_layer_count(ckpt, params)
    check_names(ckpt, params, LLAMA_TENSORS, params.n_layers)
    check_same_names(ckpt, LLAMA_TENSORS)
    check_rank_count(ckpt, LLAMA_TENSORS, params.dim)
    check_shapes(_spec(params, ckpt), ckpt)
    assert source_dtype(ckpt, LLAMA_TENSORS, frozenset()) == dtypes.FLOAT32


@pytest.mark.parametrize(("n_layers", "words"), [(3, "lacks layers.2. and beyond"),
                                                 (1, "holds layers.1. and beyond")])
def test_layer_count_against_params(opened: tuple[MetaParams, Checkpoint], n_layers: int,
                                    words: str) -> None:
    params, ckpt = opened
    with pytest.raises(CheckpointError, match=words) as caught:
        check_layer_count(ckpt, replace(params, n_layers=n_layers))
    assert str(ckpt.rank_paths[0]) in str(caught.value)


def test_a_damaged_n_layers_costs_nothing(opened: tuple[MetaParams, Checkpoint]) -> None:
    params, ckpt = opened
    with pytest.raises(CheckpointError, match="n_layers=1000000"):
        check_layer_count(ckpt, replace(params, n_layers=1_000_000))


def test_a_tensor_missing_from_one_rank_is_named(opened: tuple[MetaParams, Checkpoint]) -> None:
    _, ckpt = opened
    rank1 = {k: v for k, v in ckpt.tensors[1].items() if k != WQ0}
    with pytest.raises(CheckpointError) as caught:
        check_same_names(_with_rank(ckpt, 1, rank1), LLAMA_TENSORS)
    message = _says_rank_file(caught)
    assert f"{ckpt.rank_paths[1]} (rank 1) lacks {WQ0}" in message
    extra = {**ckpt.tensors[1], "layers.0.attention.wz.weight": ckpt.tensors[1][WQ0]}
    with pytest.raises(CheckpointError, match=r"\(rank 1\) holds layers.0.attention.wz.weight"):
        check_same_names(_with_rank(ckpt, 1, extra), LLAMA_TENSORS)


def test_names_against_the_table(opened: tuple[MetaParams, Checkpoint]) -> None:
    params, ckpt = opened
    rank0 = {k: v for k, v in ckpt.tensors[0].items() if k != "norm.weight"}
    with pytest.raises(CheckpointError, match="lacks norm.weight"):
        check_names(_with_rank(ckpt, 0, rank0), params, LLAMA_TENSORS, params.n_layers)
    unknown = {**ckpt.tensors[0], "layers.0.adapter.weight": ckpt.tensors[0][WQ0]}
    with pytest.raises(CheckpointError, match="does not know: layers.0.adapter.weight"):
        check_names(_with_rank(ckpt, 0, unknown), params, LLAMA_TENSORS, params.n_layers)
    hf = {**ckpt.tensors[0], "model.norm.weight": ckpt.tensors[0]["norm.weight"]}
    with pytest.raises(CheckpointError, match="already in Hugging Face format"):
        check_names(_with_rank(ckpt, 0, hf), params, LLAMA_TENSORS, params.n_layers)


def test_rank_count_from_wq_rows(opened: tuple[MetaParams, Checkpoint]) -> None:
    params, ckpt = opened
    one = replace(ckpt, rank_paths=ckpt.rank_paths[:1], tensors=ckpt.tensors[:1])
    with pytest.raises(CheckpointError) as caught:
        check_rank_count(one, LLAMA_TENSORS, params.dim)
    assert "missing consolidated.01.pth (found 1 of 2 rank files)" in _says_rank_file(caught)
    three = replace(ckpt, rank_paths=(*ckpt.rank_paths, ckpt.rank_paths[1]),
                    tensors=(*ckpt.tensors, ckpt.tensors[1]))
    with pytest.raises(CheckpointError) as caught:
        check_rank_count(three, LLAMA_TENSORS, params.dim)
    assert "holds 3 rank files but their shapes and params.json make 2" in _says_rank_file(caught)


def test_a_wrong_shape_names_tensor_file_and_expectation(
        opened: tuple[MetaParams, Checkpoint]) -> None:
    params, ckpt = opened
    spec = _spec(params, ckpt)
    bad = replace(ckpt.tensors[1][WQ0], shape=(33, 64))
    with pytest.raises(CheckpointError) as caught:
        check_shapes(spec, _with_rank(ckpt, 1, {**ckpt.tensors[1], WQ0: bad}))
    message = _says_rank_file(caught)
    assert f"{WQ0} in {ckpt.rank_paths[1]} has shape 33x64, expected 32x64" in message
    assert "other rank files" in message


@pytest.mark.parametrize(("changes", "words"), [
    ({"vocab_size": 513}, "vocab_size=513 does not divide into 2 rank files"),
    ({"n_heads": 3}, "n_heads=3 does not divide into 2 rank files"),
    ({"n_kv_heads": 3}, "n_kv_heads=3 and 2 rank files do not divide either way"),
])
def test_sizes_that_do_not_split_over_the_ranks(opened: tuple[MetaParams, Checkpoint],
                                                changes: dict[str, Any], words: str) -> None:
    params, ckpt = opened
    spec = replace(_spec(params, ckpt), **changes)
    with pytest.raises(ParamsError, match=words) as caught:
        check_shapes(spec, ckpt)
    _says_rank_file(caught)


def test_source_dtype(opened: tuple[MetaParams, Checkpoint]) -> None:
    _, ckpt = opened
    half = replace(ckpt.tensors[1][WQ0], dtype=dtypes.BFLOAT16)
    mixed = _with_rank(ckpt, 1, {**ckpt.tensors[1], WQ0: half})
    with pytest.raises(CheckpointError) as caught:
        source_dtype(mixed, LLAMA_TENSORS, frozenset())
    message = _says_rank_file(caught)
    assert "float32 (" in message and f"bfloat16 (consolidated.01.pth:{WQ0})" in message
    # Names listed as quantized (FP8 weights with scale files) are left out of the vote.
    assert source_dtype(mixed, LLAMA_TENSORS, frozenset({WQ0})) == dtypes.FLOAT32
    ints = replace(ckpt, tensors=tuple({k: replace(v, dtype=dtypes.INT32) for k, v in r.items()}
                                       for r in ckpt.tensors))
    with pytest.raises(CheckpointError, match="one float dtype, found int32"):
        source_dtype(ints, LLAMA_TENSORS, frozenset())
