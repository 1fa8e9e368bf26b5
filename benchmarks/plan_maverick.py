"""`streamconv plan` on a Maverick-shaped folder (issue 12): `bash benchmarks/run.sh
--plan-maverick [--layers N] [--budget 1G]`.

Maverick at its real size (~750 GiB in 8 rank files of ~94 GiB) fits on no disk here, so the
folder is written sparse (fixtures/llama4_synthetic.write_llama4_sparse): real zip and pickle
structure at real offsets, holes for the data, a few MB on disk. plan reads only that structure.
The output goes to benchmarks/results/raw/plans/plan_maverick-l<N>-<budget>.txt (git-ignored;
the figures are quoted in docs/benchmarks.md); the folder is deleted afterwards
unless --keep.

The rank files (~94 GiB each) are larger than this machine's RAM: the source index reads
their pickles and zip directories only (source/pickle_index.py). Before it did, torch.load
(mmap=True) mapped each whole file privately, which Linux refuses beyond RAM + swap.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from fixtures.llama4_layout import maverick
from fixtures.llama4_synthetic import write_llama4_sparse

from .cache import CACHE_DIR, gib

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _disk_summary(folder: Path) -> str:
    files = sorted(folder.iterdir())
    apparent = sum(p.stat().st_size for p in files)
    allocated = sum(p.stat().st_blocks * 512 for p in files)
    return (f"{len(files)} files, {gib(apparent)} apparent (ls -l), "
            f"{allocated / (1 << 20):.1f} MiB allocated (du)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bash benchmarks/run.sh --plan-maverick",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=48, help="Maverick has 48")
    parser.add_argument("--budget", default="1G")
    parser.add_argument("--keep", action="store_true", help="keep the sparse folder")
    args = parser.parse_args(argv)
    folder = CACHE_DIR / f"maverick-sparse-l{args.layers}"
    shutil.rmtree(folder, ignore_errors=True)
    write_llama4_sparse(maverick(n_layers=args.layers), folder)
    disk = _disk_summary(folder)
    plan_argv = ["plan", str(folder), "--max-ram", args.budget, "--no-tokenizer"]
    done = subprocess.run([sys.executable, "-m", "streamconv", *plan_argv], capture_output=True,
                          text=True,
                          env={**os.environ, "COLUMNS": "110"})
    command = "streamconv " + " ".join(plan_argv)
    text = (f"$ {command}\n"
            f"# input: {disk}\n# exit code {done.returncode}\n{done.stdout}{done.stderr}")
    plans_dir = RESULTS_DIR / "raw" / "plans"
    plans_dir.mkdir(parents=True, exist_ok=True)
    out = plans_dir / f"plan_maverick-l{args.layers}-{args.budget}.txt"
    out.write_text(text)
    print(text)
    print(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(folder)
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
