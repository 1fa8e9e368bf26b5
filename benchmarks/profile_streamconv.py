"""Where streamconv's wall time goes: python -m benchmarks.profile_streamconv [--model 7b].

Two kinds of evidence, both on the cached checkpoint, cold, from the session's snapshot of
streamconv/ (nothing in streamconv/ is edited):

1. py-spy: one conversion sampled at 100 Hz with --threads --idle; every sample is put in a
   category by its innermost streamconv frame and the source line it is on (preadv, pwrite,
   crc32, fsync, permute, copy, waiting, imports...), per thread kind (main thread vs job
   threads). Gives thread-seconds per category.
2. Counterfactuals: the same conversion with one mechanism switched off by monkeypatching in the
   child process (the journal's periodic fsync; the per-job crc32), interleaved with unpatched
   runs and repeated, so the wall time each mechanism costs is measured, not guessed.

Writes results/raw/profile-<session>/profile_<model>.json (git-ignored) and prints a table;
benchmarks.report renders it into RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from .cache import (
    CACHE_DIR,
    WORK_DIR,
    DiskError,
    ensure_checkpoint,
    evict_from_page_cache,
    exclusive_session,
    input_files,
)
from .models import resolve_models
from .monitor import Measurement, measure
from .runners import REPO, snapshot_streamconv

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PYSPY = REPO / ".venv" / "bin" / "py-spy"
RATE_HZ = 100

# Runs in the child: patch, then the real CLI. The patches only change module attributes that the
# converter reads at call time, so the code path is otherwise the one measured by the session.
VARIANT_CODE = """
import sys, types
variant = sys.argv[1]
if "no-periodic-fsync" in variant:
    import streamconv.runtime.journal as journal
    journal.COMMIT_BYTES = 1 << 62          # commit (and fsync) only once, at the end
    journal.COMMIT_SECONDS = float("inf")
if "no-crc" in variant:
    import streamconv.runtime.executor as executor
    executor.zlib = types.SimpleNamespace(crc32=lambda data, value=0: 0)
if variant.startswith("depth"):
    import streamconv.planning.slots as slots
    slots.MAX_DEPTH = int(variant[len("depth"):])  # job threads / slots in flight
from streamconv.cli.main import main
sys.exit(main(sys.argv[2:]))
"""
VARIANTS = ("baseline", "no-periodic-fsync", "no-crc", "no-periodic-fsync+no-crc")
# A floor run interleaved with the variants, so each round has its own reference.
FLOOR = "floor: cp + fsync"

_FRAME_RE = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _convert_args(ckpt: Path, out_dir: Path, budget: str) -> list[str]:
    return ["convert", str(ckpt), str(out_dir), "--max-ram", budget, "--no-tokenizer",
            "--quiet"]


def _cold(ckpt: Path, out_dir: Path) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    evict_from_page_cache(input_files(ckpt))


class _Lines:
    """Source lines of the snapshot, to tell apart calls that py-spy shows as one frame."""

    def __init__(self, snapshot: Path) -> None:
        self.snapshot = snapshot
        self.cache: dict[str, list[str]] = {}

    def get(self, file: str, line: int) -> str:
        if file not in self.cache:
            path = Path(file)
            if not path.is_absolute():
                path = self.snapshot / file
            try:
                self.cache[file] = path.read_text().splitlines()
            except OSError:
                self.cache[file] = []
        lines = self.cache[file]
        return lines[line - 1] if 0 < line <= len(lines) else ""


def _categorise(frames: list[str], lines: _Lines) -> str:
    """Innermost first: the first frame that says what the thread is doing decides."""
    for frame in reversed(frames):
        match = _FRAME_RE.match(frame.strip())
        if not match:
            continue
        # py-spy names methods Class.method; the method is what tells.
        func, file = match["func"].rsplit(".", 1)[-1], match["file"]
        text = lines.get(file, int(match["line"] or 0)) if "streamconv" in file else ""
        if "crc32" in text:
            return "crc32 of output rows"
        if "copy_file_range" in text:
            return "copy_file_range (kernel file-to-file copy)"
        if func == "read_into" or "preadv" in text:
            return "read: preadv"
        if func in ("_pwrite", "write_job") or "pwrite" in text:
            return "write: pwrite"
        if "fsync" in text or func in ("sync", "sync_shards", "fsync_dir", "full_fsync",
                                       "data_sync"):
            return "fsync"
        if func == "permute_rotary_into":
            return "q/k rotary permute"
        if "copy_(" in text:
            return "copy/cast into slot"
        if func in ("_append", "commit", "record"):
            return "journal"
        if func in ("get", "wait", "_wait_for_tstate_lock", "acquire", "result", "join",
                    "_worker") and "streamconv" not in file:
            return "idle: waiting for work/slot"
        if ("importlib" in file or "<frozen" in file or func in ("_find_and_load",
                                                                  "exec_module")):
            return "start-up: imports"
        if func in ("prepare", "open_checkpoint", "open_rank_file", "conversion_fingerprint",
                    "plan_conversion", "detect_model"):
            return "prepare: metadata and plan"
        if func in ("publish", "fill", "finish"):
            return "publish: final fsync + renames"
    return "other"


def summarise_pyspy(raw: Path, snapshot: Path) -> dict[str, dict[str, float]]:
    """{thread kind: {category: seconds}} from py-spy's raw (collapsed) output."""
    lines = _Lines(snapshot)
    totals: dict[str, Counter[str]] = defaultdict(Counter)
    for row in raw.read_text().splitlines():
        stack, _, count = row.rpartition(" ")
        frames = stack.split(";")
        # "thread (1234): job_0" with --threads: the name says which pool it belongs to.
        name = frames[0].partition("): ")[2]
        kind = ("job threads" if name.startswith("job") else
                "journal thread" if name.startswith("journal") else "main thread")
        totals[kind][_categorise(frames[1:], lines)] += int(count)
    return {kind: {cat: n / RATE_HZ for cat, n in c.most_common()} for kind, c in totals.items()}


