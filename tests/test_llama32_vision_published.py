"""The five Llama 3.2 Vision releases, laid out as the published facts say, plan and convert
with no flags, and their files equal the published (or converter-derived) values.

The facts are docs/llama32_vision_published.json (each value with its source): params.json
per release (llama-models' sku_list; the 11B base file was also seen), rank-file count, the
Hub folder, and config.json / generation_config.json / preprocessor_config.json as
transformers' convert_mllama_weights_to_hf.py writes them (its values agree with every
published value seen). Two checks per release:

- real shapes: a sparse checkpoint with every tensor at its real size (holes, no data) in the
  release's folder, with a tiktoken tokenizer.model of the real 128000 ranks. `streamconv
  plan` runs with no flags, and the config, generation and preprocessor files streamconv
  would write equal the derived files key by key;
- a reduced conversion: the same params.json keys with the text model narrowed (8 heads of
  the real head_dim, 4 layers and 1 cross-attention layer) and a narrow vision tower with the
  release's layer counts, converted with no flags; keys that depend on the narrowing are
  compared with the reduced checkpoint's own values.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, cached_writer

import streamconv
from fixtures.llama32_vision_checkpoint import (
    VisionSpec,
    write_sparse_vision_checkpoint,
)
from fixtures.synthetic_tokenizer import write_synthetic_tokenizer
from streamconv.cli.main import main
from streamconv.model.hf_config import config_dict, generation_config_dict
from streamconv.model.mllama import preprocessor_config

PUBLISHED = json.loads((REPO / "docs" / "llama32_vision_published.json").read_text())["repos"]
REPOS = sorted(PUBLISHED)


def _spec(repo: str) -> VisionSpec:
    params = PUBLISHED[repo]["params"]["values"]
    return VisionSpec(dim=params["dim"], n_layers=params["n_layers"], n_heads=params["n_heads"],
                      n_kv_heads=params["n_kv_heads"],
                      n_cross=params["vision_num_cross_attention_layers"],
                      vocab_size=params["vocab_size"],
                      ffn_dim_multiplier=params["ffn_dim_multiplier"],
                      multiple_of=params["multiple_of"], chunk_size=params["vision_chunk_size"],
                      max_chunks=params["vision_max_num_chunks"],
                      n_ranks=PUBLISHED[repo]["rank_files"]["count"])


def _instruct(repo: str) -> bool:
    return "Instruct" in repo or "Guard" in repo


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) or isinstance(got, float):
        return isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-9)
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() >= want.keys() and all(_same(got[k], want[k]) for k in want)
    return bool(got == want)


def _differences(got: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    return {key: (got.get(key, "<absent>"), value) for key, value in want.items()
            if key not in got or not _same(got[key], value)}


def _generation(repo: str) -> dict[str, Any]:
    """Instruct and Guard: what the converter writes (the 215-byte published file); base: bos,
    eos and pad as save_pretrained takes them from the model config (152 bytes)."""
    if _instruct(repo):
        return dict(PUBLISHED[repo]["generation_config"]["converter_writes"])
    return {"bos_token_id": 128000, "eos_token_id": 128001, "pad_token_id": 128004}


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    write_synthetic_tokenizer(path, kind="tiktoken", vocab_size=128000)
    return path


def _lay_out(repo: str, checkpoint: Path, tokenizer: Path, root: Path) -> Path:
    """The release's folder (<repo name>/original) with the checkpoint's files and the
    tokenizer; returns the folder a user passes (the repo folder, as for the text rows)."""
    folder = root / repo.split("/")[1] / PUBLISHED[repo]["folder"]["hf_repo_subfolder"]
    folder.mkdir(parents=True)
    for item in checkpoint.iterdir():
        os.symlink(item, folder / item.name)
    os.symlink(tokenizer, folder / "tokenizer.model")
    return folder.parent


@pytest.mark.parametrize("repo", REPOS)
def test_real_shapes_plan_with_published_configs(repo: str, tokenizer_file: Path,
                                                 tmp_path: Path) -> None:
    spec = _spec(repo)
    src = _lay_out(repo, write_sparse_vision_checkpoint(spec, tmp_path / "ckpt"),
                   tokenizer_file, tmp_path / "in")
    assert main(["plan", str(src)]) == 0
    prepared = streamconv.prepare(src, streamconv.ConvertOptions())
    model = prepared.spec
    assert model.label == "Llama 3.2 Vision" and model.instruct == _instruct(repo)
    assert len(prepared.layouts) == (906 if spec.n_layers == 32 else 1494)
    config = config_dict(model, dtype=prepared.plan.dst_dtype)
    derived = PUBLISHED[repo]["config"]["derived"]
    assert not _differences(config, derived)
    seen = PUBLISHED[repo]["config"].get("seen") or {}
    for part, values in seen.items():
        if isinstance(values, dict):
            assert not _differences(config[part], values), part
    assert generation_config_dict(model) == _generation(repo)
    assert preprocessor_config(model) == PUBLISHED[repo]["preprocessor_config"]["derived"]


_WRITE_IN_CHILD = """
import json, sys
from pathlib import Path
from fixtures.llama32_vision_checkpoint import VisionSpec, write_vision_checkpoint
fields = json.loads(sys.argv[1])
fields["intermediate"] = tuple(fields["intermediate"])
write_vision_checkpoint(VisionSpec(**fields), Path(sys.argv[2]))
"""


def _write_in_child(spec: VisionSpec, out_dir: Path) -> Path:
    """write_vision_checkpoint in a child process: its 128256-row embeddings would leave the
    pytest process's RSS (allocator slack) hundreds of MB higher for every later test that
    plans against a fixed budget."""
    subprocess.run([sys.executable, "-c", _WRITE_IN_CHILD, json.dumps(asdict(spec)),
                    str(out_dir)], check=True, cwd=REPO, timeout=600)
    return out_dir


def _streamconv(*argv: str) -> int:
    """The CLI in a child process, for the same reason (tokenizer and slot buffers)."""
    return subprocess.run([sys.executable, "-m", "streamconv", *argv], cwd=REPO,
                          timeout=600, check=False).returncode


@pytest.fixture(scope="module")
def make_vision_checkpoint(tmp_path_factory: pytest.TempPathFactory
                           ) -> Callable[[VisionSpec], Path]:
    return cached_writer(tmp_path_factory, _write_in_child)  # type: ignore[arg-type]


def _reduced(spec: VisionSpec) -> VisionSpec:
    head_dim = spec.dim // spec.n_heads
    return replace(spec, dim=8 * head_dim, n_heads=8, n_layers=4, n_cross=1, vision_width=16,
                   multiple_of=256)


@pytest.mark.parametrize("repo", REPOS)
def test_reduced_release_converts_with_no_flags(repo: str, tokenizer_file: Path,
                                                make_vision_checkpoint: Callable[[VisionSpec],
                                                                                 Path],
                                                tmp_path: Path) -> None:
    spec = _reduced(_spec(repo))
    src = _lay_out(repo, make_vision_checkpoint(spec), tokenizer_file, tmp_path / "in")
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    assert _streamconv(str(src), str(out), "--quiet", "--report", str(report_path)) == 0
    report = json.loads(report_path.read_text())
    assert report["family"] == "Llama 3.2 Vision" and report["instruct"] == _instruct(repo)
    assert _streamconv("verify", str(src), str(out)) == 0
    config = json.loads((out / "config.json").read_text())
    derived = PUBLISHED[repo]["config"]["derived"]
    reduced_text = {"hidden_size": spec.dim, "intermediate_size": spec.ffn_dim,
                    "num_attention_heads": spec.n_heads, "num_hidden_layers": 5,
                    "cross_attention_layers": [3]}
    reduced_vision = {"hidden_size": 16, "intermediate_size": 64, "vision_output_dim": 96}
    want = {**derived, "text_config": {**derived["text_config"], **reduced_text},
            "vision_config": {**derived["vision_config"], **reduced_vision}}
    assert not _differences(config, want)
    assert json.loads((out / "generation_config.json").read_text()) == _generation(repo)
    assert (json.loads((out / "preprocessor_config.json").read_text())
            == PUBLISHED[repo]["preprocessor_config"]["derived"])
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 131072
    assert tokenizer_config["added_tokens_decoder"]["128256"]["content"] == "<|image|>"


def test_release_matrix_rows_agree_with_the_vision_facts() -> None:
    """docs/releases.json (the README's table) holds a row per Vision release whose values
    are the ones this module checks."""
    rows = {row["hf_repo"]: row for row in json.loads(
        (REPO / "docs" / "releases.json").read_text())["releases"]
        if row["support"] == "converts (vision)"}
    assert set(rows) == set(PUBLISHED)
    for repo, row in rows.items():
        text = PUBLISHED[repo]["config"]["derived"]["text_config"]
        assert row["params"] == PUBLISHED[repo]["params"]["values"]
        assert row["n_ranks"] == PUBLISHED[repo]["rank_files"]["count"]
        assert row["instruct"] == _instruct(repo)
        assert row["hf_config"] == {key: text[key] for key in row["hf_config"]}
