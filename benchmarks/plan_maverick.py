"""`streamconv plan` on a Maverick-shaped folder (issue 12): `bash benchmarks/run.sh
--plan-maverick [--layers N] [--budget 1G] [--map-shared]`.

Maverick at its real size (~750 GiB in 8 rank files of ~94 GiB) fits on no disk here, so the
folder is written sparse (fixtures/llama4_synthetic.write_llama4_sparse): real zip and pickle
structure at real offsets, holes for the data, a few MB on disk. plan reads only that structure.
The output goes to benchmarks/results/plan_maverick-l<N>.txt; the folder is deleted afterwards
unless --keep.

--map-shared runs plan with torch.load's mmap as MAP_SHARED instead of torch's default
MAP_PRIVATE. Diagnostic only: the source index maps each whole rank file with torch.load(mmap=
True), and a private writable mapping larger than RAM + swap is refused under the kernel's
default overcommit heuristic (vm.overcommit_memory=0), which real Maverick rank files (94 GiB)
are on this 23 GiB machine; a shared mapping has no commit charge.
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
_SHARED_PLAN = ("import mmap, sys, torch\n"
                "torch.serialization.set_default_mmap_options(mmap.MAP_SHARED)\n"
                "from streamconv.cli.main import main\n"
                "sys.exit(main(sys.argv[1:]))\n")


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
    parser.add_argument("--map-shared", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the sparse folder")
    args = parser.parse_args(argv)
    folder = CACHE_DIR / f"maverick-sparse-l{args.layers}"
    shutil.rmtree(folder, ignore_errors=True)
    write_llama4_sparse(maverick(n_layers=args.layers), folder)
    disk = _disk_summary(folder)
    plan_argv = ["plan", str(folder), "--max-ram", args.budget, "--no-tokenizer"]
    entry = ["-c", _SHARED_PLAN] if args.map_shared else ["-m", "streamconv"]
    done = subprocess.run([sys.executable, *entry, *plan_argv], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "110"})
    command = "streamconv " + " ".join(plan_argv)
    text = (f"$ {command}{'  (torch.load mmap MAP_SHARED)' if args.map_shared else ''}\n"
            f"# input: {disk}\n# exit code {done.returncode}\n{done.stdout}{done.stderr}")
    RESULTS_DIR.mkdir(exist_ok=True)
    suffix = "-map-shared" if args.map_shared else ""
    out = RESULTS_DIR / f"plan_maverick-l{args.layers}-{args.budget}{suffix}.txt"
    out.write_text(text)
    print(text)
    print(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(folder)
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
