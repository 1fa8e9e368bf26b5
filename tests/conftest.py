"""Shared fixtures: generated Meta-format checkpoints, cached per test session."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from fixtures.synthetic import SyntheticSpec, write_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Set by .ci/run: an oracle that cannot run (a venv that did not build) fails the run instead of
# skipping, so CI cannot pass having checked none of them. A local `make test` may still skip.
REQUIRE_ORACLES_ENV = "STREAMCONV_REQUIRE_ORACLES"


def oracle_unavailable(reason: str) -> NoReturn:
    """Skip a test whose oracle (peer/meta/gguf venv) cannot run; fail instead under CI."""
    if os.environ.get(REQUIRE_ORACLES_ENV) == "1":
        pytest.fail(f"oracle unavailable under {REQUIRE_ORACLES_ENV}=1: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """`@pytest.mark.oracle(reason)`: reason None means the oracle can run; otherwise the test
    goes through oracle_unavailable (a skip locally, a failure under CI)."""
    for mark in item.iter_markers("oracle"):
        if mark.args and mark.args[0] is not None:
            oracle_unavailable(str(mark.args[0]))


def cached_writer(tmp_path_factory: pytest.TempPathFactory,
                  write: Callable[[SyntheticSpec, Path], Path]) -> Callable[[SyntheticSpec], Path]:
    """spec -> folder that `write` filled for that spec, written once per cache."""
    cache: dict[SyntheticSpec, Path] = {}

    def make(spec: SyntheticSpec) -> Path:
        if spec not in cache:
            cache[spec] = write(spec, tmp_path_factory.mktemp("ckpt"))
        return cache[spec]

    return make


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[SyntheticSpec], Path]:
    """spec -> folder with that checkpoint, written once per session."""
    return cached_writer(tmp_path_factory, write_checkpoint)


# Runs argv[1:] and prints the peak RSS of that process alone. A child forked from pytest carries
# pytest's own RSS in its ru_maxrss (Linux keeps the forked copy's high-water mark across exec),
# so a fork of a large test process reported 589 MiB for a command that used less than 200. The
# launcher is small when it forks, so its child's ru_maxrss is the command's own.
_PEAK_LAUNCHER = """
import resource, signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
code = subprocess.call(sys.argv[1:])
sys.stdout.write("%d\\n" % (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
sys.exit(code if code >= 0 else 128 - code)
"""


def start_measured(argv: list[str], **popen: Any) -> subprocess.Popen[str]:
    """Popen of argv through the peak-RSS launcher, SIGINT at its default; stdout is the
    launcher's (read it with measured_peak), stderr as popen says."""
    return subprocess.Popen([sys.executable, "-c", _PEAK_LAUNCHER, *argv], text=True,
                            stdout=subprocess.PIPE, preexec_fn=restore_sigint, **popen)


def measured_peak(stdout: str) -> int:
    """The command's own peak RSS in bytes, from the launcher's last line."""
    return int(stdout.strip().splitlines()[-1])


def restore_sigint() -> None:
    """preexec_fn of a child converter that a test interrupts: Ctrl-C as a terminal would
    deliver it. A background job of a non-interactive shell (`bash -c 'pytest ...' &`) starts
    with SIGINT ignored, its children inherit that, and Python then leaves it ignored, so the
    SIGINT a test sends would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def built_case(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """GGUF test models (tests/gguf_cases.py), each converted by streamconv and by llama.cpp
    once per session, shared by every GGUF test module."""
    from gguf_cases import CaseBuilder

    return CaseBuilder(tmp_path_factory.mktemp("gguf-cases"))


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file directly in folder: two conversions are the same when these are."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def in_process_budget(extra_bytes: int = 1 << 30) -> str:
    """A --max-ram for conversions run inside the pytest process: its RSS grows with every test
    that ran before (libraries imported, allocator slack), so a fixed budget such as 1G can fall
    below the baseline late in a run. Budgets that tests measure are given to child processes."""
    from streamconv.system.memory import current_rss_bytes

    return str(current_rss_bytes() + extra_bytes)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def _free_disk_after_test(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    """Big tests write GBs of output: a passing test's folder is removed as soon as it passes
    (a failing one's is kept to look at)."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.passed:
        shutil.rmtree(tmp_path, ignore_errors=True)


def evict(path: Path) -> None:
    """Drop a file from the page cache (written back first): bytes that are cached are read
    from there (system/page_cache.py), so tests of the O_DIRECT path start from an evicted file."""
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def evicted_file(folder: Path, n_bytes: int, *, seed: int) -> tuple[Path, bytes]:
    """A rank file of seeded random bytes, out of the page cache (for the O_DIRECT paths)."""
    path = folder / "consolidated.00.pth"
    data = random.Random(seed).randbytes(n_bytes)
    path.write_bytes(data)
    evict(path)
    return path, data
