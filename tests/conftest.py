"""Shared fixtures: generated Meta-format checkpoints, cached per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from streamconv.synthetic import SyntheticSpec, write_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[SyntheticSpec], Path]:
    """spec -> folder with that checkpoint, written once per session."""
    cache: dict[SyntheticSpec, Path] = {}

    def make(spec: SyntheticSpec) -> Path:
        if spec not in cache:
            cache[spec] = write_checkpoint(spec, tmp_path_factory.mktemp("ckpt"))
        return cache[spec]

    return make
