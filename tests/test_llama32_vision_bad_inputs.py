"""Bad Llama 3.2 Vision input gets one sentence naming the file or key and the fix, a
non-zero exit, no traceback and nothing published (the brief's contract, issue 20)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import cached_writer

from fixtures.llama32_vision_checkpoint import VisionSpec, write_vision_checkpoint
from fixtures.synthetic import tiny
from streamconv.cli.main import main
from streamconv.model.family import Family

TINY = VisionSpec(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, n_cross=1, vocab_size=512,
                  multiple_of=32, chunk_size=28, vision_width=16, local_layers=4,
                  global_layers=2, intermediate=(1, 3), n_ranks=2)


@pytest.fixture(scope="module")
def make_vision(tmp_path_factory: pytest.TempPathFactory) -> Callable[[VisionSpec], Path]:
    return cached_writer(tmp_path_factory, write_vision_checkpoint)  # type: ignore[arg-type]


def _copy(src: Path, dst: Path, params: dict[str, Any] | None = None,
          drop: tuple[str, ...] = ()) -> Path:
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.name not in drop and item.name != "params.json":
            os.symlink(item, dst / item.name)
    (dst / "params.json").write_text(json.dumps(
        params if params is not None else json.loads((src / "params.json").read_text())))
    return dst


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def test_tiny_vision_converts(make_vision: Callable[[VisionSpec], Path], tmp_path: Path) -> None:
    """The baseline the cases below break: it converts and verifies."""
    src = make_vision(TINY)
    assert main([str(src), str(tmp_path / "out"), "--no-tokenizer", "--quiet"]) == 0
    assert main(["verify", str(src), str(tmp_path / "out"), "--no-tokenizer"]) == 0


def _params(src: Path, **changes: Any) -> dict[str, Any]:
    return {**json.loads((src / "params.json").read_text()), **changes}


def test_text_files_with_a_vision_params_json(make_checkpoint: Any, make_vision: Callable[
        [VisionSpec], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = make_checkpoint(tiny(Family.LLAMA3_2, with_tokenizer=False))
    src = _copy(text, tmp_path / "in", _params(make_vision(TINY)))
    _fails([str(src), str(tmp_path / "out"), "--no-tokenizer"], capsys,
           "consolidated.00.pth lacks text_model.tok_embeddings.weight", "params.json")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("changes", "expected"), [
    ({"vision_num_cross_attention_layers": 2}, "vision_num_cross_attention_layers=2"),
    ({"vision_chunk_size": 42}, "vision_chunk_size 42 makes 10"),
    ({"vision_max_num_chunks": 2}, "vision_max_num_chunks=2"),
    ({"vision_intermediate_layers": [1, 9]}, "vision_intermediate_layers must list 2"),
    ({"vision_num_cross_attention_layers": True}, "vision_num_cross_attention_layers is True"),
    ({"n_layers": 3}, "n_layers=3"),
])
def test_params_that_do_not_fit_the_files(changes: dict[str, Any], expected: str,
                                          make_vision: Callable[[VisionSpec], Path],
                                          tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    src = make_vision(TINY)
    bad = _copy(src, tmp_path / "in", _params(src, **changes))
    _fails([str(bad), str(tmp_path / "out"), "--no-tokenizer"], capsys, expected)
    assert not (tmp_path / "out").exists()


def test_a_release_tower_without_its_intermediate_layers(
        make_vision: Callable[[VisionSpec], Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A tower that is not a release's, without the key that names its intermediate layers:
    refused, never written with the release's indices."""
    src = make_vision(TINY)
    params = _params(src)
    del params["vision_intermediate_layers"]
    bad = _copy(src, tmp_path / "in", params)
    _fails([str(bad), str(tmp_path / "out"), "--no-tokenizer"], capsys,
           '"vision_intermediate_layers"', "params.json")


def test_a_missing_rank_file(make_vision: Callable[[VisionSpec], Path], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    src = make_vision(TINY)
    bad = _copy(src, tmp_path / "in", drop=("consolidated.01.pth",))
    _fails([str(bad), str(tmp_path / "out"), "--no-tokenizer"], capsys, "consolidated.01.pth")


def test_a_truncated_rank_file(make_vision: Callable[[VisionSpec], Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    src = make_vision(TINY)
    bad = _copy(src, tmp_path / "in", drop=("consolidated.01.pth",))
    data = (src / "consolidated.01.pth").read_bytes()
    (bad / "consolidated.01.pth").write_bytes(data[:len(data) // 2])
    _fails([str(bad), str(tmp_path / "out"), "--no-tokenizer"], capsys, "consolidated.01.pth")


def test_gguf_output_is_refused(make_vision: Callable[[VisionSpec], Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    _fails([str(make_vision(TINY)), str(tmp_path / "model.gguf"), "--no-tokenizer"], capsys,
           "GGUF output for Llama 3.2 Vision is not supported")
    assert not (tmp_path / "model.gguf").exists()


def test_three_ranks_cannot_split_the_learnable_rows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """8 learnable_embedding rows do not split into 3 rank files (the releases use 1 and 8)."""
    spec = replace(TINY, n_heads=6, n_kv_heads=3, dim=96, n_ranks=1)
    src = write_vision_checkpoint(spec, tmp_path / "one")
    three = tmp_path / "three"
    shutil.copytree(src, three)
    for rank in (1, 2):
        shutil.copy(src / "consolidated.00.pth", three / f"consolidated.{rank:02d}.pth")
    _fails([str(three), str(tmp_path / "out"), "--no-tokenizer"], capsys, "rank file")
