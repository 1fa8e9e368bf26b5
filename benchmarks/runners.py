"""The measured commands: streamconv at a budget, transformers' script (the peer), three floors.

Every runner gets the same cold start (the checkpoint's files fsynced and dropped from the page
cache, an empty output folder on the same disk) and returns one result dict, which run.py writes
as benchmarks/results/<run_id>.json. Outputs are deleted right after they are measured.

Tokenizers are left out on both sides (streamconv --no-tokenizer; the peer's write_model() is
called with vocab_size, as tests/test_transformers_script.py does): the checkpoints carry no
tokenizer.model, and converting one takes seconds, not the minutes measured here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from fixtures.llama4_layout import Llama4Spec
from streamconv.cli.sizes import parse_size

from .cache import WORK_DIR, cached_bytes, evict_from_page_cache, input_files, tree_bytes
from .models import BenchModel
from .monitor import Measurement, measure

REPO = Path(__file__).resolve().parents[1]
PEER_PYTHON = REPO / ".venv-peer" / "bin" / "python"
MAX_TIMELINE_POINTS = 600

# Runs in .venv-peer. write_model() is the script's whole weight conversion: torch.load of every
# shard, per-layer torch.save into a temporary folder (under $TMPDIR), from_pretrained of that
# folder, save_pretrained as safetensors.
PEER_CODE = """
import json, sys
from transformers.models.llama.convert_llama_weights_to_hf import write_model
job = json.loads(sys.argv[1])
write_model(model_path=job["dst"], input_base_path=job["src"], llama_version=job["version"],
            vocab_size=job["vocab_size"], num_shards=job["n_ranks"])
"""


@dataclass(frozen=True)
class Session:
    """What every run of one invocation shares; ratios are only taken within a session."""

    session_id: str
    raw_dir: Path
    snapshot_dir: Path  # a frozen copy of streamconv/ that every streamconv run imports
    code: dict[str, Any]


def snapshot_streamconv(cache_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Copy streamconv/ into the cache under its content hash and describe the code measured.

    Others edit streamconv/ while a session runs; every streamconv run of the session imports
    this copy (python -m from the copy's folder), so all of them measure the same code.
    """
    src = REPO / "streamconv"
    digest = hashlib.sha256()
    # The whole package, stage folders included (it was flat until the restructure).
    files = sorted(p for p in src.rglob("*") if p.suffix in (".py", ".typed")
                   and "__pycache__" not in p.parts)
    for path in files:
        rel = path.relative_to(src).as_posix()
        digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    sha = digest.hexdigest()[:12]
    root = cache_dir / "snapshot" / sha
    if not (root / "streamconv" / "__init__.py").exists():
        for path in files:
            dst = root / "streamconv" / path.relative_to(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst)
    head = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--", "streamconv")
    return root, {"streamconv_sha": sha, "git_head": head,
                  "streamconv_uncommitted": dirty.splitlines()}


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip()


def ensure_peer_env() -> Path:
    """Build .venv-peer with scripts/make_peer_env.sh (idempotent; left unchanged if complete)."""
    subprocess.run(["bash", str(REPO / "scripts" / "make_peer_env.sh")], check=True)
    return PEER_PYTHON


def _host_state() -> dict[str, Any]:
    return {"loadavg": os.getloadavg(), "mem_available_bytes": psutil.virtual_memory().available,
            "time_unix": time.time()}


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "mem_total_bytes": psutil.virtual_memory().total,
            "kernel": " ".join(os.uname()[2:3]), "python": sys.version.split()[0]}


def _cold_start(ckpt: Path, out_dir: Path) -> dict[str, Any]:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    files = input_files(ckpt)
    evict_from_page_cache(files)
    return {"input_cached_bytes_after_eviction": cached_bytes(files), **_host_state()}


