"""cli/plan_json.py: `streamconv plan --json` prints every read the executor will issue.

The executor's reads are recorded at the three calls it makes into the rank reader (a staged or
page-cache read_span, a read_into, and an in-place O_DIRECT read), while a synthetic checkpoint
is converted; the multiset of (file, offset, length) must equal the byte ranges `plan --json`
printed for the same inputs and budget, and those ranges must cover every data byte of the
tensors the plan lists. A 7B-shaped plan (sparse rank file: real shapes, no data) shows them.
"""

from __future__ import annotations

import io
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fixtures.fp8_checkpoint import write_fp8_checkpoint
from fixtures.llama4_checkpoint import VisionSpec, scout_like, write_llama4_checkpoint
from fixtures.llama32_vision_checkpoint import VisionSpec as MllamaSpec
from fixtures.llama32_vision_checkpoint import write_vision_checkpoint
from fixtures.synthetic import SyntheticSpec, tiny, write_sparse_checkpoint
from streamconv.cli.main import main
from streamconv.model.family import Family
from streamconv.pipeline import conversion
from streamconv.runtime import executor
from streamconv.source.rank_reader import RankReader
from streamconv.source.tensor_index import open_checkpoint

MakeCkpt = Callable[[SyntheticSpec], Path]
Read = tuple[str, int, int]  # file, offset, length
# The plan depends on the baseline RSS (the budget left for slots); fixed, so that `plan` and
# the conversion that follows cut the same jobs.
BASELINE_BYTES = 200 << 20


@pytest.fixture(autouse=True)
def _fixed_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streamconv.pipeline.preparation.current_rss_bytes",
                        lambda: BASELINE_BYTES)


def _plan_json(*argv: str) -> dict[str, Any]:
    out = io.StringIO()
    assert main(["plan", "--json", *argv], console=Console(file=out, width=80)) == 0
    plan: dict[str, Any] = json.loads(out.getvalue())
    return plan


def _planned_reads(plan: dict[str, Any]) -> Counter[Read]:
    reads: Counter[Read] = Counter()
    for job in plan["jobs"]:
        for block in job["blocks"]:
            for key in ("read", "scale_read"):
                if block[key] is not None:
                    r = block[key]
                    reads[(r["file"], r["offset"], r["length"])] += 1
    return reads


class _RecordingReader:
    """The executor's reader with every request it makes recorded; O_DIRECT windows read
    inside an in-place read are that read's (recorded by _record_in_place), any other is
    recorded as it is."""

    def __init__(self, reader: RankReader, paths: tuple[Path, ...], reads: list[Read]) -> None:
        self._reader, self._paths, self.reads = reader, paths, reads
        self._lock = threading.Lock()
        self.in_place = threading.local()

    def _note(self, file_idx: int, offset: int, n_bytes: int) -> None:
        with self._lock:
            self.reads.append((str(self._paths[file_idx]), offset, n_bytes))

    def read_into(self, file_idx: int, offset: int, buffer: memoryview) -> None:
        self._note(file_idx, offset, len(buffer))
        self._reader.read_into(file_idx, offset, buffer)

    def read_span(self, file_idx: int, offset: int, n_bytes: int, area: memoryview) -> int:
        self._note(file_idx, offset, n_bytes)
        return self._reader.read_span(file_idx, offset, n_bytes, area)

    def read_direct(self, file_idx: int, position: int, window: memoryview, *,
                    needed: int) -> bool:
        if not getattr(self.in_place, "active", False):
            self._note(file_idx, position, needed)
        return self._reader.read_direct(file_idx, position, window, needed=needed)

    def __getattr__(self, name: str) -> Any:  # reads_direct, dio_align, ...: no data read
        return getattr(self._reader, name)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Read]]:
    """Every read the executor issues during the conversions the test runs."""
    reads: list[Read] = []
    runner_class = conversion.JobRunner
    readers: list[_RecordingReader] = []

    def runner(plan: Any, reader: RankReader, sink: Any) -> executor.JobRunner:
        recording = _RecordingReader(reader, plan.read_paths, reads)
        readers.append(recording)
        return runner_class(plan, recording, sink)  # type: ignore[arg-type]

    in_place = executor.read_in_place

    def record_in_place(reader: Any, file_idx: int, offset: int, slot: memoryview, *,
                        start: int, n_bytes: int) -> bool:
        reader.in_place.active = True
        try:
            done = in_place(reader, file_idx, offset, slot, start=start, n_bytes=n_bytes)
        finally:
            reader.in_place.active = False
        if done:
            reader._note(file_idx, offset, n_bytes)
        return done

    monkeypatch.setattr(conversion, "JobRunner", runner)
    monkeypatch.setattr(executor, "read_in_place", record_in_place)
    yield reads
    assert readers, "the conversion did not run the executor"


