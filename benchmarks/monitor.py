"""Run one command under the launcher and watch its process tree.

Three views of peak memory, because each misses something alone:
- maxrss_bytes: ru_maxrss from wait4 in the launcher (exact for the command's own process and,
  as a max, its reaped children; floor ~10 MB, the launcher's own high-water mark);
- peak_vmhwm_bytes: the largest VmHWM read from /proc/<pid>/status of any process in the tree
  while it ran (the kernel's own high-water mark, sampled, so it can only miss growth in a
  process's last ~50 ms);
- peak_tree_rss_bytes: the largest sum of RSS over the tree at one sample (what several
  processes hold together; sampled every 50 ms, so a spike shorter than that can be missed).
The headline peak is the largest of the three. RSS over time is the sampled tree sum.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

LAUNCHER = Path(__file__).resolve().parent / "launcher.py"
SAMPLE_INTERVAL_S = 0.05


@dataclass(frozen=True)
class Measurement:
    argv: list[str]
    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_bytes: int
    peak_vmhwm_bytes: int
    peak_tree_rss_bytes: int
    read_bytes: int  # from storage (page-cache misses), the command and its children
    write_bytes: int  # to storage (pages the command dirtied)
    rchar: int  # bytes passed to read-like syscalls, cached or not
    wchar: int
    major_faults: int
    # From /proc/<pid>/task/<tid>/schedstat, summed over every thread of the tree: time on a CPU
    # and time runnable but waiting for one (the kernel's run delay: CPU starvation, directly).
    cpu_run_s: float
    cpu_wait_s: float
    # System-wide pressure (/proc/pressure/*) during the run: share of wall time in which some
    # task waited for a CPU / for I/O. Other people's jobs show up here.
    psi_cpu_some: float
    psi_io_some: float
    # (seconds since start, tree RSS, tree read_bytes, tree write_bytes) every ~50 ms
    samples: list[tuple[float, int, int, int]] = field(repr=False)
    output_tail: str = ""

    @property
    def peak_rss_bytes(self) -> int:
        return max(self.maxrss_bytes, self.peak_vmhwm_bytes, self.peak_tree_rss_bytes)

    def summary(self) -> dict[str, object]:
        """Everything but the samples, for the per-run JSON."""
        return {k: v for k, v in self.__dict__.items() if k != "samples"} | {
            "peak_rss_bytes": self.peak_rss_bytes, "n_samples": len(self.samples)}


def _psi_total_us(resource: str) -> int:
    try:
        with open(f"/proc/pressure/{resource}") as f:
            first = f.readline()  # "some avg10=... total=N"
        return int(first.rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return -1


def _thread_schedstats(pid: int) -> dict[int, tuple[int, int]]:
    """{tid: (ns on CPU, ns waiting on a run queue)} for every thread of pid."""
    stats: dict[int, tuple[int, int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return stats
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run_ns, wait_ns, _ = f.read().split()
            stats[int(tid)] = (int(run_ns), int(wait_ns))
        except (OSError, ValueError):
            continue
    return stats


def _vmhwm_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _TreeSampler:
    """Samples the launcher's descendants (not the launcher) on a thread until stopped."""

    def __init__(self, launcher_pid: int) -> None:
        self.root = psutil.Process(launcher_pid)
        self.samples: list[tuple[float, int, int, int]] = []
        self.vmhwm: dict[int, int] = {}
        self.sched: dict[int, tuple[int, int]] = {}  # last seen per thread id
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def __enter__(self) -> _TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(SAMPLE_INTERVAL_S):
                return

    def _sample(self) -> None:
        try:
            procs = self.root.children(recursive=True)
        except psutil.Error:
            return
        rss = read = written = 0
        for proc in procs:
            try:
                rss += proc.memory_info().rss
                io = proc.io_counters()
                read += io.read_bytes
                written += io.write_bytes
            except psutil.Error:
                continue  # exited between listing and reading
            self.vmhwm[proc.pid] = max(self.vmhwm.get(proc.pid, 0), _vmhwm_bytes(proc.pid))
            self.sched.update(_thread_schedstats(proc.pid))
        if procs:
            self.samples.append((time.monotonic() - self.start, rss, read, written))


def measure(argv: list[str], *, raw_dir: Path, run_id: str, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> Measurement:
    """Run argv to completion under the launcher; raw_dir gets its output and launcher JSON."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    launcher_json = raw_dir / f"{run_id}.launcher.json"
    log_path = raw_dir / f"{run_id}.log"
    cmd = [sys.executable, "-S", "-I", str(LAUNCHER), str(launcher_json), "--", *argv]
    psi_before = {r: _psi_total_us(r) for r in ("cpu", "io")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        with _TreeSampler(proc.pid) as sampler:
            proc.wait()
    psi = {r: (_psi_total_us(r) - psi_before[r]) / 1e6 for r in psi_before}
    if proc.returncode != 0 or not launcher_json.exists():
        raise RuntimeError(f"launcher failed for {argv}: see {log_path}")
    kernel = json.loads(launcher_json.read_text())
    io = kernel["io"]
    samples = sampler.samples
    tail = log_path.read_text(errors="replace")[-4000:]
    return Measurement(
        argv=argv, returncode=kernel["returncode"], wall_s=kernel["wall_s"],
        user_s=kernel["user_s"], sys_s=kernel["sys_s"], maxrss_bytes=kernel["maxrss_bytes"],
        peak_vmhwm_bytes=max(sampler.vmhwm.values(), default=0),
        peak_tree_rss_bytes=max((s[1] for s in samples), default=0),
        read_bytes=io["read_bytes"], write_bytes=io["write_bytes"], rchar=io["rchar"],
        wchar=io["wchar"], major_faults=kernel["major_faults"],
        cpu_run_s=sum(r for r, _ in sampler.sched.values()) / 1e9,
        cpu_wait_s=sum(w for _, w in sampler.sched.values()) / 1e9,
        psi_cpu_some=psi["cpu"] / kernel["wall_s"], psi_io_some=psi["io"] / kernel["wall_s"],
        samples=samples,
        output_tail=tail)
