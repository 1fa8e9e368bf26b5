"""Peak RSS as the OS reports it stays under --max-ram for a checkpoint several times larger.

Each conversion runs in a child process that, when streamconv's main() returns, reads its own
VmHWM from /proc/self/status: the kernel's high-water mark of the process's resident memory,
mapped file pages included. (Not ru_maxrss from wait4: Linux carries the parent's RSS at fork
across exec into it, so a child of a big pytest process would report pytest's size.)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import restore_sigint

from fixtures.synthetic import PRESETS, SyntheticSpec
from streamconv.cli.sizes import parse_size
from streamconv.model.family import Family

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="reads VmHWM from /proc (Linux)")

# ~1.6 GB of bf16 weights: 13 layers of a 2048-wide model with LLaMA 2's 32000 vocabulary.
# Budgets below leave room for the interpreter and torch, whose RSS at start varies from about
# 220 to 330 MB with how much of libtorch the page cache holds (fault-around maps cached pages).
MID = SyntheticSpec(Family.LLAMA2, 2048, 13, 16, None, 32000, with_tokenizer=False)


@pytest.fixture(scope="module")
def mid_checkpoint(make_checkpoint: Callable[[SyntheticSpec], Path]) -> Path:
    return make_checkpoint(MID)


_CHILD = """
import sys
from streamconv.cli.main import main
code = main(sys.argv[2:])
with open("/proc/self/status") as status:
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
with open(sys.argv[1], "w") as out:
    out.write(str(hwm * 1024))
sys.exit(code)
"""


def run_child(tmp_path: Path, *argv: str) -> tuple[int, int, str]:
    """(exit code, peak RSS in bytes, stderr) of streamconv's CLI in a fresh process."""
    hwm_file = tmp_path / "vmhwm"
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(hwm_file), *argv],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          check=False)
    return proc.returncode, int(hwm_file.read_text()), proc.stderr


@pytest.mark.parametrize("max_ram,dtype", [("450M", "auto"), ("500M", "auto"), ("500M", "fp32")])
def test_peak_rss_under_budget(max_ram: str, dtype: str, mid_checkpoint: Path,
                               tmp_path: Path) -> None:
    checkpoint_bytes = sum(p.stat().st_size for p in mid_checkpoint.glob("*.pth"))
    budget = parse_size(max_ram)
    assert checkpoint_bytes > 3 * budget
    code, peak, stderr = run_child(tmp_path, str(mid_checkpoint), str(tmp_path / "out"),
                                   "--no-tokenizer", "--quiet", "--max-ram", max_ram, "--report",
                                   str(tmp_path / "report.json"), "--dtype", dtype)
    assert code == 0, stderr
    assert peak <= budget, f"peak RSS {peak >> 20} MiB over --max-ram {max_ram}"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["bytes_written"] >= checkpoint_bytes * (0.99 if dtype == "auto" else 1.99)
    assert report["peak_rss_bytes"] <= report["max_ram_bytes"] == budget


def test_budget_below_minimum_fails_before_writing(mid_checkpoint: Path, tmp_path: Path) -> None:
    code, _peak, stderr = run_child(tmp_path, str(mid_checkpoint), str(tmp_path / "out"),
                                    "--no-tokenizer", "--max-ram", "50M")
    assert code == 1
    assert "too small" in stderr and "--max-ram" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_ctrl_c_exits_130_and_publishes_nothing(mid_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "streamconv", str(mid_checkpoint), str(out),
                             "--no-tokenizer", "--quiet", "--max-ram", "600M"],
                            stderr=subprocess.PIPE, text=True, preexec_fn=restore_sigint)
    staging = out / ".streamconv-partial"
    deadline = time.monotonic() + 60
    while not any(staging.glob("*.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _out, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not (out / "model.safetensors.index.json").exists()
    assert not list(out.glob("*.json")) and not list(out.glob("model-*"))


@pytest.mark.parametrize("n_layers", [
    4, pytest.param(16, marks=pytest.mark.slow, id="16-full-1b")])
def test_llama32_1b_shape_within_1g(n_layers: int,
                                    make_checkpoint: Callable[[SyntheticSpec], Path],
                                    tmp_path: Path) -> None:
    """LLaMA 3.2 1B's 128256 x 2048 embedding (525 MB in bf16) and its tied copy, with the
    tiktoken tokenizer converted too, under --max-ram 1G: the embedding goes in pieces."""
    spec = replace(PRESETS["llama3.2-1b"], n_layers=n_layers)
    src = make_checkpoint(spec)
    code, peak, stderr = run_child(tmp_path, str(src), str(tmp_path / "out"), "--quiet",
                                   "--max-ram", "1G")
    assert code == 0, stderr
    assert peak <= parse_size("1G"), f"peak RSS {peak >> 20} MiB"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["rope_scaling"]["factor"] == 32.0
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_vision_replicated_copies_are_compared_within_budget(tmp_path: Path) -> None:
    """Llama 3.2 Vision's gated position embedding is replicated on every rank (62.5 MiB each
    in 90B's 8 files). The check that the copies agree once held all of them at once, outside
    the budget (616 MiB peak at --max-ram 512M in the 90B benchmark slice); it compares them a
    piece at a time now. Here 8 copies of 26 MB: 210 MB if held together."""
    from fixtures.llama32_vision_checkpoint import VisionSpec, write_vision_checkpoint

    spec = VisionSpec(dim=512, n_layers=1, n_heads=8, n_kv_heads=8, n_cross=1, vocab_size=4096,
                      multiple_of=256, vision_width=512, local_layers=2, global_layers=1,
                      intermediate=(0,), n_ranks=8)
    src = write_vision_checkpoint(spec, tmp_path / "in")
    code, peak, stderr = run_child(tmp_path, str(src), str(tmp_path / "out"), "--no-tokenizer",
                                   "--quiet", "--max-ram", "250M")
    assert code == 0, stderr
    assert peak <= parse_size("250M"), f"peak RSS {peak >> 20} MiB over --max-ram 250M"
