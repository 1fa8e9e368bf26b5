"""Where Meta-format files come from besides Meta's download (docs/meta_formats.md section 3):
the Hub's original/ folders, the single-file names llama-stack and torchtune write, and the
folders that are not Meta's at all; and detection that says when its evidence disagrees."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import in_process_budget
from rich.console import Console
from safetensors.torch import load_file

from fixtures.synthetic import SyntheticSpec, tiny
from streamconv.cli.main import main
from streamconv.model.family import Family

MakeCkpt = Callable[[SyntheticSpec], Path]
ONE_RANK = tiny(Family.LLAMA2, with_tokenizer=False)
ARGS = ("--quiet", "--no-tokenizer")


def _run(*argv: str | Path) -> tuple[int, str]:
    """The CLI in this process, with a budget above what the process already holds."""
    err = io.StringIO()
    code = main([str(a) for a in argv] + ["--max-ram", in_process_budget()],
                console=Console(file=io.StringIO()),
                err_console=Console(file=err, width=400))
    return code, err.getvalue()


def _copy(src: Path, dst: Path, *, rename: dict[str, str] | None = None) -> Path:
    dst.mkdir(parents=True)
    for item in src.iterdir():
        shutil.copy(item, dst / (rename or {}).get(item.name, item.name))
    return dst


@pytest.mark.parametrize("name", ["consolidated.pth", "meta_model_0.pt",
                                  "model-00001-of-00001.bin"])
def test_single_file_checkpoints_convert_like_rank_0(name: str, make_checkpoint: MakeCkpt,
                                                     tmp_path: Path) -> None:
    src = make_checkpoint(ONE_RANK)
    renamed = _copy(src, tmp_path / "ft", rename={"consolidated.00.pth": name})
    assert _run(renamed, tmp_path / "out", *ARGS)[0] == 0
    assert _run(src, tmp_path / "ref", *ARGS)[0] == 0
    got = load_file(tmp_path / "out" / "model-00001-of-00001.safetensors")
    want = load_file(tmp_path / "ref" / "model-00001-of-00001.safetensors")
    assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in want)


def test_two_single_files_are_refused_by_name(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    src = _copy(make_checkpoint(ONE_RANK), tmp_path / "ft",
                rename={"consolidated.00.pth": "meta_model_0.pt"})
    shutil.copy(src / "meta_model_0.pt", src / "meta_model_1.pt")
    code, err = _run(src, tmp_path / "out", *ARGS)
    assert code == 1 and "meta_model_0.pt, meta_model_1.pt" in err and "folder of its own" in err


def test_unknown_file_name_gets_a_rename_hint(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    src = _copy(make_checkpoint(ONE_RANK), tmp_path / "ft",
                rename={"consolidated.00.pth": "checkpoint_final.pt"})
    code, err = _run(src, tmp_path / "out", *ARGS)
    assert code == 1 and "rename it to consolidated.00.pth" in err and "checkpoint_final.pt" in err


def test_hub_repo_with_both_405b_layouts_asks_which(make_checkpoint: MakeCkpt,
                                                     tmp_path: Path) -> None:
    repo = tmp_path / "Llama-3.1-405B"
    for layout in ("mp8", "mp16"):
        _copy(make_checkpoint(ONE_RANK), repo / "original" / layout)
    code, err = _run(repo, tmp_path / "out", *ARGS)
    assert code == 1 and "original/mp16" in err and "original/mp8" in err


def test_hub_repo_converts_from_its_original_folder(make_checkpoint: MakeCkpt,
                                                     tmp_path: Path) -> None:
    repo = tmp_path / "Llama-2-7b-chat"
    _copy(make_checkpoint(ONE_RANK), repo / "original")
    (repo / "config.json").write_text("{}")  # an HF repo has its own files at the top
    assert _run(repo, tmp_path / "out", "--report", tmp_path / "r.json", *ARGS)[0] == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["instruct"] is True  # the repo's name, not "original", decides


def test_hugging_face_names_are_called_what_they_are(make_checkpoint: MakeCkpt,
                                                     tmp_path: Path) -> None:
    import torch

    src = _copy(make_checkpoint(ONE_RANK), tmp_path / "hf")
    state = torch.load(src / "consolidated.00.pth", weights_only=True)
    torch.save({f"model.{k}": v for k, v in state.items()}, src / "consolidated.00.pth")
    code, err = _run(src, tmp_path / "out", *ARGS)
    assert code == 1 and "already in Hugging Face format" in err


def test_conflicting_evidence_is_printed_not_hidden(make_checkpoint: MakeCkpt) -> None:
    # Llama 2 7B-chat as first published: norm_eps 1e-6 (like LLaMA 1) with LLaMA 2's
    # top-level rope.freqs (meta-llama/llama issue 771; docs/releases.md).
    src = make_checkpoint(replace(ONE_RANK, norm_eps=1e-6))
    out = io.StringIO()
    assert main(["plan", str(src), "--max-ram", "1G", "--no-tokenizer"],
                console=Console(file=out, width=400)) == 0
    text = out.getvalue()
    assert "LLaMA 2" in text and "rotary frequencies stored once" in text
    assert "family evidence in conflict: norm_eps 1e-6" in text


def test_meta_download_folder_names_the_model_folders(make_checkpoint: MakeCkpt,
                                                      tmp_path: Path) -> None:
    download = tmp_path / "llama"  # Meta's download.sh: one folder per model, tokenizer on top
    _copy(make_checkpoint(ONE_RANK), download / "llama-2-7b")
    _copy(make_checkpoint(ONE_RANK), download / "llama-2-7b-chat")
    code, err = _run(download, tmp_path / "out", *ARGS)
    assert code == 1 and "llama-2-7b, llama-2-7b-chat hold checkpoints: pass one of them" in err