def _warm_start(ckpt: Path, out_dir: Path) -> dict[str, Any]:
    """The input read into the page cache (as after a download or a copy), the output gone."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    files = input_files(ckpt)
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.read(8 << 20):
                pass
    return {"input_cached_bytes_before_run": cached_bytes(files), **_host_state()}


# Where the output of a "-shm" run goes: a tmpfs, so another file system than the input's and
# one without O_DIRECT (streamconv's fallback path). Only for models far smaller than the RAM.
SHM_DIR = Path("/dev/shm/streamconv-bench")


def _start(ckpt: Path, out_dir: Path, *, warm: bool) -> dict[str, Any]:
    return _warm_start(ckpt, out_dir) if warm else _cold_start(ckpt, out_dir)


def _fixed_costs(launcher_json: Path, report: dict[str, Any] | None, wall_s: float
                 ) -> dict[str, float] | None:
    """Seconds from exec to: the prefetch hint, convert() starting, the first job's read, and
    from the end of convert() to the process's exit (from streamconv's --report times)."""
    if not report or not report.get("first_read_unix") or not launcher_json.exists():
        return None
    exec_unix = json.loads(launcher_json.read_text())["start_unix"]
    converted = report["started_unix"] + report["seconds"]
    return {"exec_to_prefetch_s": report["prefetch_start_unix"] - exec_unix,
            "exec_to_convert_s": report["started_unix"] - exec_unix,
            "exec_to_first_read_s": report["first_read_unix"] - exec_unix,
            "convert_end_to_exit_s": exec_unix + wall_s - converted}


def _downsample(samples: list[tuple[float, int, int, int]]) -> list[list[float]]:
    """At most MAX_TIMELINE_POINTS samples for the committed JSON, keeping the RSS peak."""
    if len(samples) <= MAX_TIMELINE_POINTS:
        kept = samples
    else:
        step = len(samples) / MAX_TIMELINE_POINTS
        indexes = {int(i * step) for i in range(MAX_TIMELINE_POINTS)}
        indexes.add(max(range(len(samples)), key=lambda i: samples[i][1]))
        indexes.add(len(samples) - 1)
        kept = [samples[i] for i in sorted(indexes)]
    return [[round(t, 3), rss, read, written] for t, rss, read, written in kept]


def _result(session: Session, model: BenchModel, runner: str, budget: str | None,
            steps: dict[str, Measurement], cold: dict[str, Any],
            **extra: Any) -> dict[str, Any]:
    wall = sum(m.wall_s for m in steps.values())
    samples: list[tuple[float, int, int, int]] = []
    offset = 0.0
    read_base = write_base = 0
    for m in steps.values():  # steps run one after the other: one timeline, cumulative I/O
        samples += [(t + offset, rss, r + read_base, w + write_base)
                    for t, rss, r, w in m.samples]
        offset += m.wall_s
        read_base += m.read_bytes
        write_base += m.write_bytes
    failed = {name: m.output_tail for name, m in steps.items() if m.returncode != 0}
    return {
        "run_id": run_id(model, runner, budget),
        "session": session.session_id,
        "model": model.key, "model_label": model.label, "slice_of": model.slice_of,
        "n_layers": model.n_layers, "n_ranks": model.n_ranks,
        "checkpoint_bytes": model.checkpoint_bytes,
        "runner": runner, "budget": budget,
        "budget_bytes": parse_size(budget) if budget else None,
        "ok": not failed, "errors": failed,
        "wall_s": wall,
        "peak_rss_bytes": max(m.peak_rss_bytes for m in steps.values()),
        "read_bytes": sum(m.read_bytes for m in steps.values()),
        "write_bytes": sum(m.write_bytes for m in steps.values()),
        "throughput_mib_s": model.checkpoint_bytes / wall / (1 << 20),
        "steps": {name: m.summary() for name, m in steps.items()},
        "cold_start": cold,
        "code": session.code,
        "machine": _machine(),
        "timeline": _downsample(samples),
        **extra,
    }


def run_id(model: BenchModel, runner: str, budget: str | None) -> str:
    return f"{model.key}__{runner}" + (f"-{budget}" if budget else "")


def run_streamconv(session: Session, model: BenchModel, ckpt: Path, budget: str, *,
                   variant: str = "") -> dict[str, Any]:
    """variant "" (cold input, output beside it), "warm" (input in the page cache) or "shm"
    (cold input, output on a tmpfs)."""
    runner = "streamconv" + (f"-{variant}" if variant else "")
    rid = run_id(model, runner, budget)
    out_dir = SHM_DIR / "out" if variant == "shm" else WORK_DIR / "out"
    cold = _start(ckpt, out_dir, warm=variant == "warm")
    report_path = session.raw_dir / f"{rid}.report.json"
    report_path.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "streamconv", "convert", str(ckpt), str(out_dir),
            "--max-ram", budget, "--no-tokenizer", "--quiet", "--report", str(report_path)]
    m = measure(argv, raw_dir=session.raw_dir, run_id=rid, cwd=session.snapshot_dir)
    written = tree_bytes(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    if variant == "shm":
        shutil.rmtree(SHM_DIR, ignore_errors=True)
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    fixed = _fixed_costs(session.raw_dir / f"{rid}.launcher.json", report, m.wall_s)
    return _result(session, model, runner, budget, {"convert": m}, cold,
                   streamconv_report=report, output_bytes=written, fixed_costs=fixed)


def run_peer(session: Session, model: BenchModel, ckpt: Path) -> dict[str, Any]:
    """transformers 4.47.1's write_model(); its temporary copy goes to TMPDIR on this disk."""
    rid = run_id(model, "peer", None)
    if model.peer_version is None or isinstance(model.spec, Llama4Spec):
        raise MemoryError(f"{model.key}: transformers' LLaMA script does not convert it (its "
                          "Llama 4 script loads every rank file at once); not run")
    if model.spec.share_storage:
        raise MemoryError(f"{model.key} is generated with one storage per shard, which the "
                          "peer's per-layer torch.save would copy whole into every layer file; "
                          "not run (use a model with storage_per_tensor in models.py)")
    # It holds every shard in RAM, then the reloaded model plus safetensors' bytes copy of one
    # 5 GB output file: on a shared machine, refuse rather than wake the OOM killer.
    need = model.checkpoint_bytes + (5 << 30) + (1 << 30)
    available = psutil.virtual_memory().available
    if available < need:
        raise MemoryError(f"the peer needs ~{need / 2**30:.1f} GiB of RAM for {model.key}, "
                          f"{available / 2**30:.1f} GiB is available now; not run")
    out_dir = WORK_DIR / "out"
    tmp_dir = WORK_DIR / "peer-tmp"
    cold = _cold_start(ckpt, out_dir)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    vocab = model.spec.vocab_size
    job = {"dst": str(out_dir), "src": str(ckpt), "version": model.peer_version,
           "vocab_size": vocab, "n_ranks": model.n_ranks}
    env = {**os.environ, "TMPDIR": str(tmp_dir)}
    m = measure([str(PEER_PYTHON), "-c", PEER_CODE, json.dumps(job)], raw_dir=session.raw_dir,
                run_id=rid, env=env)
    written = tree_bytes(out_dir)
    leftover = tree_bytes(tmp_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return _result(session, model, "peer", None, {"convert": m}, cold, output_bytes=written,
                   tmp_leftover_bytes=leftover, peer_python=str(PEER_PYTHON))


def run_floor_cp(session: Session, model: BenchModel, ckpt: Path, *, warm: bool = False
                 ) -> dict[str, Any]:
    """`cp` of the input files, then `sync FILE...` (fsync of each copy), timed apart; with
    warm, the input is in the page cache first."""
    runner = "floor-cp-warm" if warm else "floor-cp"
    rid = run_id(model, runner, None)
    out_dir = WORK_DIR / "out"
    cold = _start(ckpt, out_dir, warm=warm)
    out_dir.mkdir()
    files = input_files(ckpt)
    cp = measure(["cp", "--reflink=never", *map(str, files), str(out_dir)],
                 raw_dir=session.raw_dir, run_id=rid + ".cp")
    copies = [str(out_dir / f.name) for f in files]
    sync = measure(["sync", "--", *copies], raw_dir=session.raw_dir, run_id=rid + ".sync")
    written = tree_bytes(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    return _result(session, model, runner, None, {"cp": cp, "fsync": sync}, cold,
                   output_bytes=written, cp_s=cp.wall_s, fsync_s=sync.wall_s)


COPY_THREADS = 3  # streamconv's slots.MAX_DEPTH: as many I/Os in flight as its slots


def run_floor_rw(session: Session, model: BenchModel, ckpt: Path, *,
                 runner: str = "floor-rw") -> dict[str, Any]:
    """benchmarks/floor_io.py: a read pass over the inputs then a write + fsync of as many bytes,
    through the page cache (floor-rw) or past it (floor-direct); or a copy by COPY_THREADS
    threads past it (floor-copy)."""
    mode = {"floor-rw": [], "floor-direct": ["--direct"],
            "floor-copy": ["--copy-threads", str(COPY_THREADS)]}[runner]
    rid = run_id(model, runner, None)
    out_dir = WORK_DIR / "out"
    cold = _cold_start(ckpt, out_dir)
    phases_path = session.raw_dir / f"{rid}.phases.json"
    argv = [sys.executable, str(Path(__file__).with_name("floor_io.py")), *mode, str(out_dir),
            str(phases_path), *map(str, input_files(ckpt))]
    m = measure(argv, raw_dir=session.raw_dir, run_id=rid)
    written = tree_bytes(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    phases = json.loads(phases_path.read_text()) if phases_path.exists() else None
    return _result(session, model, runner, None, {"read+write": m}, cold,
                   output_bytes=written, phases=phases)


def run_floor_direct(session: Session, model: BenchModel, ckpt: Path) -> dict[str, Any]:
    return run_floor_rw(session, model, ckpt, runner="floor-direct")


def run_floor_copy(session: Session, model: BenchModel, ckpt: Path) -> dict[str, Any]:
    return run_floor_rw(session, model, ckpt, runner="floor-copy")
