"""config.json of real Scout and Maverick shapes against the published files.

The Meta checkpoints are described by their per-rank shapes only (fixtures/llama4_checkpoint.py's
rank_shapes on the meta device, real dimensions, all 48 layers and 34 vision layers, 8 ranks),
so detection runs on the real sizes without the 200-800 GB of data; its config.json is compared
field by field with what docs/llama4_published.json records as seen in the published
meta-llama repos (with sources there). `_attn_implementation_autoset` (transformers' run-time
state) and `transformers_version` (no transformers wrote our file) are the only fields of the
published files not written.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from fixtures.llama4_checkpoint import Llama4Spec, VisionSpec, params_json, rank_shapes
from streamconv.model.family import Family
from streamconv.model.hf_config import config_dict
from streamconv.model.llama4 import detect_llama4
from streamconv.source.params import read_params
from streamconv.source.tensor_index import Checkpoint, TensorRef
from streamconv.system import dtypes

PUBLISHED = json.loads((REPO / "docs" / "llama4_published.json").read_text())["repos"]
NOT_WRITTEN = {"_attn_implementation_autoset", "transformers_version"}

_SCOUT = Llama4Spec(dim=5120, n_layers=48, n_heads=40, n_kv_heads=8, vocab_size=202048,
                    multiple_of=2048, ffn_dim_multiplier=1.2, ffn_exp=4.0, num_experts=16,
                    attention_chunk_size=8192, n_ranks=8,
                    vision=VisionSpec(image_size=336, patch_size=14, dim=1408, n_layers=34,
                                      n_heads=16, mlp_ratio=4.0, output_dim=4096))
_MAVERICK = replace(_SCOUT, num_experts=128, interleave_moe_layer_step=2, use_qk_norm=False,
                    use_scaled_rope=False)


def _checkpoint(spec: Llama4Spec, folder: Path) -> Checkpoint:
    """Shapes without data: TensorRefs at made-up offsets (nothing is read)."""
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params_json(spec)))
    shapes = rank_shapes(spec)
    paths = tuple(folder / f"consolidated.{i:02d}.pth" for i in range(spec.n_ranks))
    tensors = tuple({name: TensorRef(rank, name, paths[rank], dtypes.BFLOAT16, shape, 0)
                     for name, shape in shapes.items()} for rank in range(spec.n_ranks))
    return Checkpoint(folder, paths, tensors, (), ())


def _written(spec: Llama4Spec, tmp_path: Path, *, instruct: bool) -> dict[str, Any]:
    ckpt = _checkpoint(spec, tmp_path / "meta")
    model = detect_llama4(read_params(ckpt.input_dir), ckpt, family=Family.LLAMA4,
                          instruct=(instruct, "test"))
    return json.loads(json.dumps(config_dict(model, dtype=dtypes.BFLOAT16)))


def _differences(seen: dict[str, Any], written: dict[str, Any], where: str = "") -> list[str]:
    problems = []
    for key, value in seen.items():
        if key in NOT_WRITTEN:
            continue
        if isinstance(value, dict) and isinstance(written.get(key), dict):
            problems += _differences(value, written[key], f"{where}{key}.")
        elif written.get(key, "<absent>") != value:
            problems.append(f"{where}{key}: published {value!r}, written "
                            f"{written.get(key, '<absent>')!r}")
    return problems


@pytest.mark.parametrize(("repo", "spec", "instruct"), [
    ("meta-llama/Llama-4-Scout-17B-16E", _SCOUT, False),
    ("meta-llama/Llama-4-Maverick-17B-128E-Instruct", _MAVERICK, True),
])
def test_config_equals_the_published_fields(repo: str, spec: Llama4Spec, instruct: bool,
                                            tmp_path: Path) -> None:
    written = _written(spec, tmp_path, instruct=instruct)
    seen = PUBLISHED[repo]["config"]["seen"]
    assert _differences(seen, written) == []
    # Nothing beyond the published keys, except the vision config where the seen Scout copy
    # stops before it, and Maverick's no_rope_layers, which its copy may have dropped.
    extra = set(written["text_config"]) - set(seen["text_config"])
    assert extra <= {"use_qk_norm", "vocab_size", "torch_dtype", "use_cache", "no_rope_layers"}
    assert set(written) - set(seen) <= {"torch_dtype", "vision_config"}
    if "vision_config" in seen:
        assert set(written["vision_config"]) == set(seen["vision_config"]) - NOT_WRITTEN


def test_context_lengths_of_the_four_repos(tmp_path: Path) -> None:
    got = {(name, instruct): _written(spec, tmp_path / f"{name}-{instruct}", instruct=instruct)
           ["text_config"]["max_position_embeddings"]
           for name, spec in (("scout", _SCOUT), ("maverick", _MAVERICK))
           for instruct in (False, True)}
    assert got == {("scout", False): 262144, ("scout", True): 10485760,
                   ("maverick", False): 262144, ("maverick", True): 1048576}
