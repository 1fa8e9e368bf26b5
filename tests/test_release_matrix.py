"""Every public Meta release, laid out as the published facts say, converts right with no flags.

The rows come from docs/releases.json, where each fact has its public source. For each row a
checkpoint is built with that row's params.json keys and values, shard count, tensor names
(rope.freqs at the top or per layer, output.weight) and dtype, in the folder Meta's download (or
the Hub's original/) puts it in; only the number of layers and the width are reduced, keeping
head_dim, the kv heads, the vocabulary and the tokenizer's kind and size. It is converted with
no flags, and every published config.json / generation_config.json value is compared: a fixture
built from our own beliefs could not catch a wrong belief, a fixture built from the matrix can.

Width reduction: n_heads becomes max(kv heads, shards) (2 shards' worth for models without
GQA), dim = n_heads x head_dim. The values that depend on it (hidden_size,
intermediate_size, num_attention_heads, num_hidden_layers, and num_key_value_heads without GQA)
are compared with the reduced checkpoint's own; all others with the published ones.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, cached_writer

from fixtures.fp8_checkpoint import write_fp8_checkpoint
from fixtures.synthetic import SyntheticSpec
from streamconv.cli.main import main
from streamconv.model.family import Family

MATRIX: list[dict[str, Any]] = json.loads(
    (REPO / "docs" / "releases.json").read_text())["releases"]
N_LAYERS = 2
# 3.3 70B has 3.1 70B's architecture and config: the rules cannot and need not tell them apart.
SAME_CONFIG = {"3.3": "3.1"}


def _distinct_kv_heads(row: dict[str, Any]) -> int | None:
    params = row["params"]
    published = row["hf_config"].get("num_key_value_heads")
    if "n_kv_heads" not in params:
        return None
    return int(published) if isinstance(published, int) else int(params["n_kv_heads"])


def reduced(row: dict[str, Any], *, rope_freqs: str) -> tuple[SyntheticSpec, dict[str, Any]]:
    """(checkpoint spec, params.json) of a row, narrowed as the module docstring says."""
    params = row["params"]
    n = row["n_ranks"]
    head_dim = params["dim"] // params["n_heads"]
    kv = _distinct_kv_heads(row)
    n_heads = max(kv, n) if kv is not None else max(2, n)
    dim = n_heads * head_dim
    dtype = row["dtype"] if row["dtype"] in ("float16", "bfloat16") else "bfloat16"
    family = Family(row["family"])
    spec = SyntheticSpec(
        family, dim, N_LAYERS, n_heads, kv, row["tokenizer"]["n_tokens"],
        multiple_of=params.get("multiple_of", 256),
        ffn_dim_multiplier=params.get("ffn_dim_multiplier"), norm_eps=params["norm_eps"],
        rope_theta=params.get("rope_theta"), use_scaled_rope=params.get("use_scaled_rope", False),
        n_ranks=n, dtype=dtype, tied_output=row["output_weight"] == "copy of tok_embeddings",
        rope_freqs=rope_freqs)
    written = {**params, "dim": dim, "n_heads": n_heads, "n_layers": N_LAYERS}
    return spec, written


def _rope_variants(row: dict[str, Any]) -> list[str]:
    layout = row["rope_freqs"].split(" ")[0]
    if layout != "unknown":
        return [layout]
    return ["top", "none"] if row["tokenizer"]["kind"] == "sentencepiece" else ["none"]


def _cases(support: str) -> list[Any]:
    return [pytest.param(row, rope, id=f"{row['id']}-rope_{rope}")
            for row in MATRIX if row["support"] == support for rope in _rope_variants(row)]


def _lay_out(row: dict[str, Any], checkpoint: Path, params: dict[str, Any], root: Path) -> Path:
    """The row's folder (e.g. Llama-3.1-405B/original/mp16), its files linked to the cached
    checkpoint and its own params.json; returns the folder a user would pass."""
    folder = root / row["folder"]
    folder.mkdir(parents=True)
    for item in checkpoint.iterdir():
        if item.name != "params.json":
            os.symlink(item, folder / item.name)
    (folder / "params.json").write_text(json.dumps(params))
    return root / row["folder"].split("/")[0]


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) or isinstance(got, float):
        return isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-9)
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    return bool(got == want)


@pytest.fixture(scope="module")
def make_fp8_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Checkpoints laid out like Meta's FP8 405B (fixtures/fp8_checkpoint.py), once per spec."""
    return cached_writer(tmp_path_factory, write_fp8_checkpoint)


