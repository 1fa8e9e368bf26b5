"""source/rank_files.py: finding Meta's files by name alone (no file is opened, so empty files
stand in for checkpoints), their order, and the errors that name what is wrong."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from streamconv.errors import CheckpointError
from streamconv.source.rank_files import (
    find_rank_paths,
    find_scale_paths,
    missing_ranks_error,
    resolve_input_dir,
)


def _touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


@pytest.mark.parametrize("n_ranks", [1, 2, 8, 16])
def test_rank_files_come_in_rank_order(tmp_path: Path, n_ranks: int) -> None:
    names = [f"consolidated.{i:02d}.pth" for i in range(n_ranks)]
    random.Random(n_ranks).shuffle(names)
    _touch(tmp_path, *names, "params.json", "tokenizer.model", "consolidated.00.pth.sha256")
    found = find_rank_paths(tmp_path)
    assert [p.name for p in found] == [f"consolidated.{i:02d}.pth" for i in range(n_ranks)]
    assert all(p.parent == tmp_path for p in found)


@pytest.mark.parametrize("single", ["consolidated.pth", "meta_model_0.pt",
                                    "model-00001-of-00001.bin"])
def test_single_file_names(tmp_path: Path, single: str) -> None:
    _touch(tmp_path, single, "params.json")
    assert find_rank_paths(tmp_path) == [tmp_path / single]


def test_a_gap_names_the_missing_files(tmp_path: Path) -> None:
    _touch(tmp_path, "consolidated.00.pth", "consolidated.01.pth", "consolidated.03.pth",
           "consolidated.05.pth")
    with pytest.raises(CheckpointError) as caught:
        find_rank_paths(tmp_path)
    message = str(caught.value)
    assert "consolidated.02.pth, consolidated.04.pth" in message
    assert "found 4 of 6 rank files" in message
    assert str(tmp_path) in message


def test_missing_ranks_error_lists_every_missing_file(tmp_path: Path) -> None:
    message = str(missing_ranks_error(tmp_path, [3, 10], 2, 11))
    assert "consolidated.03.pth, consolidated.10.pth" in message
    assert "found 2 of 11 rank files" in message
    assert "shard" not in message


def test_a_folder_named_like_a_rank_file_is_refused(tmp_path: Path) -> None:
    _touch(tmp_path, "consolidated.00.pth")
    (tmp_path / "consolidated.01.pth").mkdir()
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth is a folder"):
        find_rank_paths(tmp_path)


def test_no_checkpoint_names_the_folder_and_the_likely_reason(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no consolidated.NN.pth files") as caught:
        find_rank_paths(_touch(tmp_path / "hf", "config.json", "model.safetensors"))
    assert "Hugging Face folder" in str(caught.value)
    with pytest.raises(CheckpointError, match="rename it to consolidated.00.pth"):
        find_rank_paths(_touch(tmp_path / "other", "weights.pth"))
    with pytest.raises(CheckpointError, match="2 single-file checkpoints"):
        find_rank_paths(_touch(tmp_path / "two", "consolidated.pth", "meta_model_1.pt"))
    with pytest.raises(CheckpointError, match="does not exist"):
        find_rank_paths(tmp_path / "absent")


def test_download_folder_points_at_its_model_subfolder(tmp_path: Path) -> None:
    _touch(tmp_path / "Llama-2-7b", "consolidated.00.pth")
    with pytest.raises(CheckpointError, match="subfolder Llama-2-7b holds a checkpoint"):
        find_rank_paths(tmp_path)


def test_resolve_input_dir_finds_the_hub_layouts(tmp_path: Path) -> None:
    flat = _touch(tmp_path / "flat", "consolidated.00.pth")
    assert resolve_input_dir(flat) == flat
    hub = tmp_path / "hub"
    _touch(hub / "original", "consolidated.00.pth")
    _touch(hub, "config.json")
    assert resolve_input_dir(hub) == hub / "original"
    one_layout = tmp_path / "405b"
    _touch(one_layout / "original" / "mp8", "consolidated.00.pth")
    assert resolve_input_dir(one_layout) == one_layout / "original" / "mp8"
    _touch(one_layout / "original" / "mp16", "consolidated.00.pth")
    with pytest.raises(CheckpointError, match="in 2 layouts"):
        resolve_input_dir(one_layout)
    with pytest.raises(CheckpointError, match="no consolidated.NN.pth"):
        resolve_input_dir(_touch(tmp_path / "empty"))


def test_scale_files(tmp_path: Path) -> None:
    assert find_scale_paths(_touch(tmp_path / "bf16", "consolidated.00.pth"), 1) == []
    fp8 = _touch(tmp_path / "fp8", "fp8_scales_1.pt", "fp8_scales_0.pt")
    assert find_scale_paths(fp8, 2) == [fp8 / "fp8_scales_0.pt", fp8 / "fp8_scales_1.pt"]
    with pytest.raises(CheckpointError, match="missing fp8_scales_2.pt"):
        find_scale_paths(fp8, 3)
    with pytest.raises(CheckpointError, match="holds fp8_scales_1.pt but only 1"):
        find_scale_paths(fp8, 1)
