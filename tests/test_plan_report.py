"""cli/plan_report.py: `plan`'s tables, printed into a string, carry the prepared plan's values
(detected values with their sources, every output file with its jobs, the schedule), and
warnings are printed as text, never as rich markup."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from fixtures.synthetic import SyntheticSpec, tiny
from streamconv.cli.plan_report import print_plan
from streamconv.model.family import Family
from streamconv.model.tensor_table import OutputFormat
from streamconv.pipeline.preparation import ConvertOptions, Prepared, prepare
from streamconv.system.memory import format_flag_size, format_size

MakeCkpt = Callable[[SyntheticSpec], Path]
OPTIONS = ConvertOptions(max_ram_bytes=4 << 30, tokenizer=False)


def _printed(prepared: Prepared) -> str:
    out = io.StringIO()
    print_plan(Console(file=out, width=400), prepared)
    return out.getvalue()


def _rows(text: str, title: str = "") -> dict[str, list[str]]:
    """First cell -> the other cells, for every row of the table whose title starts with
    `title` (rich draws cells between │ and closes a table with └)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("└"))
    rows: dict[str, list[str]] = {}
    for line in lines[start:end]:
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0]:
            rows.setdefault(cells[0], cells[1:])
    return rows


@pytest.fixture
def prepared(make_checkpoint: MakeCkpt) -> Prepared:
    return prepare(make_checkpoint(tiny(Family.LLAMA3_1, n_ranks=2, with_tokenizer=False)),
                   OPTIONS)


def test_detected_values_and_their_sources(prepared: Prepared) -> None:
    text, spec = _printed(prepared), prepared.spec
    assert f"Input: {prepared.input_dir}" in text
    rows = _rows(text, "Input")
    assert rows["family"] == [spec.family.label, spec.sources["family"]]
    assert rows["rank files"] == ["2", "consolidated.NN.pth files found"]
    assert rows["n_layers"] == [str(spec.n_layers), "params.json"]
    assert rows["n_kv_heads"] == [str(spec.n_kv_heads), spec.sources["n_kv_heads"]]
    assert rows["vocab_size"] == [str(spec.vocab_size), spec.sources["vocab_size"]]
    assert rows["ffn_dim"] == [str(spec.ffn_dim), spec.sources["ffn_dim"]]
    assert rows["rope_theta"] == [str(spec.rope_theta), spec.sources["rope_theta"]]
    assert rows["tokenizer"] == ["none", "tokenizer.model"]
    assert rows["variant"][0] == "base"


def test_output_layout_lists_every_file_and_all_jobs(prepared: Prepared) -> None:
    rows, plan = _rows(_printed(prepared), "Output layout"), prepared.plan
    assert len(plan.files) >= 1
    jobs = 0
    for file in plan.files:
        n_tensors, size, n_jobs = rows[file.name]
        assert (int(n_tensors), size) == (len(file.tensors), format_size(file.total_bytes))
        jobs += int(n_jobs)
    assert jobs == len(plan.jobs)
    assert rows["model.safetensors.index.json"][-1] == "written last"


def test_schedule(prepared: Prepared) -> None:
    rows, plan = _rows(_printed(prepared), "Schedule"), prepared.plan
    assert rows["jobs"][0].startswith(f"{len(plan.jobs)} (")
    assert rows["slots"] == [f"{plan.depth} in flight, {format_size(plan.slot_bytes)} each"]
    assert rows["read"] == [format_size(plan.read_bytes)]
    assert rows["write"] == [format_size(plan.output_bytes)]
    assert rows["dtype"] == ["float32 -> float32"]
    assert rows["--max-ram"] == [format_size(4 << 30)]
    assert rows["predicted peak RSS"] == [format_size(plan.predicted_peak_bytes)]
    smallest = plan.min_budget_bytes
    assert rows["smallest workable budget"] == [
        f"{format_size(smallest)} (--max-ram {format_flag_size(smallest)})"]


def test_a_cast_shows_both_dtypes(make_checkpoint: MakeCkpt) -> None:
    folder = make_checkpoint(tiny(Family.LLAMA3_1, n_ranks=2, with_tokenizer=False))
    prepared = prepare(folder, replace(OPTIONS, dtype="bf16"))
    assert _rows(_printed(prepared), "Schedule")["dtype"] == ["float32 -> bfloat16"]


def test_warnings_are_printed_as_text(prepared: Prepared) -> None:
    text = _printed(replace(prepared, warnings=["[bold]not markup[/bold] in params.json"]))
    assert "warning: [bold]not markup[/bold] in params.json" in text
    assert "warning:" not in _printed(replace(prepared, warnings=[]))


def test_gguf_output_is_one_file_with_its_tensor_types(make_checkpoint: MakeCkpt) -> None:
    folder = make_checkpoint(tiny(Family.LLAMA2, with_tokenizer=True))
    prepared = prepare(folder, replace(OPTIONS, tokenizer=True,
                                       output_format=OutputFormat.GGUF, outtype="f16"))
    assert prepared.gguf is not None
    text = _printed(prepared)
    assert "Output: GGUF file (llama.cpp, --outtype f16)" in text
    assert "model.safetensors.index.json" not in text
    assert _rows(text, "Output: GGUF")["model.gguf"][0] == str(len(prepared.gguf.tensors))
    rows = _rows(text, "GGUF tensor types")
    counts: dict[str, int] = {}
    for tensor in prepared.gguf.tensors:
        counts[tensor.ggml_type.name] = counts.get(tensor.ggml_type.name, 0) + 1
    assert set(counts) >= {"F16", "F32"}  # norms stay F32 in llama.cpp's f16 files
    for kind, n in counts.items():
        assert rows[kind][0] == str(n)
