"""The package's structure, drawn from its imports: data flows one way through the stage
folders, nothing shipped imports a fixture, and one table holds the Meta tensor names.

Stages, in the order data flows (a module may import its own stage and the ones before it):
  errors, system   OS facilities (platform calls, direct I/O, memory) used by every stage
  source           Meta's files: rank files, tensor index, byte reads, params.json, FP8 scales
  model            families, their tensor table, detection, Hugging Face configs
  planning, tokenizer   names -> jobs within the budget -> output file layout; tokenizer files
  runtime          buffers, executor, output files, the output folder's lifecycle, journal
  pipeline         prepare / convert / verify: the stages put together
  cli              arguments, progress, reports
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "streamconv"
STAGES = {"errors": 0, "system": 0, "source": 1, "model": 2, "planning": 3, "tokenizer": 3,
          "runtime": 4, "pipeline": 5, "cli": 6}
TOP = 7  # streamconv/__init__.py and __main__.py: the public API and `python -m`
# Fragments of Meta tensor names: only the tensor tables (model/tensor_table.py for LLaMA 1-3,
# model/llama4_tensors.py) may spell them in code.
META_NAME = re.compile(r"attention\.w[qkvo]|feed_forward\.w[123]|tok_embeddings|attention_norm|"
                       r"ffn_norm|output\.weight|inner_attention|moe_w_|router_DE|fc1_weight|"
                       r"resblocks|vision_projection")
TABLES = (PACKAGE / "model" / "tensor_table.py", PACKAGE / "model" / "llama4_tensors.py")


def _stage(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "streamconv":
        raise ValueError(module)
    if len(parts) == 1 or parts[1] in ("__init__", "__main__"):
        return TOP
    return STAGES[parts[1]]


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        found.append((".".join(rel.parts).removesuffix(".__init__"), path))
    return found


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                pytest.fail(f"{path}: relative import; the package uses absolute imports")
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_imports_flow_one_way(module: str, path: Path) -> None:
    own = _stage(module)
    for imported in _imports(path):
        root = imported.split(".")[0]
        assert root not in ("fixtures", "tests", "conftest"), f"{module} imports {imported}"
        if root == "streamconv" and imported != "streamconv":
            assert _stage(imported) <= own, f"{module} (stage {own}) imports {imported}"


def _code_strings(path: Path) -> list[str]:
    """String constants that are not docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docstrings]


def test_one_table_spells_the_meta_tensor_names() -> None:
    for table in TABLES:
        assert any(META_NAME.search(s) for s in _code_strings(table))
    elsewhere = {str(path.relative_to(REPO)): hits for _, path in _modules() if path not in TABLES
                 if (hits := [s for s in _code_strings(path) if META_NAME.search(s)])}
    assert not elsewhere, elsewhere


def test_fixtures_are_not_shipped() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'include = ["streamconv", "streamconv.*"]' in pyproject
    assert not list(PACKAGE.rglob("synthetic*.py"))
