"""Interrupted conversions resume to output byte-identical to an uninterrupted run.

Interruptions are real: SIGKILL and SIGINT from this process to a child converter, and a disk
that fills up (os.pwrite failing with ENOSPC inside the writer).
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import digests, in_process_budget, restore_sigint

from fixtures.synthetic import SyntheticSpec
from streamconv.cli.main import main
from streamconv.model.family import Family

# ~1.6 GB (the same checkpoint as test_memory's): the journal commits every 256 MB, so killing
# after the first or second commit leaves most of the run still to do.
SPEC = SyntheticSpec(Family.LLAMA2, 2048, 13, 16, None, 32000, with_tokenizer=False)
ARGS = ["--no-tokenizer", "--quiet", "--max-ram", "1G"]  # child processes


def in_process(*extra: str) -> list[str]:
    """ARGS for conversions inside the test process, whose own RSS is not a child's."""
    return ["--no-tokenizer", "--quiet", "--max-ram", in_process_budget(), *extra]
writer_module = importlib.import_module("streamconv.runtime.file_writer")


@pytest.fixture(scope="module")
def source(make_checkpoint: Callable[[SyntheticSpec], Path]) -> Path:
    return make_checkpoint(SPEC)


@pytest.fixture(scope="module")
def reference(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main([str(source), str(out), *in_process()]) == 0
    return digests(out)



def journal_commits(out: Path) -> int:
    path = out / ".streamconv-partial" / "journal.jsonl"
    return max(len(path.read_text().splitlines()) - 1, 0) if path.exists() else 0


def start_child(source: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "streamconv", str(source), str(out), *ARGS],
                            stderr=subprocess.PIPE, text=True, preexec_fn=restore_sigint)


def wait_for_commits(proc: subprocess.Popen[str], out: Path, n: int) -> None:
    deadline = time.monotonic() + 120
    while journal_commits(out) < n:
        assert proc.poll() is None, "the conversion finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.002)


def assert_not_published(out: Path) -> None:
    assert not [p.name for p in out.iterdir() if p.name != ".streamconv-partial"]


@pytest.mark.parametrize("commits", [1, 2])
def test_sigkill_then_resume_is_byte_identical(commits: int, source: Path,
                                               reference: dict[str, str],
                                               tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start_child(source, out)
    wait_for_commits(proc, out, commits)
    proc.kill()
    proc.communicate()
    assert_not_published(out)
    report = tmp_path / "report.json"
    assert main([str(source), str(out), *in_process("--resume", "--report", str(report))]) == 0
    assert json.loads(report.read_text())["resumed_bytes"] > 0
    assert digests(out) == reference


def test_sigint_then_resume_is_byte_identical(source: Path, reference: dict[str, str],
                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start_child(source, out)
    wait_for_commits(proc, out, 1)
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "--resume" in stderr and "Traceback" not in stderr
    assert_not_published(out)
    assert main([str(source), str(out), *in_process("--resume")]) == 0
    assert digests(out) == reference


def test_disk_full_then_resume_is_byte_identical(source: Path, reference: dict[str, str],
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    calls = 0

    real_pwrite = os.pwrite

    def filling_disk(fd: int, data: bytes, offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls > 12:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(writer_module.os, "pwrite", filling_disk)
    assert main([str(source), str(out), *in_process()]) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "disk full" in err and "--resume" in err
    assert_not_published(out)
    assert main([str(source), str(out), *in_process("--resume", "--max-ram",
                                                      in_process_budget(2 << 30))]) == 0
    assert digests(out) == reference


def test_resume_refuses_a_journal_from_another_input(source: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    (out / ".streamconv-partial").mkdir(parents=True)
    (out / ".streamconv-partial" / "journal.jsonl").write_text('{"fingerprint": "other"}\n')
    assert main([str(source), str(out), *in_process("--resume")]) == 1
    assert "different input" in capsys.readouterr().err
    assert main([str(source), str(out), *in_process()]) == 1
    assert "--resume" in capsys.readouterr().err


def test_resume_redoes_a_recorded_range_whose_bytes_changed(source: Path,
                                                            reference: dict[str, str],
                                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start_child(source, out)
    wait_for_commits(proc, out, 1)
    proc.kill()
    proc.communicate()
    staged = next((out / ".streamconv-partial").glob("model-*.safetensors"))
    with open(staged, "r+b") as f:  # zero the first MiB of data: a sampled block is in it
        f.seek(64 * 1024)
        f.write(bytes(1 << 20))
    assert main([str(source), str(out), *in_process("--resume")]) == 0
    assert digests(out) == reference
