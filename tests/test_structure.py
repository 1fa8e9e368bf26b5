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
import dataclasses
import importlib
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
TABLES = (PACKAGE / "model" / "tensor_table.py", PACKAGE / "model" / "llama4_tensors.py",
          PACKAGE / "model" / "mllama_tensors.py")


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


# Plan data built with keyword arguments only (issue 21, "A plan that is data"). The package
# still supports Python 3.9, where @dataclass has no kw_only, so the rule is checked here.
KEYWORD_ONLY = frozenset({"Job", "CopyBlock", "Piece", "FamilyFacts", "ByteRange",
                          "FamilyDescription", "TokenizerScheme"})
SCANNED = ("streamconv", "fixtures", "tests", "benchmarks", "scripts")


def _positional_constructions(source: str) -> tuple[list[tuple[str, int]], set[str]]:
    """(class, line) of every call of a KEYWORD_ONLY class with positional arguments, and the
    classes constructed at all. Names imported under another name are followed."""
    tree = ast.parse(source)
    names = {cls: cls for cls in KEYWORD_ONLY}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.update({a.asname: a.name for a in node.names
                          if a.name in KEYWORD_ONLY and a.asname})
    bad, seen = [], set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = (func.id if isinstance(func, ast.Name)
                  else func.attr if isinstance(func, ast.Attribute) else None)
        if called not in names:
            continue
        seen.add(names[called])
        if node.args:
            bad.append((names[called], node.lineno))
    return bad, seen


KEYWORD_ONLY_MODULES = ("streamconv.model.families.description", "streamconv.planning.jobs",
                        "streamconv.planning.layout")


def test_plan_data_classes_take_keywords_only() -> None:
    """kw_only=True: a positional construction is a TypeError, not a silently swapped field."""
    found = {}
    for module_name in KEYWORD_ONLY_MODULES:
        module = importlib.import_module(module_name)
        found.update({name: getattr(module, name) for name in KEYWORD_ONLY
                      if hasattr(module, name)})
    assert set(found) == KEYWORD_ONLY
    for name, cls in found.items():
        fields = dataclasses.fields(cls)
        assert fields and all(f.kw_only for f in fields), f"{name} is not kw_only"


def test_positional_construction_is_caught() -> None:
    source = ("from streamconv.planning.jobs import Job as J\n"
              "import streamconv.planning.layout as layout\n"
              "J(1, hf_name='x')\nlayout.CopyBlock(*args)\nPiece(meta_name='x')\n")
    assert _positional_constructions(source) == ([("Job", 3), ("CopyBlock", 4)],
                                                 {"Job", "CopyBlock", "Piece"})


def test_plan_data_is_built_with_keywords() -> None:
    bad, seen = [], set()
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*.py")):
            found, classes = _positional_constructions(path.read_text())
            bad += [f"{path.relative_to(REPO)}:{line}: {cls}(...)" for cls, line in found]
            seen |= classes
    assert seen == KEYWORD_ONLY, f"constructions not found (renamed?): {KEYWORD_ONLY - seen}"
    assert not bad, "positional arguments: " + ", ".join(bad)


# One family object (issue 20): what the code knows about a family is in its description
# (model/families/), so no code elsewhere in the package may branch on which family it is.
# Outside that package and the re-export shim model/family.py, the checker refuses:
#   - the name Family at all (so neither `Family.LLAMA4` nor `Family("4")` nor a loop over it);
#   - any name or attribute ending in _FAMILIES (family-set constants) and the per-family
#     predicates is_llama3 / uses_tiktoken / is_llama4;
#   - a comparison of something named family (spec.family, family, verdict.family) with a
#     literal or a collection (`spec.family == "4"`, `family in {...}`).
FAMILIES_PACKAGE = PACKAGE / "model" / "families"
FAMILY_SHIM = PACKAGE / "model" / "family.py"
_FAMILY_PREDICATES = frozenset({"is_llama3", "uses_tiktoken", "is_llama4"})


def _named_family(node: ast.expr) -> bool:
    name = (node.id if isinstance(node, ast.Name)
            else node.attr if isinstance(node, ast.Attribute) else "")
    return name == "family" or name.endswith("_family")


def family_branches(source: str) -> list[tuple[int, str]]:
    """(line, what) of every family branch in ``source``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        name = (node.id if isinstance(node, ast.Name)
                else node.attr if isinstance(node, ast.Attribute) else None)
        if isinstance(node, ast.ImportFrom):
            found += [(node.lineno, f"imports {a.name}") for a in node.names
                      if a.name == "Family" or a.name.endswith("_FAMILIES")]
        elif name is not None and (name == "Family" or name.endswith("_FAMILIES")
                                   or name in _FAMILY_PREDICATES):
            found.append((node.lineno, name))
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            literal = any(isinstance(s, (ast.Set, ast.Tuple, ast.List))
                          or (isinstance(s, ast.Constant) and s.value is not None)
                          for s in sides)
            if literal and any(_named_family(s) for s in sides):
                found.append((node.lineno, "family compared with a literal"))
    return found


def test_family_branch_checker_catches_each_form() -> None:
    source = ("from streamconv.model.family import Family\n"
              "if spec.family is Family.LLAMA4: pass\n"
              "x = family.is_llama3\n"
              "y = spec.family in LLAMA3_FAMILIES\n"
              'z = spec.family == "4"\n'
              'w = verdict.family in ("3.1", "3.3")\n'
              "ok = describe(spec.family).tokenizer.kind == 'tiktoken'\n"
              "fine = family is None\n")
    assert sorted(family_branches(source)) == [
        (1, "imports Family"), (2, "Family"), (3, "is_llama3"), (4, "LLAMA3_FAMILIES"),
        (5, "family compared with a literal"), (6, "family compared with a literal")]


def test_no_family_branch_outside_the_family_descriptions() -> None:
    bad = []
    for _, path in _modules():
        if path == FAMILY_SHIM or FAMILIES_PACKAGE in path.parents:
            continue
        bad += [f"{path.relative_to(REPO)}:{line}: {what}"
                for line, what in family_branches(path.read_text())]
    assert not bad, "family branches outside model/families/: " + ", ".join(bad)
