"""The table grammar's forms beyond LLaMA 1-3, each shown with a toy family registered only
here (as tests/test_toy_family.py registers its own) and converted end to end:

- a layer map: two layer sets whose Hugging Face indices interleave (Llama 3.2 Vision's text and
  cross-attention layers share one HF layer list, llama-models llama3/multimodal/model.py);
- row bands: several Meta tensors, each split across the ranks its own way, stacked as row
  bands of one HF tensor (Llama 3.2 Vision's embed_tokens: tok_embeddings, then the 8 rows of
  learnable_embedding), at 1 and 2 ranks and with jobs that cut the bands.

The checkpoints are the toy family's renamed LLaMA 2 fixture plus tensors written here, so every
Hugging Face tensor's expected value is known from the rank files.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import in_process_budget
from safetensors.torch import load_file
from test_toy_family import TOY, TOY_TENSORS, _toy_checkpoint

from fixtures.synthetic import SyntheticSpec
from streamconv.model.families.registry import registered
from streamconv.model.tensor_table import LayerMap, Split, TensorEntry, TensorTable
from streamconv.pipeline import preparation
from streamconv.pipeline.conversion import ConvertOptions, convert
from streamconv.planning import jobs as jobs_module
from streamconv.planning import source_ranges
from streamconv.planning.jobs import Job, Plan
from streamconv.source.params import MetaParams
from streamconv.source.tensor_index import Checkpoint

MakeCkpt = Callable[[SyntheticSpec], Path]
DIM, FFN = 64, 192  # the tiny LLaMA 2 fixture's widths (fixtures.synthetic.tiny)


def _ranks(folder: Path) -> list[dict[str, torch.Tensor]]:
    return [torch.load(p, map_location="cpu", weights_only=True)
            for p in sorted(folder.glob("consolidated.*.pth"))]


def _add_tensors(folder: Path, merged: Mapping[str, tuple[torch.Tensor, Split]]) -> None:
    """Adds merged Meta tensors to the rank files, each split as its Split says."""
    paths = sorted(folder.glob("consolidated.*.pth"))
    states = _ranks(folder)
    for meta_name, (tensor, split) in merged.items():
        if split is Split.REPLICATED:
            parts = [tensor] * len(states)
        else:
            parts = list(tensor.chunk(len(states), dim=0 if split is Split.ROWS else 1))
        for state, part in zip(states, parts, strict=True):
            state[meta_name] = part.clone()
    for path, state in zip(paths, states, strict=True):
        torch.save(state, path)


def _written(out: Path) -> dict[str, torch.Tensor]:
    written: dict[str, torch.Tensor] = {}
    for shard in sorted(out.glob("*.safetensors")):
        written.update(load_file(shard))
    return written


def _options() -> ConvertOptions:
    return ConvertOptions(tokenizer=False, max_ram_bytes=int(in_process_budget()))


# Cross-attention layer j runs before text layer SCHEDULE[j] (as Meta's fusion_schedule says
# for Llama 3.2 Vision), so HF's one list holds cross 0, text 0, cross 1, text 1.
SCHEDULE = (0, 1)
N_TEXT = 2


def _interleaved(params: MetaParams) -> Mapping[str, Sequence[int]]:
    """Text layer i lands after the cross layers scheduled at or before it; cross layer j
    right before its text layer."""
    text_hf = tuple(i + sum(s <= i for s in SCHEDULE) for i in range(params.n_layers))
    cross_hf = tuple(s + j for j, s in enumerate(SCHEDULE))
    return {"all": LayerMap(meta=tuple(range(params.n_layers)), hf=text_hf),
            "cross": LayerMap(meta=tuple(range(len(SCHEDULE))), hf=cross_hf)}


def _cross(role: str, hf: str, meta: str, shape: tuple[str, ...], split: Split) -> TensorEntry:
    return TensorEntry(role, f"toy.blocks.{{layer}}.{hf}.weight", f"xblk.{{layer}}.{meta}.weight",
                       shape, split, layers="cross")


# The cross layers' entries follow the text layers' in one run of per-layer entries, so the
# output lists every HF layer's tensors together, in HF layer order.
_TEXT_ENTRIES = TOY_TENSORS.entries[1:10]
LAYERED = replace(TOY, key="toy_layered", label="Toy layered", tensors=TensorTable(entries=(
    TOY_TENSORS.entries[0], *_TEXT_ENTRIES,
    _cross("cross_gate", "cross_gate", "gate", ("ffn_dim", "dim"), Split.ROWS),
    _cross("cross_norm", "cross_norm", "norm", ("dim",), Split.REPLICATED),
    *TOY_TENSORS.entries[10:])), layer_sets=_interleaved,
    recognise=lambda params, ckpt: "toy_layered" in params.raw)


def _with_params_key(folder: Path, key: str) -> None:
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**params, key: {}}))


def test_two_layer_sets_whose_hf_indices_interleave(make_checkpoint: MakeCkpt,
                                                    tmp_path: Path) -> None:
    src = _toy_checkpoint(make_checkpoint, tmp_path)
    _with_params_key(src, "toy_layered")
    generator = torch.Generator().manual_seed(20)
    cross = {}
    for j in range(len(SCHEDULE)):
        cross[f"xblk.{j}.gate.weight"] = (torch.randn(FFN, DIM, generator=generator), Split.ROWS)
        cross[f"xblk.{j}.norm.weight"] = (torch.randn(DIM, generator=generator),
                                          Split.REPLICATED)
    _add_tensors(src, cross)
    ranks = _ranks(src)
    out = tmp_path / "out"
    with registered(LAYERED):
        report = convert(src, out, _options())
    assert report.family == "Toy layered"
    written = _written(out)
    # HF layers 0 and 2 are the cross layers 0 and 1; HF layers 1 and 3 the text layers 0, 1.
    for hf_idx, j in ((0, 0), (2, 1)):
        assert torch.equal(written[f"toy.blocks.{hf_idx}.cross_gate.weight"],
                           cross[f"xblk.{j}.gate.weight"][0])
        assert torch.equal(written[f"toy.blocks.{hf_idx}.cross_norm.weight"],
                           cross[f"xblk.{j}.norm.weight"][0])
        assert f"toy.blocks.{hf_idx}.q.weight" not in written
    for hf_idx, i in ((1, 0), (3, 1)):
        assert torch.equal(written[f"toy.blocks.{hf_idx}.q.weight"],
                           torch.cat([r[f"blk.{i}.q.weight"] for r in ranks]))
        assert torch.equal(written[f"toy.blocks.{hf_idx}.down.weight"],
                           torch.cat([r[f"blk.{i}.down.weight"] for r in ranks], dim=1))
        assert torch.equal(written[f"toy.blocks.{hf_idx}.ln1.weight"],
                           ranks[0][f"blk.{i}.ln1.weight"])
        assert f"toy.blocks.{hf_idx}.cross_gate.weight" not in written
    assert len(written) == 2 + 2 * 9 + 2 * 2 + 1  # embed, head; text; cross; final norm
    # The file lists the layers in HF order, each layer's tensors together.
    assert [name.split(".")[2] for name in _file_order(out) if name.startswith("toy.blocks.")] \
        == ["0"] * 2 + ["1"] * 9 + ["2"] * 2 + ["3"] * 9


def _file_order(out: Path) -> list[str]:
    """Tensor names in the order their bytes sit in the output files."""
    names: list[tuple[str, int, str]] = []
    for shard in sorted(out.glob("*.safetensors")):
        with shard.open("rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        names += [(shard.name, v["data_offsets"][0], k) for k, v in header.items()
                  if k != "__metadata__"]
    return [name for _, _, name in sorted(names)]


# One HF tensor made of three Meta tensors stacked as row bands, each split its own way: rows
# split across the ranks, then rows every rank holds whole, then rows split by columns.
BAND_ROWS = {"stack_rows.weight": (FFN, Split.ROWS), "stack_whole.weight": (8, Split.REPLICATED),
             "stack_cols.weight": (16, Split.COLS)}
_BANDS = (
    TensorEntry("band_rows", "toy.stacked.weight", "stack_rows.weight", ("ffn_dim + 24", "dim"),
                Split.ROWS, meta_shape=("ffn_dim", "dim"), row_offset="0"),
    TensorEntry("band_whole", "toy.stacked.weight", "stack_whole.weight",
                ("ffn_dim + 24", "dim"), Split.REPLICATED, meta_shape=("8", "dim"),
                row_offset="ffn_dim"),
    TensorEntry("band_cols", "toy.stacked.weight", "stack_cols.weight", ("ffn_dim + 24", "dim"),
                Split.COLS, meta_shape=("16", "dim"), row_offset="ffn_dim + 8"),
)
BANDED = replace(TOY, key="toy_banded", label="Toy banded", tensors=TensorTable(
    entries=(TOY_TENSORS.entries[0], *_BANDS, *TOY_TENSORS.entries[1:])),
    recognise=lambda params, ckpt: "toy_banded" in params.raw)


def _small_jobs(monkeypatch: pytest.MonkeyPatch, rows: int) -> list[Job]:
    """Jobs of `rows` rows of the toy's width (a budget far tighter than any --max-ram can
    say, so that jobs cut the bands anywhere); returns the jobs as they are planned."""
    choose = jobs_module.choose_slots
    planned: list[Job] = []
    jobs_for = jobs_module._jobs_for

    def tight(*args: Any, **kwargs: Any) -> tuple[int, int]:
        depth, _ = choose(*args, **kwargs)
        return depth, rows * DIM * 4

    def recorded(*args: Any, **kwargs: Any) -> list[Job]:
        made = jobs_for(*args, **kwargs)
        planned.extend(made)
        return made
    monkeypatch.setattr(jobs_module, "choose_slots", tight)
    monkeypatch.setattr(jobs_module, "_jobs_for", recorded)
    return planned


@pytest.mark.parametrize("n_ranks", [1, 2])
@pytest.mark.parametrize("job_rows", [None, 7])
def test_meta_tensors_stacked_as_row_bands(make_checkpoint: MakeCkpt, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, n_ranks: int,
                                           job_rows: int | None) -> None:
    src = _toy_checkpoint(lambda spec: make_checkpoint(replace(spec, n_ranks=n_ranks)),
                          tmp_path)
    _with_params_key(src, "toy_banded")
    generator = torch.Generator().manual_seed(21)
    merged = {name: (torch.randn(rows, DIM, generator=generator), split)
              for name, (rows, split) in BAND_ROWS.items()}
    _add_tensors(src, merged)
    planned = _small_jobs(monkeypatch, job_rows) if job_rows else []
    located: list[Plan] = []

    def locate(plan: Plan, checkpoint: Checkpoint) -> Plan:
        located.append(source_ranges.locate_reads(plan, checkpoint))
        return located[-1]
    monkeypatch.setattr(preparation, "locate_reads", locate)
    out = tmp_path / "out"
    with registered(BANDED):
        convert(src, out, _options())
    _check_band_reads(located[0], _ranks(src))
    written = _written(out)
    expected = torch.cat([tensor for tensor, _ in merged.values()])
    assert written["toy.stacked.weight"].shape == (FFN + 24, DIM)
    assert torch.equal(written["toy.stacked.weight"], expected)
    assert torch.equal(written["toy.blocks.1.q.weight"],
                       torch.cat([r["blk.1.q.weight"] for r in _ranks(src)]))
    if job_rows:
        # Jobs of 7 rows cut both band boundaries (192 and 200) inside a job.
        stacked = [job for job in planned if job.hf_name == "toy.stacked.weight"]
        assert len(stacked) == -(-(FFN + 24) // job_rows)
        crossing = [job for job in stacked if len({b.meta_name for b in job.blocks}) > 1]
        assert [(job.row_start, job.row_stop) for job in crossing] == [(189, 196), (196, 203)]


def _check_band_reads(plan: Plan, ranks: list[dict[str, torch.Tensor]]) -> None:
    """Every block of the banded tensor reads exactly the bytes of the rank rows it names."""
    blocks = [block for job in plan.jobs if job.hf_name == "toy.stacked.weight"
              for block in job.blocks]
    assert {block.meta_name for block in blocks} == set(BAND_ROWS)
    for block in blocks:
        assert block.read is not None
        rows = ranks[block.rank_idx][block.meta_name][
            block.src_row_start:block.src_row_start + block.n_rows]
        with plan.read_paths[block.read.file_idx].open("rb") as f:
            f.seek(block.read.offset_bytes)
            assert f.read(block.read.n_bytes) == rows.contiguous().numpy().tobytes()