@pytest.mark.parametrize(("row", "rope"), _cases("converts") + _cases("converts (fp8)"))
def test_release_converts_with_published_configs(row: dict[str, Any], rope: str,
                                                 make_checkpoint: Any, make_fp8_checkpoint: Any,
                                                 tmp_path: Path) -> None:
    spec, params = reduced(row, rope_freqs=rope)
    if row.get("fp8"):  # fp8 feed-forward weights in layers 1 .. n_layers-2: one needs 3
        spec = replace(spec, n_layers=3)
        params["n_layers"] = 3
        checkpoint = make_fp8_checkpoint(spec)
        assert any(p.name == "fp8_scales_0.pt" for p in checkpoint.iterdir())
    else:
        checkpoint = make_checkpoint(spec)
    src = _lay_out(row, checkpoint, params, tmp_path / "in")
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    assert main([str(src), str(out), "--quiet", "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    family = Family(SAME_CONFIG.get(row["family"], row["family"]))
    assert report["family"] == family.label
    assert report["instruct"] == row["instruct"]

    config = json.loads((out / "config.json").read_text())
    expected_reduced = {"hidden_size": spec.dim, "intermediate_size": spec.ffn_dim,
                        "num_attention_heads": spec.n_heads, "num_hidden_layers": spec.n_layers}
    if spec.n_kv_heads is None:  # no grouped-query attention: as many kv heads as heads
        expected_reduced["num_key_value_heads"] = spec.n_heads
    wrong = {}
    for key, published in row["hf_config"].items():
        want = expected_reduced.get(key, published)
        if key in row["deviations"]:
            want = row["deviations"][key]["writes"]
        if key not in config and want is None:
            continue  # a deviation that leaves the key out
        if key not in config or not _same(config[key], want):
            wrong[key] = (config.get(key, "<absent>"), want)
    assert not wrong, f"config.json differs from the published values: {wrong}"
    for key in row["hf_config_absent"]:
        assert key in config or key not in row["hf_config"]

    if row["generation_config"] is not None:
        generation = json.loads((out / "generation_config.json").read_text())
        assert _same(generation, row["generation_config"]), generation
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == config["max_position_embeddings"]


@pytest.mark.parametrize(("row", "rope"), _cases("refused"))
def test_unsupported_release_is_refused_in_one_sentence(
        row: dict[str, Any], rope: str, make_checkpoint: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    spec, params = reduced(row, rope_freqs=rope)
    spec = replace(spec, tied_output=False)
    src = _lay_out(row, make_checkpoint(spec), params, tmp_path / "in")
    out = tmp_path / "out"
    assert main([str(src), str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert row["refusal"] in err.replace("\n", " ")
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not (out / "model.safetensors.index.json").exists()


def test_matrix_covers_every_release_the_issue_names() -> None:
    ids = {row["id"] for row in MATRIX}
    for size in ("7b", "13b", "33b", "65b"):
        assert f"llama-1-{size}" in ids
    for size in ("7b", "13b", "70b"):
        assert {f"llama-2-{size}", f"llama-2-{size}-chat"} <= ids
        assert {f"codellama-{size}", f"codellama-{size}-python",
                f"codellama-{size}-instruct"} <= ids
    assert {"codellama-34b", "codellama-34b-python", "codellama-34b-instruct"} <= ids
    assert {"llama-guard-3-1b", "llama-guard-3-8b", "llama-3-8b", "llama-3-8b-instruct",
            "llama-3-70b", "llama-3-70b-instruct", "llama-3.1-8b", "llama-3.1-70b",
            "llama-3.1-405b-mp8", "llama-3.1-405b-mp16", "llama-3.1-405b-instruct-fp8",
            "llama-3.2-1b", "llama-3.2-3b", "llama-3.2-1b-instruct", "llama-3.2-3b-instruct",
            "llama-3.3-70b-instruct"} <= ids
    assert any("spinquant" in i for i in ids) and any("qlora" in i for i in ids)
    # Llama 3.2 Vision: converted and checked in tests/test_llama32_vision_published.py.
    assert {"llama-3.2-11b-vision", "llama-3.2-11b-vision-instruct", "llama-3.2-90b-vision",
            "llama-3.2-90b-vision-instruct", "llama-guard-3-11b-vision"} <= ids
    for row in MATRIX:
        assert set(row["sources"]) >= {"params", "hf_config"}, row["id"]


def test_docs_and_readme_table_are_generated_from_the_matrix() -> None:
    script = REPO / "scripts" / "release_docs.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