def run_pyspy(ckpt: Path, snapshot: Path, raw_dir: Path, budget: str) -> dict[str, Any]:
    out_dir = WORK_DIR / "out"
    _cold(ckpt, out_dir)
    raw = raw_dir / "pyspy.raw.txt"
    argv = [str(PYSPY), "record", "-r", str(RATE_HZ), "--threads", "--idle", "-f", "raw",
            "-o", str(raw), "--", sys.executable, "-m", "streamconv",
            *_convert_args(ckpt, out_dir, budget)]
    m = measure(argv, raw_dir=raw_dir, run_id="pyspy", cwd=snapshot)
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"wall_s": m.wall_s, "returncode": m.returncode,
            "thread_seconds": summarise_pyspy(raw, snapshot) if raw.exists() else {}}


def _perf_top(data: Path, *, n: int = 15) -> list[tuple[str, float]]:
    """(symbol, % of samples) by self time, from perf report."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                          "--sort", "dso,sym", "-g", "none", "--percent-limit", "0.5"],
                         capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("%") and not line.startswith("#"):
            rows.append((" ".join(parts[1:]), float(parts[0].rstrip("%"))))
    return rows[:n]


def run_perf(ckpt: Path, snapshot: Path, raw_dir: Path, budget: str) -> dict[str, Any]:
    """perf record (cpu-clock, 499 Hz, kernel + user) of streamconv and of the cp floor: where
    the CPU time of each goes, kernel copies and page-cache work included (py-spy stops at the
    syscall). Needs perf and perf_event_paranoid <= 2."""
    if shutil.which("perf") is None:
        return {"error": "perf not installed"}
    out_dir = WORK_DIR / "out"
    result: dict[str, Any] = {}
    commands = {
        "streamconv": [sys.executable, "-m", "streamconv", *_convert_args(ckpt, out_dir, budget)],
        "cp": ["cp", "--reflink=never", *map(str, input_files(ckpt)), str(out_dir)],
    }
    for name, argv in commands.items():
        _cold(ckpt, out_dir)
        if name == "cp":
            out_dir.mkdir(parents=True)
        data = raw_dir / f"perf.{name}.data"
        m = measure(["perf", "record", "-e", "cpu-clock", "-F", "499", "-g", "-o", str(data),
                     "--", *argv], raw_dir=raw_dir, run_id=f"perf.{name}", cwd=snapshot)
        shutil.rmtree(out_dir, ignore_errors=True)
        result[name] = {"wall_s": m.wall_s, "user_s": m.user_s, "sys_s": m.sys_s,
                        "cpu_wait_s": m.cpu_wait_s, "psi_cpu_some": m.psi_cpu_some,
                        "top_symbols_pct": _perf_top(data)}
        print(f"  perf {name}: {m.wall_s:.1f} s, user {m.user_s:.1f} s, sys {m.sys_s:.1f} s",
              flush=True)
        for sym, pct in result[name]["top_symbols_pct"][:8]:
            print(f"    {pct:5.1f}%  {sym}")
    return result


def _measure_floor(ckpt: Path, out_dir: Path, raw_dir: Path, rep: int) -> Measurement:
    """cp + fsync of the inputs as one measurement (wall and CPU summed)."""
    out_dir.mkdir(parents=True)
    files = input_files(ckpt)
    cp = measure(["cp", "--reflink=never", *map(str, files), str(out_dir)], raw_dir=raw_dir,
                 run_id=f"floor.cp.{rep}")
    sync = measure(["sync", "--", *(str(out_dir / f.name) for f in files)], raw_dir=raw_dir,
                   run_id=f"floor.sync.{rep}")
    return replace(cp, wall_s=cp.wall_s + sync.wall_s, user_s=cp.user_s + sync.user_s,
                   sys_s=cp.sys_s + sync.sys_s, cpu_wait_s=cp.cpu_wait_s + sync.cpu_wait_s,
                   returncode=cp.returncode or sync.returncode)


def run_variants(ckpt: Path, snapshot: Path, raw_dir: Path, budget: str,
                 repeats: int, variants: list[str]) -> list[dict[str, Any]]:
    out_dir = WORK_DIR / "out"
    rows = []
    for rep in range(repeats):
        for variant in variants:
            _cold(ckpt, out_dir)
            if variant == FLOOR:
                m = _measure_floor(ckpt, out_dir, raw_dir, rep)
            else:
                argv = [sys.executable, "-c", VARIANT_CODE, variant,
                        *_convert_args(ckpt, out_dir, budget)]
                m = measure(argv, raw_dir=raw_dir, run_id=f"{variant}.{rep}", cwd=snapshot)
            shutil.rmtree(out_dir, ignore_errors=True)
            rows.append({"variant": variant, "repeat": rep, "wall_s": m.wall_s,
                         "user_s": m.user_s, "sys_s": m.sys_s, "ok": m.returncode == 0,
                         "cpu_wait_s": m.cpu_wait_s, "psi_cpu_some": m.psi_cpu_some,
                         "peak_rss_bytes": m.peak_rss_bytes})
            print(f"  {variant:<28} rep {rep}: {m.wall_s:6.1f} s  user {m.user_s:5.1f}  "
                  f"sys {m.sys_s:5.1f}  waiting for a CPU {m.cpu_wait_s:5.1f} s  "
                  f"(machine: CPU pressure {m.psi_cpu_some:.0%})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_streamconv")
    parser.add_argument("--model", default="7b")
    parser.add_argument("--budget", default="2G")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-pyspy", action="store_true")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated, from {', '.join(VARIANTS)}, depthN (at most N "
                             f"jobs in flight) and '{FLOOR}' (default: the first four)")
    parser.add_argument("--perf", action="store_true",
                        help="also perf record streamconv and cp (kernel time included)")
    parser.add_argument("--out", default=None,
                        help="result file name in results/raw/profile-<session>/ (default "
                             "profile_<model>.json)")
    parser.add_argument("--snapshot", default=None,
                        help="streamconv content hash of an earlier session (its copy in "
                             "benchmarks/cache/snapshot/) to profile the code that session ran")
    args = parser.parse_args(argv)
    try:
        with exclusive_session():
            return _profile(args)
    except DiskError as e:
        print(f"error: {e}")
        return 1


def _profile(args: argparse.Namespace) -> int:
    (model,) = resolve_models(args.model)
    ckpt = ensure_checkpoint(model, log=lambda m: print(m, flush=True))
    snapshot, code = snapshot_streamconv(CACHE_DIR)
    if args.snapshot:
        snapshot = CACHE_DIR / "snapshot" / args.snapshot
        code = {"streamconv_sha": args.snapshot, "note": "snapshot of an earlier session"}
        if not (snapshot / "streamconv").is_dir():
            print(f"error: no snapshot {snapshot}")
            return 2
    session = time.strftime("%Y%m%d-%H%M%S")
    raw_dir = RESULTS_DIR / "raw" / f"profile-{session}"
    raw_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"model": model.key, "budget": args.budget, "session": session,
                              "code": code, "checkpoint_bytes": model.checkpoint_bytes}
    if not args.skip_pyspy:
        result["pyspy"] = run_pyspy(ckpt, snapshot, raw_dir, args.budget)
        print(json.dumps(result["pyspy"], indent=1))
    if args.perf:
        result["perf"] = run_perf(ckpt, snapshot, raw_dir, args.budget)
    if args.repeats:
        variants = args.variants.split(",") if args.variants else list(VARIANTS)
        result["variants"] = run_variants(ckpt, snapshot, raw_dir, args.budget, args.repeats,
                                          variants)
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    out = raw_dir / (args.out or f"profile_{model.key}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
