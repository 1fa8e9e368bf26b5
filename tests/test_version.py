"""The version is written once, in streamconv/__init__.py; pyproject.toml reads it from there."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import streamconv

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_has_no_version_of_its_own() -> None:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    assert re.search(r"^version\s*=", project, re.M) is None
    assert 'dynamic = ["version"]' in project
    assert 'version = { attr = "streamconv.__version__" }' in text


def test_installed_metadata_carries_the_package_version() -> None:
    # The installed distribution's metadata was built from streamconv.__version__; a mismatch
    # means the version was changed without reinstalling (bash scripts/setup.sh after touching
    # pyproject.toml, or pip install -e .).
    assert importlib.metadata.version("streamconv") == streamconv.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", streamconv.__version__)