def _check_tensors_covered(src: Path, plan: dict[str, Any]) -> None:
    """Every tensor a block reads from is read whole (its rows in several jobs, its parts by
    several pieces), and nothing outside it: the data reads of one file do not overlap and sum,
    inside each tensor's bytes, to the tensor's size."""
    ckpt = open_checkpoint(src)
    used = {(b["read"]["file_idx"], b["meta_name"]) for j in plan["jobs"] for b in j["blocks"]}
    reads = sorted((b["read"]["file_idx"], b["read"]["offset"], b["read"]["length"])
                   for j in plan["jobs"] for b in j["blocks"])
    for (f1, o1, n1), (f2, o2, _) in zip(reads, reads[1:], strict=False):
        assert f1 != f2 or o1 + n1 <= o2, "overlapping reads"
    for file_idx, meta_name in used:
        ref = ckpt.tensors[file_idx][meta_name]
        inside = sum(n for f, o, n in reads if f == file_idx
                     and ref.offset_bytes <= o < ref.offset_bytes + ref.nbytes)
        assert inside == ref.nbytes, (meta_name, file_idx)
    assert sum(n for _, _, n in reads) == sum(
        ckpt.tensors[f][m].nbytes for f, m in used)


def _check_reads_equal_plan(src: Path, out: Path, recorded: list[Read], *argv: str) -> None:
    plan = _plan_json(str(src), str(out), *argv)
    assert main([str(src), str(out), "--quiet", *argv]) == 0
    planned = _planned_reads(plan)
    assert Counter(recorded) == planned
    assert sum(planned[r] * r[2] for r in planned) == plan["read_bytes"]
    _check_tensors_covered(src, plan)


def _tight(src: Path, *argv: str) -> str:
    """The smallest budget for src, so that the large tensors are cut into row ranges."""
    plan = _plan_json(str(src), "--max-ram", "4G", *argv)
    return str(plan["memory"]["min_budget_bytes"])


@pytest.mark.parametrize("n_ranks", [1, 2, 8])
def test_executor_reads_exactly_the_planned_ranges(n_ranks: int, make_checkpoint: MakeCkpt,
                                                   tmp_path: Path, recorded: list[Read]) -> None:
    src = make_checkpoint(tiny(Family.LLAMA2, n_ranks=n_ranks, with_tokenizer=False))
    argv = ("--no-tokenizer", "--dtype", "bf16")
    budget = _tight(src, *argv)
    plan = _plan_json(str(src), "--max-ram", budget, *argv)
    assert len(plan["jobs"]) > len({job["hf_name"] for job in plan["jobs"]}), \
        "the budget should cut tensors into row ranges"
    _check_reads_equal_plan(src, tmp_path / "out", recorded, "--max-ram", budget, *argv)
    if n_ranks == 1:
        # One rank file, no replicas: every tensor byte of the file but rope.freqs (which
        # transformers recomputes) is read, once.
        refs = open_checkpoint(src).tensors[0]
        assert sum(r[2] for r in recorded) == sum(
            ref.nbytes for ref in refs.values() if ref.meta_name != "rope.freqs")


def test_fp8_scales_are_planned_reads(tmp_path: Path, recorded: list[Read]) -> None:
    src = write_fp8_checkpoint(tiny(Family.LLAMA3_1, n_ranks=2, n_layers=4, dtype="bfloat16"),
                               tmp_path / "meta")
    plan = _plan_json(str(src), "--no-tokenizer")
    scale_reads = [b["scale_read"] for j in plan["jobs"] for b in j["blocks"]
                   if b["scale_read"] is not None]
    assert scale_reads and all(r["file"].endswith(".pt") and "fp8_scales" in r["file"]
                               for r in scale_reads)
    _check_reads_equal_plan(src, tmp_path / "out", recorded, "--no-tokenizer")


