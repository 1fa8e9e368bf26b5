"""`streamconv plan` on sparse Llama 4 folders (fixtures/llama4_synthetic.write_llama4_sparse),
the way benchmarks/plan_maverick.py plans a Maverick-sized folder that no disk here can hold.

The sparse files must read as the real files do: same names, shapes, dtypes and offsets, so the
plan (schedule, output layout, predicted peak) equals the plan of the same spec written with real
bytes, and the files hold almost no blocks on disk.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import in_process_budget
from rich.console import Console

from fixtures.llama4_layout import Llama4Spec, VisionSpec, maverick_like, scout_like
from fixtures.llama4_synthetic import rank_file_bytes, write_llama4_sparse, write_llama4_streaming
from streamconv.cli.main import main

SPECS = {
    # Maverick's structure (dense layer 0, 128-expert-like MoE layer 1), tiny dims, 8 ranks.
    "maverick": maverick_like(n_layers=2, num_experts=16, n_ranks=8, vision=VisionSpec()),
    "scout": scout_like(n_layers=2, n_ranks=8, vision=VisionSpec()),
}


def _plan_text(folder: Path, budget: str) -> str:
    out = io.StringIO()
    assert main(["plan", str(folder), "--max-ram", budget, "--no-tokenizer"],
                console=Console(file=out, width=400)) == 0
    text = out.getvalue().replace(str(folder), "<folder>")
    # The baseline (and so the peak and the smallest budget) is this process's RSS at the time.
    process_dependent = ("baseline RSS", "predicted peak RSS", "smallest workable budget")
    return "\n".join(line.rstrip() for line in text.splitlines()
                     if not any(key in line for key in process_dependent))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_sparse_folder_plans_like_the_real_one(name: str, tmp_path: Path) -> None:
    spec: Llama4Spec = SPECS[name]
    # Same-length parents: the plan prints the folder, and its tables pad to the longest cell.
    sparse = write_llama4_sparse(spec, tmp_path / "sparse" / name)
    real = write_llama4_streaming(spec, tmp_path / "stream" / name)
    budget = in_process_budget()  # one budget for both: the plan prints it
    sparse_plan = _plan_text(sparse, budget)
    assert "Llama 4" in sparse_plan and "Schedule" in sparse_plan
    assert sparse_plan == _plan_text(real, budget)
    for rank_idx in range(spec.n_ranks):
        sparse_file = sparse / f"consolidated.{rank_idx:02d}.pth"
        real_file = real / f"consolidated.{rank_idx:02d}.pth"
        assert sparse_file.stat().st_size == real_file.stat().st_size
        assert sparse_file.stat().st_size >= rank_file_bytes(spec)


def test_sparse_rank_files_hold_holes_not_data(tmp_path: Path) -> None:
    """A rank file of ~30 MiB of tensors takes a few blocks: only the zip and pickle are written."""
    spec = maverick_like(n_layers=2, dim=1024, n_heads=8, n_kv_heads=8, vocab_size=8192,
                         multiple_of=256, num_experts=16, n_ranks=8,
                         vision=VisionSpec())
    folder = write_llama4_sparse(spec, tmp_path / "sparse")
    rank = os.stat(folder / "consolidated.00.pth")
    assert rank.st_size >= rank_file_bytes(spec) > 24 << 20
    assert rank.st_blocks * 512 < 1 << 20
    assert "Schedule" in _plan_text(folder, in_process_budget())


_INDEX_UNDER_LIMIT = """
import resource, sys
from pathlib import Path
import torch  # noqa: F401  (imported before the limit: its own mappings are not the point)
from streamconv.source.tensor_index import open_rank_file
with open("/proc/self/status") as status:
    vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
limit = vm + (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
refs = open_rank_file(Path(sys.argv[1]), 0)
print(len(refs), max(ref.offset_bytes + ref.nbytes for ref in refs.values()))
"""


def test_rank_files_larger_than_memory_are_indexed_without_mapping(tmp_path: Path) -> None:
    """A real Maverick rank file is 94 GiB; torch.load(mmap=True) maps a file privately and
    writably, which Linux refuses beyond RAM + swap, so the index must not map it at all.
    Here: a 2 GiB sparse rank file read by a process allowed 1 GiB more address space than it
    already has."""
    spec = maverick_like(n_layers=2, dim=2048, n_heads=16, n_kv_heads=8, vocab_size=16384,
                         multiple_of=256, num_experts=128, n_ranks=1)
    folder = write_llama4_sparse(spec, tmp_path / "sparse")
    rank = folder / "consolidated.00.pth"
    assert rank.stat().st_size > 2 << 30
    done = subprocess.run([sys.executable, "-c", _INDEX_UNDER_LIMIT, str(rank)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    n_tensors, end = map(int, done.stdout.split())
    assert n_tensors == 20 and end > 2 << 30  # embedding, norm, output, 2 layers of 8 and 9
