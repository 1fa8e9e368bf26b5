"""The benchmark's disk: cached checkpoints, room checks, and eviction from the page cache.

Checkpoints are generated once into benchmarks/cache/ckpt/<key>/ (git-ignored) and reused by
later runs: a 7B takes minutes to write. A folder counts as cached only when its marker file
holds the same spec, so an interrupted generation or a changed preset is regenerated.

Cold runs: before each measured run the benchmark's own input (and any output) files are fsynced
and dropped from the page cache with posix_fadvise(DONTNEED). System caches are never dropped:
other people use this machine, and /proc/sys/vm/drop_caches would also measure their work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from fixtures.llama4_layout import Llama4Spec
from fixtures.llama4_synthetic import write_llama4_sparse, write_llama4_streaming
from fixtures.llama32_vision_checkpoint import VisionSpec, write_vision_checkpoint
from fixtures.synthetic import SyntheticSpec, spec_summary, write_checkpoint

from .models import BenchModel

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / "cache"
CKPT_DIR = CACHE_DIR / "ckpt"
WORK_DIR = CACHE_DIR / "work"  # outputs and the peer's TMPDIR; emptied after every run
MARKER = ".bench-complete.json"
GIB = 1 << 30
# Kept free on top of every estimate: other people write to this disk too (their use moved by
# ~15 GiB within minutes during the first session, and one generation hit ENOSPC with 4 GiB).
DISK_MARGIN_BYTES = 8 * GIB


class DiskError(RuntimeError):
    """Not enough room on the benchmark's disk; the message says how much and what to do."""


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.1f} GiB"


@contextlib.contextmanager
def exclusive_session() -> Iterator[None]:
    """Hold benchmarks/cache/.lock for a whole session, or refuse to start.

    Two sessions at once share the work folder (one deletes the other's output mid-run) and
    the disk and CPUs (each one's timings measure the other): that happened once, and both
    sessions' figures were spoiled. flock is released by the kernel if the process dies.
    """
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise DiskError(f"another benchmark session ({holder}) is running on this cache; "
                            "wait for it to finish: two sessions disturb each other's "
                            "timings and share benchmarks/cache/work") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        yield


def free_bytes() -> int:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(CACHE_DIR).free


def tree_bytes(path: Path) -> int:
    """Allocated bytes under path (st_blocks, so sparse scratch files count as they are)."""
    if not path.exists():
        return 0
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def checkpoint_dir(model: BenchModel) -> Path:
    return CKPT_DIR / model.key


def is_cached(model: BenchModel) -> bool:
    marker = checkpoint_dir(model) / MARKER
    if not marker.is_file():
        return False
    return bool(json.loads(marker.read_text()) == _marker_content(model))


def _marker_content(model: BenchModel) -> dict[str, object]:
    if isinstance(model.spec, (Llama4Spec, VisionSpec)):
        # Round-tripped through JSON so it compares equal to the marker read back.
        summary = json.loads(json.dumps(dataclasses.asdict(model.spec)))
        writer = ("llama32_vision_checkpoint.write_vision_checkpoint"
                  if isinstance(model.spec, VisionSpec) else
                  f"llama4_synthetic.{'sparse' if model.sparse else 'streaming'}")
        return {"key": model.key, "spec": summary, "writer": writer}
    return {"key": model.key, "spec": spec_summary(model.spec)}


def cached_models() -> list[Path]:
    return sorted(p for p in CKPT_DIR.iterdir() if p.is_dir()) if CKPT_DIR.exists() else []


def make_room(needed_bytes: int, *, keep: Iterable[Path]) -> list[str]:
    """Delete cached checkpoints (not in keep), largest first, until needed_bytes is free.

    Returns the keys evicted. Only the benchmark's own cache is touched.
    """
    keep_set = {p.resolve() for p in keep}
    evicted: list[str] = []
    candidates = sorted((p for p in cached_models() if p.resolve() not in keep_set),
                        key=tree_bytes, reverse=True)
    for path in candidates:
        if free_bytes() >= needed_bytes + DISK_MARGIN_BYTES:
            break
        shutil.rmtree(path)
        evicted.append(path.name)
    return evicted


def ensure_checkpoint(model: BenchModel, *, log: Callable[[str], None]) -> Path:
    """The model's checkpoint folder, generated (seeded, so identical every time) if needed."""
    out_dir = checkpoint_dir(model)
    if is_cached(model):
        return out_dir
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a partial or outdated generation
    need = model.generation_peak_bytes
    if free_bytes() < need + DISK_MARGIN_BYTES:
        raise DiskError(f"generating {model.key} needs {gib(need)} free on {CKPT_DIR} "
                        f"(+{gib(DISK_MARGIN_BYTES)} margin), {gib(free_bytes())} is free")
    log(f"generating {model.label} ({gib(model.checkpoint_bytes)}, {model.n_ranks} "
        f"shard(s)) into {out_dir}")
    if isinstance(model.spec, Llama4Spec):
        (write_llama4_sparse if model.sparse else write_llama4_streaming)(model.spec, out_dir)
    elif isinstance(model.spec, VisionSpec):
        write_vision_checkpoint(model.spec, out_dir)
    elif model.spec.share_storage:
        write_checkpoint(model.spec, out_dir)
    else:
        write_checkpoint_lean(model.spec, out_dir)
    (out_dir / MARKER).write_text(json.dumps(_marker_content(model), indent=2))
    return out_dir


def write_checkpoint_lean(spec: SyntheticSpec, out_dir: Path) -> None:
    """synthetic.write_checkpoint's files byte for byte (same tensors, same order, one storage
    per tensor), at twice a shard's size on disk instead of three times.

    write_checkpoint first fills one scratch mapping with the whole shard and then copies each
    tensor into a mapped file of its own; here each tensor goes straight to its own file. Uses
    synthetic's private helpers on purpose: the bytes must stay those of write_checkpoint.
    """
    from fixtures.synthetic import _own_storage, _rank_tensors

    out_dir.mkdir(parents=True, exist_ok=True)
    for rank_idx in range(spec.n_ranks):
        with tempfile.TemporaryDirectory(dir=out_dir) as scratch_dir:
            state = {meta_name: _own_storage(tensor, scratch_dir)
                     for meta_name, tensor in _rank_tensors(spec, rank_idx)}
            torch.save(state, out_dir / f"consolidated.{rank_idx:02d}.pth")
            del state
    (out_dir / "params.json").write_text(json.dumps(spec.params_json()))


def input_files(ckpt_dir: Path) -> list[Path]:
    """What a converter reads: the shards and params.json (no tokenizer in these runs)."""
    return sorted(ckpt_dir.glob("consolidated.*.pth")) + [ckpt_dir / "params.json"]


def evict_from_page_cache(paths: Iterable[Path]) -> int:
    """fsync, then POSIX_FADV_DONTNEED each file (folders recursively); returns bytes covered.

    The fsync comes first because the kernel cannot drop dirty pages: a file written just
    before (a fresh checkpoint) would otherwise stay partly cached.
    """
    total = 0
    for path in paths:
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for file in files:
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def cached_bytes(paths: Iterable[Path]) -> int:
    """Bytes of these files resident in the page cache (util-linux fincore, i.e. mincore), to
    record that a run really started cold; -1 when fincore is missing."""
    files = [str(p) for p in paths if p.is_file()]
    if not files or shutil.which("fincore") is None:
        return -1
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *files],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(line) for line in out.split())