def test_llama4_fused_and_transposed_reads(tmp_path: Path, recorded: list[Read]) -> None:
    src = write_llama4_checkpoint(scout_like(vision=VisionSpec(), n_ranks=2), tmp_path / "meta")
    _check_reads_equal_plan(src, tmp_path / "out", recorded, "--no-tokenizer")


def test_llama32_vision_gathers_and_bands(tmp_path: Path, recorded: list[Read]) -> None:
    """Llama 3.2 Vision under its smallest budget: row bands (embed_tokens from two Meta
    tensors), layer maps and row gathers (the precomputed tile embeddings read each Meta tile
    once per aspect ratio that uses it, so their reads repeat by design; the others do not)."""
    spec = MllamaSpec(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, n_cross=1, vocab_size=512,
                      multiple_of=32, chunk_size=28, vision_width=16, local_layers=4,
                      global_layers=2, intermediate=(1, 3), n_ranks=2)
    src = write_vision_checkpoint(spec, tmp_path / "meta")
    argv = ("--no-tokenizer",)
    budget = _tight(src, *argv)
    plan = _plan_json(str(src), "--max-ram", budget, *argv)
    assert main([str(src), str(tmp_path / "out"), "--quiet", "--max-ram", budget, *argv]) == 0
    assert Counter(recorded) == _planned_reads(plan)
    gathered = [job for job in plan["jobs"] if job["zero_fill"]]
    assert {job["hf_name"] for job in gathered} == {
        "vision_model.gated_positional_embedding.tile_embedding.weight",
        "vision_model.pre_tile_positional_embedding.embedding.weight",
        "vision_model.post_tile_positional_embedding.embedding.weight"}
    # 8 aspect ratios of at most 4 tiles use 1+2+3+4+2+4+3+4 = 23 tile slots.
    assert sum(len(job["blocks"]) for job in gathered
               if job["hf_name"].startswith("vision_model.pre_tile")) == 23
    embed = {b["meta_name"] for j in plan["jobs"] if j["hf_name"].endswith("embed_tokens.weight")
             for b in j["blocks"]}
    assert embed == {"text_model.tok_embeddings.weight", "text_model.learnable_embedding.weight"}


def test_gguf_reads(make_checkpoint: MakeCkpt, tmp_path: Path, recorded: list[Read]) -> None:
    src = make_checkpoint(tiny(Family.LLAMA3_1, n_ranks=2))
    _check_reads_equal_plan(src, tmp_path / "m.gguf", recorded, "--outtype", "q8_0")


def test_7b_plan_shows_byte_ranges(tmp_path: Path) -> None:
    """LLaMA 2 7B's shapes (params.json of Meta's download: dim 4096, 32 layers, 32 heads,
    vocab 32000, multiple_of 256) in a sparse rank file: the plan reads every tensor byte of
    the 13.5 GB file once, each range inside one tensor."""
    spec = SyntheticSpec(Family.LLAMA2, 4096, 32, 32, None, 32000, with_tokenizer=False)
    src = write_sparse_checkpoint(spec, tmp_path / "llama-2-7b")
    plan = _plan_json(str(src), "--no-tokenizer", "--max-ram", "2G")
    assert plan["input_files"] == [str(src / "consolidated.00.pth")]
    assert [f["name"] for f in plan["output_files"]] == [
        "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors"]
    ckpt = open_checkpoint(src)
    tensors = sorted((r.offset_bytes, r.offset_bytes + r.nbytes) for r in ckpt.tensors[0]
                     .values() if r.meta_name != "rope.freqs")
    spans = sorted((r[1], r[1] + r[2]) for r in _planned_reads(plan).elements())
    assert sum(b - a for a, b in spans) == sum(b - a for a, b in tensors) == plan["read_bytes"]
    assert plan["read_bytes"] == 6_738_415_616 * 2  # LLaMA 2 7B's parameters, in bf16
    # Merged, the reads are exactly the tensors' bytes.
    starts = {a for a, _ in tensors}
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and merged[-1][1] == a and a not in starts:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    assert [tuple(m) for m in merged] == tensors
    first = plan["jobs"][0]
    assert first["hf_name"] == "model.embed_tokens.weight"
    assert first["blocks"][0]["read"]["file"].endswith("consolidated.00.pth")
    assert plan["memory"]["predicted_peak_bytes"] <= plan["memory"]["budget_bytes"]
