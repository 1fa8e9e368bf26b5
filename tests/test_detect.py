"""model/detect.py: params.json and tensor shapes of tiny generated checkpoints resolve to the
spec the generator was given, every inferred value names its source, and disagreements between
params.json, the tensors and --llama-version are refused before anything is written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from fixtures.synthetic import SyntheticSpec, tiny
from streamconv.errors import CheckpointError, ParamsError
from streamconv.model.detect import check_supported, detect_model
from streamconv.model.family import Family
from streamconv.model.spec import ModelSpec
from streamconv.source.params import MetaParams, read_params
from streamconv.source.tensor_index import Checkpoint, open_checkpoint

MakeCkpt = Callable[[SyntheticSpec], Path]
BASE = (False, "test")


def _opened(make_checkpoint: MakeCkpt, spec: SyntheticSpec) -> tuple[MetaParams, Checkpoint]:
    folder = make_checkpoint(spec)
    return read_params(folder), open_checkpoint(folder)


def _detect(params: MetaParams, ckpt: Checkpoint, *, family: Family | None,
            override: Family | None = None) -> ModelSpec:
    kind = None if family is None else "tiktoken" if family.is_llama3 else "sentencepiece"
    return detect_model(params, ckpt, family_override=override, tokenizer_kind=kind,
                        instruct=BASE)


FAMILIES = [Family.LLAMA1, Family.LLAMA2, Family.CODE_LLAMA, Family.LLAMA3, Family.LLAMA3_1,
            Family.LLAMA3_2]


@pytest.mark.parametrize("n_ranks", [1, 2])
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.value)
def test_detected_spec_is_the_generated_one(make_checkpoint: MakeCkpt, family: Family,
                                            n_ranks: int) -> None:
    synthetic = tiny(family, n_ranks=n_ranks, with_tokenizer=False)
    params, ckpt = _opened(make_checkpoint, synthetic)
    spec = _detect(params, ckpt, family=family)
    assert spec.family is family, spec.sources["family"]
    got = (spec.n_ranks, spec.dim, spec.n_layers, spec.n_heads, spec.n_kv_heads,
           spec.vocab_size, spec.ffn_dim, spec.dtype.name, spec.tie_word_embeddings,
           spec.norm_eps)
    want = (n_ranks, synthetic.dim, synthetic.n_layers, synthetic.n_heads, synthetic.kv_heads,
            synthetic.vocab_size, synthetic.ffn_dim, synthetic.dtype, synthetic.tied_output,
            synthetic.norm_eps)
    assert got == want
    # One rank splits nothing: its embedding reads as vocabulary rows whatever the family.
    assert spec.embedding_split_dim == (synthetic.embedding_split_dim if n_ranks > 1 else 0)
    assert spec.sources["family"].startswith("detected: ")
    assert spec.sources["ffn_dim"].endswith(f"x {n_ranks} rank file(s)")
    assert not spec.doubts


@pytest.mark.parametrize(("n_ranks", "rule"), [(1, "embedding rows x rank files"),
                                                (2, "embedding rows (split by hidden columns)")])
def test_vocab_size_from_the_embedding_names_its_rule(make_checkpoint: MakeCkpt, n_ranks: int,
                                                      rule: str) -> None:
    """LLaMA 1/2 ship vocab_size -1: the size comes from the embedding's shape."""
    params, ckpt = _opened(make_checkpoint, tiny(Family.LLAMA2, n_ranks=n_ranks,
                                                 with_tokenizer=False))
    assert params.vocab_size is None
    spec = _detect(params, ckpt, family=Family.LLAMA2)
    assert spec.vocab_size == 512
    assert spec.sources["vocab_size"] == rule


def test_vocab_size_in_params_must_match_the_embedding(make_checkpoint: MakeCkpt) -> None:
    params, ckpt = _opened(make_checkpoint, tiny(Family.LLAMA3, n_ranks=2, with_tokenizer=False))
    assert _detect(params, ckpt, family=Family.LLAMA3).sources["vocab_size"] == "params.json"
    with pytest.raises(ParamsError, match="vocab_size=1000 but tok_embeddings.weight gives 1280"):
        _detect(replace(params, vocab_size=1000), ckpt, family=Family.LLAMA3)


def test_override_wins_and_is_named(make_checkpoint: MakeCkpt) -> None:
    params, ckpt = _opened(make_checkpoint, tiny(Family.LLAMA2, with_tokenizer=False))
    spec = _detect(params, ckpt, family=Family.LLAMA2, override=Family.CODE_LLAMA)
    assert spec.family is Family.CODE_LLAMA
    assert spec.sources["family"] == "--llama-version"


def test_override_against_the_embedding_split_is_refused(make_checkpoint: MakeCkpt) -> None:
    """LLaMA 3 splits the embedding by vocabulary; LLaMA 2's ranks split it by hidden size."""
    params, ckpt = _opened(make_checkpoint, tiny(Family.LLAMA2, n_ranks=2, with_tokenizer=False))
    with pytest.raises(ParamsError) as caught:
        _detect(params, ckpt, family=Family.LLAMA2, override=Family.LLAMA3)
    message = str(caught.value)
    assert "rank files split it the other way" in message and "shard" not in message


def test_embedding_that_fits_no_dim_is_refused(make_checkpoint: MakeCkpt) -> None:
    params, ckpt = _opened(make_checkpoint, tiny(Family.LLAMA2, n_ranks=2, with_tokenizer=False))
    # dim=80: wq's 32 rows per rank do not divide it, so the rank count is left to the shapes.
    with pytest.raises(ParamsError, match="32 per rank file, which fits neither dim=80"):
        _detect(replace(params, dim=80), ckpt, family=Family.LLAMA2)


def test_kv_head_copies_count_once(make_checkpoint: MakeCkpt) -> None:
    """405B MP16's params.json says as many kv heads as ranks while neighbouring ranks hold
    copies of one head: 4 ranks over 2 real kv heads, with params.json saying 4."""
    synthetic = tiny(Family.LLAMA3_1, n_ranks=4, with_tokenizer=False)
    params, ckpt = _opened(make_checkpoint, synthetic)
    assert _detect(params, ckpt, family=Family.LLAMA3_1).n_kv_heads == 2
    spec = _detect(replace(params, n_kv_heads=4), ckpt, family=Family.LLAMA3_1)
    assert spec.n_kv_heads == 2
    assert "every 2 neighbouring ranks hold the same wk/wv" in spec.sources["n_kv_heads"]


def test_untied_family_without_output_is_refused(make_checkpoint: MakeCkpt) -> None:
    params, ckpt = _opened(make_checkpoint, tiny(Family.LLAMA2, with_tokenizer=False))
    stripped = replace(ckpt, tensors=tuple({k: v for k, v in refs.items() if k != "output.weight"}
                                           for refs in ckpt.tensors))
    with pytest.raises(CheckpointError, match="lacks output.weight, which every LLaMA 2"):
        _detect(params, stripped, family=Family.LLAMA2, override=Family.LLAMA2)


@pytest.mark.parametrize("key", ["quantization_args"])
def test_unsupported_releases_are_named(tmp_path: Path, key: str) -> None:
    params = MetaParams(dim=64, n_layers=2, n_heads=8, n_kv_heads=None, vocab_size=None,
                        multiple_of=None, ffn_dim_multiplier=None, norm_eps=1e-5,
                        rope_theta=None, use_scaled_rope=False, raw={key: {}})
    with pytest.raises(ParamsError, match=f"{key} in params.json"):
        check_supported(params, tmp_path)
    check_supported(replace(params, raw={"dim": 64}), tmp_path)
