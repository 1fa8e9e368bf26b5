"""python -m benchmarks.run: generate (or reuse) checkpoints, run every configuration cold, write
benchmarks/results/*.json, RESULTS.md and the plots. `bash benchmarks/run.sh` is the documented
entry point (it installs matplotlib into .venv first); see benchmarks/README.md.

One session runs everything one after the other on one machine, so the ratios (streamconv / floor,
peer / streamconv) compare runs made under the same conditions; the report only divides figures
of the same session.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from streamconv.cli.sizes import parse_size

from . import cache
from .cache import CACHE_DIR, WORK_DIR, DiskError, gib
from .models import BenchModel, resolve_models
from .runners import (
    Session,
    ensure_peer_env,
    run_floor_copy,
    run_floor_cp,
    run_floor_direct,
    run_floor_rw,
    run_peer,
    run_streamconv,
    snapshot_streamconv,
)

RESULTS_DIR = cache.BENCH_DIR / "results"
# What the README documents and what was run for issue 4 (405B slices of 4 and 8 layers need
# 63 and 111 GiB of disk, input plus output, more than the benchmark machine had: see README).
DEFAULT_MODELS = "7b,1b,l2-1b,8b,70b-l2,70b-l4,70b-l8,405b-l1,405b-l2,13b"
# warm: the reference with its input in the page cache, streamconv and cp + fsync; shm: the
# output on a tmpfs (another file system, no O_DIRECT) for models of at most SHM_MAX_BYTES.
RUNNERS = ("streamconv", "peer", "floor", "warm", "shm")
SHM_MAX_BYTES = 4 << 30


@dataclass(frozen=True)
class Run:
    model: BenchModel
    runner: str  # streamconv[-warm|-shm], peer, floor-cp[-warm], floor-rw, -direct, -copy
    budget: str | None = None

    def extra_disk_bytes(self) -> int:
        """Disk a run needs beyond its input: one output; the peer also writes a full copy of
        the model as .bin files into TMPDIR before saving the safetensors."""
        return self.model.checkpoint_bytes * (2 if self.runner == "peer" else 1)


def plan_runs(models: list[BenchModel], *, reference: str, budgets: list[str],
              other_budget: str, runners: set[str]) -> list[Run]:
    """The reference model gets every budget, the peer and all four floors; other full-size
    models one budget, the cp floor and the two direct I/O floors; LLaMA slices one budget (they
    measure memory, not speed). Llama 4 and Llama 3.2 Vision slices get every budget and the
    O_DIRECT copy floor (issues 12 and 20 ask for time within 1.3x of it at 1G and 2G), and no
    peer (none runs here)."""
    runs: list[Run] = []
    for model in models:
        is_ref = model.key == reference
        if "floor" in runners and model.every_budget:
            runs.append(Run(model, "floor-copy"))
        elif "floor" in runners and model.slice_of is None:
            runs.append(Run(model, "floor-cp"))
            if is_ref:
                runs.append(Run(model, "floor-rw"))
            runs.append(Run(model, "floor-direct"))
            runs.append(Run(model, "floor-copy"))
        if "streamconv" in runners:
            every = is_ref or model.every_budget
            runs += [Run(model, "streamconv", b) for b in (budgets if every else [other_budget])]
        if "peer" in runners and is_ref and model.peer_version is not None:
            runs.append(Run(model, "peer"))
        if "warm" in runners and is_ref:
            runs += [Run(model, "floor-cp-warm"), Run(model, "streamconv-warm", budgets[0])]
        if "shm" in runners and model.checkpoint_bytes <= SHM_MAX_BYTES:
            runs.append(Run(model, "streamconv-shm", other_budget))
    return runs


def check_disk(runs: list[Run]) -> list[str]:
    """Problems that would stop the session midway, found before anything starts.

    A model fits when the room it needs (generation if not cached, then its input plus its
    largest run's output) is free now once the other cached checkpoints are evicted.
    """
    free = cache.free_bytes()
    cached = {p.name: cache.tree_bytes(p) for p in cache.cached_models()}
    problems = []
    for model in dict.fromkeys(r.model for r in runs):
        # The peer's second copy is checked again before its run and skipped alone if short.
        extra = max((r.extra_disk_bytes() for r in runs
                    if r.model == model and r.runner != "peer"), default=0)
        peer_extra = max((r.extra_disk_bytes() for r in runs
                          if r.model == model and r.runner == "peer"), default=0)
        own = cached.get(model.key, 0) if cache.is_cached(model) else 0
        need = (max(model.generation_peak_bytes, model.input_disk_bytes + extra)
                if not own else extra)
        # Everything the benchmark caches can go, except this model's own valid checkpoint
        # (already counted in `free`); a stale one is deleted before regenerating.
        available = free + sum(v for k, v in cached.items() if k != model.key or not own)
        if peer_extra and (need - extra + peer_extra + cache.DISK_MARGIN_BYTES > available):
            print(f"warning: the peer on {model.key} needs {gib(peer_extra)} besides its input "
                  f"and will be skipped unless the disk frees up ({gib(available)} now)")
        if need + cache.DISK_MARGIN_BYTES > available:
            problems.append(
                f"{model.key} ({model.label}) needs {gib(need)} of disk (checkpoint "
                f"{gib(model.checkpoint_bytes)}{'' if own else ', generated'} + outputs "
                f"{gib(extra)}) + {gib(cache.DISK_MARGIN_BYTES)} margin, but only "
                f"{gib(available)} can be freed on {CACHE_DIR}")
    return problems


def _describe(result: dict[str, Any]) -> str:
    status = "ok" if result["ok"] else "FAILED"
    return (f"{result['run_id']:<32} {status:<6} {result['wall_s']:8.1f} s  peak RSS "
            f"{gib(result['peak_rss_bytes']):>9}  {result['throughput_mib_s']:7.0f} MiB/s")


def median_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeat with the median wall time (the lower one of the middle two), with every
    repeat's wall time and peak listed, so a table shows a typical run and its spread."""
    ordered = sorted(results, key=lambda r: (not r["ok"], r["wall_s"]))
    ok = [r for r in ordered if r["ok"]] or ordered
    chosen = dict(ok[(len(ok) - 1) // 2])
    chosen["repeats"] = [{"wall_s": r["wall_s"], "peak_rss_bytes": r["peak_rss_bytes"],
                          "ok": r["ok"], "loadavg": r["cold_start"]["loadavg"]}
                         for r in results]
    chosen["peak_rss_bytes_max"] = max(r["peak_rss_bytes"] for r in results)
    return chosen


def run_session(runs: list[Run], *, results_dir: Path, log: Callable[[str], None],
                repeat: int = 1, peer_repeat: int = 1) -> None:
    session_id = time.strftime("%Y%m%d-%H%M%S")
    raw_dir = results_dir / "raw" / session_id
    raw_dir.mkdir(parents=True, exist_ok=True)
    snapshot, code = snapshot_streamconv(CACHE_DIR)
    session = Session(session_id, raw_dir, snapshot, code)
    log(f"session {session_id}: streamconv {code['streamconv_sha']} (git {code['git_head'][:10]}"
        f"{', uncommitted changes' if code['streamconv_uncommitted'] else ''})")
    if any(r.runner == "peer" for r in runs):
        ensure_peer_env()
    models = list(dict.fromkeys(r.model for r in runs))
    for model in models:
        model_runs = [r for r in runs if r.model == model]
        # The peer's extra room is made before each of its runs (evicting other checkpoints, or
        # skipping the peer alone when that is not enough), not here: it should not cost the
        # model its other runs.
        room = model.input_disk_bytes + max(r.extra_disk_bytes() for r in model_runs
                                            if r.runner != "peer" or len(model_runs) == 1)
        if not cache.is_cached(model):
            room = max(room, model.generation_peak_bytes)
        evicted = cache.make_room(room, keep=[cache.checkpoint_dir(model)])
        if evicted:
            log(f"evicted cached checkpoints to make room: {', '.join(evicted)}")
        started = time.monotonic()
        try:
            if cache.free_bytes() < room + cache.DISK_MARGIN_BYTES - cache.tree_bytes(
                    cache.checkpoint_dir(model)):
                raise DiskError(f"{model.key} needs {gib(room)} of disk (checkpoint and "
                                f"outputs), {gib(cache.free_bytes())} is free now (others "
                                "write to this disk too)")
            ckpt = cache.ensure_checkpoint(model, log=log)
        except DiskError as e:
            log(f"skipped {model.key}: {e}")
            continue
        if time.monotonic() - started > 1:
            log(f"  generated in {time.monotonic() - started:.0f} s")
        done: dict[str, list[dict[str, Any]]] = {}
        for round_idx in range(repeat):  # rounds: slow drift in the load hits every run
            # Each round keeps its own logs and per-run JSON (with the full timeline).
            round_session = replace(session, raw_dir=session.raw_dir / f"round{round_idx + 1}")
            round_session.raw_dir.mkdir(parents=True, exist_ok=True)
            for run in model_runs:
                if run.runner == "peer" and round_idx >= peer_repeat:
                    continue
                # Other cached checkpoints can be generated again; a skipped run cannot.
                if evicted := cache.make_room(run.extra_disk_bytes(),
                                              keep=[cache.checkpoint_dir(model)]):
                    log(f"evicted cached checkpoints to make room: {', '.join(evicted)}")
                free = cache.free_bytes()
                if free < run.extra_disk_bytes() + cache.DISK_MARGIN_BYTES:
                    log(f"skipped {run.model.key} {run.runner} {run.budget or ''}: it writes "
                        f"{gib(run.extra_disk_bytes())}, {gib(free)} is free now (others "
                        f"write to this disk too; {gib(cache.DISK_MARGIN_BYTES)} margin)")
                    continue
                try:
                    result = _execute(round_session, run, ckpt)
                except (MemoryError, RuntimeError) as e:  # RuntimeError: the launcher died
                    log(f"{run.model.key} {run.runner}: {e}")
                    continue
                rid = result["run_id"]
                (round_session.raw_dir / f"{rid}.json").write_text(json.dumps(result) + "\n")
                done.setdefault(rid, []).append(result)
                # Rewritten after every run, so an interrupted session keeps what it measured;
                # benchmarks.report copies each model's newest session into results/.
                (session.raw_dir / f"{rid}.json").write_text(
                    json.dumps(median_result(done[rid]), indent=1) + "\n")
                log(_describe(result))
    shutil.rmtree(WORK_DIR, ignore_errors=True)


def _execute(session: Session, run: Run, ckpt: Path) -> dict[str, Any]:
    if run.runner.startswith("streamconv"):
        assert run.budget is not None
        return run_streamconv(session, run.model, ckpt, run.budget,
                              variant=run.runner.removeprefix("streamconv").lstrip("-"))
    if run.runner == "floor-cp-warm":
        return run_floor_cp(session, run.model, ckpt, warm=True)
    runner = {"peer": run_peer, "floor-cp": run_floor_cp, "floor-rw": run_floor_rw,
              "floor-direct": run_floor_direct, "floor-copy": run_floor_copy}[run.runner]
    return runner(session, run.model, ckpt)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help="comma-separated: 7b, 13b, 8b, 70b-lN, 405b-lN, scout-lN, "
                             "vision90-lN (N layers), 'slices', 'scout' (scout-l1,scout-l2) or "
                             "'vision90' (vision90-l1,vision90-l2) (default "
                             f"{DEFAULT_MODELS})")
    parser.add_argument("--reference", default="7b",
                        help="the model measured at every --budgets with the peer and all floors")
    parser.add_argument("--budgets", default="8G,2G,1G",
                        help="--max-ram values for the reference and the Llama 4 and "
                             "Vision slices")
    parser.add_argument("--budget", default="2G", help="--max-ram for every other model")
    parser.add_argument("--runners", default=",".join(RUNNERS),
                        help="subset of streamconv,peer,floor")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every configuration N times, in rounds; the JSON keeps the "
                             "median run and lists all")
    parser.add_argument("--peer-repeat", type=int, default=1,
                        help="rounds that include the peer (default 1: it takes ~1 min and "
                             "writes twice the model to disk)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--dry-run", action="store_true",
                        help="list the runs and check the disk, run nothing")
    parser.add_argument("--no-report", action="store_true",
                        help="skip RESULTS.md and the plots (python -m benchmarks.report later)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        models = resolve_models(args.models)
        budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
        for size in [*budgets, args.budget]:
            parse_size(size)
    except ValueError as e:
        print(f"error: {e}")
        return 2
    runners = {r.strip() for r in args.runners.split(",")}
    if unknown := runners - set(RUNNERS):
        print(f"error: unknown runner(s) {', '.join(sorted(unknown))}; use {','.join(RUNNERS)}")
        return 2
    runs = plan_runs(models, reference=args.reference, budgets=budgets,
                     other_budget=args.budget, runners=runners)
    for run in runs:
        print(f"  {run.model.key:<9} {run.runner:<12} {run.budget or '':<4} "
              f"checkpoint {gib(run.model.checkpoint_bytes)}")
    if problems := check_disk(runs):
        print("error: not enough disk to start; nothing was run:")
        for problem in problems:
            print(f"  - {problem}")
        print("free space, or drop those models from --models")
        return 1
    if args.dry_run:
        return 0
    try:
        with cache.exclusive_session():
            run_session(runs, results_dir=args.results_dir,
                        log=lambda s: print(s, flush=True), repeat=args.repeat,
                        peer_repeat=args.peer_repeat)
    except DiskError as e:
        print(f"error: {e}")
        return 1
    if not args.no_report:
        from .report import write_report

        for path in write_report(args.results_dir, reference=args.reference):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
