"""The README and docs/*.md name only files and modules that exist.

Docs drift when code moves: a page that sends a reader to `source/fp8.py` after it became
`source/fp8_scales.py` costs the next maintainer an afternoon. Three kinds of reference are
checked:

* relative Markdown links, `[text](docs/releases.md#anchor)`, resolved from the page's folder;
* paths in backquotes whose first part is a folder or file of this repository (`tests/x.py`,
  `benchmarks/report.py`) or a stage folder of the package (`source/pickle_index.py`, which
  means `streamconv/source/pickle_index.py`); paths of other projects (`models/llama3/...`,
  `src/transformers/...`) start otherwise and are left alone;
* dotted module names of this repository (`streamconv.tokenizer.files`, `benchmarks.report`),
  and, on the pages written for this repository (README, architecture, benchmarks), bare file
  names ending in `.py` (`detect.py`), which must name some file in the tree.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "streamconv"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
OWN_PAGES = {"README.md", "architecture.md", "benchmarks.md"}
TOP_LEVEL = {p.name for p in REPO.iterdir() if not p.name.startswith(".venv")} - {"demo"}
STAGES = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
# Paths of other projects that start like ours, each cited next to its project: llama.cpp's
# scripts/, TensorRT-LLM's and openvino.genai's tests/.
OTHER_PROJECTS = ("scripts/get_chat_template.py", "tests/unittest/", "tests/python_tests/")
# Files of other projects named bare on our own pages.
OTHER_FILES = {"convert_llama_weights_to_hf.py", "convert_llama4_weights_to_hf.py",
               "convert_mllama_weights_to_hf.py",
               "processing_llama4.py", "loader.py", "convert_hf_to_gguf.py"}
# Generated folders and run-time files that the docs name but the tree does not hold.
NOT_IN_TREE = ("benchmarks/cache", "benchmarks/results/raw", "demo/")

LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
MODULE = re.compile(r"^(streamconv|fixtures|benchmarks)(\.[a-z_0-9]+)+$")


def _all_files() -> set[str]:
    """Names of the repository's own files: the venvs (.venv-gguf holds llama.cpp's sources),
    .git and other hidden folders are not walked."""
    names: set[str] = set()
    for _folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d != "demo"]
        names.update(files, subfolders)
    return names


def _candidates(token: str) -> list[str]:
    """Path-like parts of one backquoted span (a command line names several)."""
    return [w.strip(".,;:()") for w in token.split()
            if "/" in w or w.endswith((".py", ".md", ".json", ".sh", ".jinja"))]


def _broken_path(word: str, page: Path) -> bool:
    """True when word claims to be in this repository and is not there."""
    if any(c in word for c in "<>*{}$") or word.startswith(("http", "/", "-", "~")):
        return False
    if word.startswith(OTHER_PROJECTS) or word.startswith(NOT_IN_TREE):
        return False
    path = word.split("#")[0].split("::")[0].split("@")[0]
    first = path.split("/")[0]
    if "/" not in path or first not in TOP_LEVEL | STAGES:
        return False
    root = REPO if first in TOP_LEVEL else PACKAGE
    # `fixtures/synthetic_tokenizer.add_code_llama_pieces`: a module's attribute
    module = re.sub(r"\.[A-Za-z_]\w*$", ".py", path)
    return not ((root / path).exists() or (root / module).is_file())


def _references(page: Path) -> list[tuple[str, bool]]:
    """(reference, exists) for every checked reference on the page."""
    text = page.read_text(encoding="utf-8")
    found: list[tuple[str, bool]] = []
    for target in LINK.findall(text):
        if target.startswith(("http", "#", "mailto:")):
            continue
        found.append((target, (page.parent / target.split("#")[0]).exists()))
    names = _all_files() if page.name in OWN_PAGES else set()
    for span in CODE.findall(text):
        span = span.strip()
        if MODULE.match(span):
            parts = span.split(".")
            as_file = REPO.joinpath(*parts).with_suffix(".py")
            found.append((span, as_file.exists() or REPO.joinpath(*parts).is_dir()))
            continue
        for word in _candidates(span):
            if _broken_path(word, page):
                found.append((word, False))
            elif "/" not in word and word.endswith(".py") and names and word not in OTHER_FILES:
                found.append((word, word in names))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_named_file_exists(page: Path) -> None:
    missing = sorted({ref for ref, exists in _references(page) if not exists})
    assert not missing, f"{page.relative_to(REPO)} names what does not exist: {missing}"


def test_the_check_catches_a_moved_module(tmp_path: Path) -> None:
    page = tmp_path / "README.md"
    page.write_text("See `source/fp8.py`, `streamconv.source.fp8`, [x](nowhere.md) and\n"
                    "`sampling.py`; `source/fp8_scales.py` and `tests/conftest.py` exist.\n")
    refs = dict(_references(page))
    assert refs == {"nowhere.md": False, "streamconv.source.fp8": False,
                    "source/fp8.py": False, "sampling.py": False}


def test_readme_is_a_page_a_newcomer_finishes() -> None:
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 200
