"""The Python API the README documents: it must keep working whatever the package's layout."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import in_process_budget

import streamconv
from fixtures.synthetic import SyntheticSpec, tiny
from streamconv.model.family import Family

MakeCkpt = Callable[[SyntheticSpec], Path]


def test_convert_and_prepare_from_the_package(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    src = make_checkpoint(tiny(Family.LLAMA3_1, n_ranks=2))
    options = streamconv.ConvertOptions(max_ram_bytes=int(in_process_budget()))
    prepared = streamconv.prepare(src, options)
    assert prepared.spec.family is Family.LLAMA3_1 and prepared.plan.jobs
    report = streamconv.convert(src, tmp_path / "out", options)
    assert isinstance(report, streamconv.Report) and report.family == "LLaMA 3.1"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 2
    with pytest.raises(streamconv.CheckpointError):
        streamconv.convert(tmp_path / "missing", tmp_path / "out2", options)


def test_every_documented_name_exists() -> None:
    for name in streamconv.__all__:
        assert getattr(streamconv, name) is not None
    assert issubclass(streamconv.BudgetError, streamconv.StreamconvError)


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, streamconv, streamconv.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
