"""GGUF benchmark (issue 18): Meta's 7B shape straight to GGUF, against the O_DIRECT copy floor of
the same bytes and against the two-step path (streamconv -> Hugging Face folder, then llama.cpp's
convert_hf_to_gguf.py at the same outtype).

    python -m benchmarks.gguf_bench CHECKPOINT_DIR WORK_DIR [--runs floor,bf16,q8_0,two-step-q8_0]

Every run is a child process, cold: its inputs are evicted from the page cache first
(posix_fadvise DONTNEED, benchmarks/cache.py) and its output is new and deleted afterwards.
Wall and CPU (user + system of the child and its children) from os.wait4, peak RSS from the
child's ru_maxrss (the largest process of the two-step path, for that path). Results are printed
and written to WORK_DIR/gguf_results.json; benchmarks/results/GGUF.md records them.
CHECKPOINT_DIR needs tokenizer.model (a GGUF file carries its tokenizer).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.cache import evict_from_page_cache

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv" / "bin" / "python"
LLAMA_CPP = Path(os.environ.get("STREAMCONV_GGUF_PYTHON", REPO / ".venv-gguf" / "bin" / "python"))
CONVERTER_GLOB = "src/llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"


def _run(argv: list[str], *, label: str, log: Path) -> dict[str, Any]:
    start = time.monotonic()
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{label} failed ({code}): {log.read_text()[-2000:]}")
    return {"run": label, "wall_s": round(wall, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def _inputs(checkpoint: Path) -> list[Path]:
    return sorted(checkpoint.glob("consolidated.*.pth"))


def floor(checkpoint: Path, work: Path) -> dict[str, Any]:
    """The O_DIRECT copy floor: the rank files copied with 3 threads of 32 MiB O_DIRECT pieces
    (benchmarks/floor_io.py --copy-threads 3), the same I/O streamconv does without converting."""
    out = work / "floor"
    out.mkdir()
    result = _run([str(VENV), "-m", "benchmarks.floor_io", "--copy-threads", "3", str(out),
                   str(work / "floor-phases.json"), *map(str, _inputs(checkpoint))],
                  label="O_DIRECT copy floor", log=work / "floor.log")
    result["bytes"] = sum(p.stat().st_size for p in _inputs(checkpoint))
    shutil.rmtree(out)
    return result


def streamconv_gguf(checkpoint: Path, work: Path, outtype: str, max_ram: str) -> dict[str, Any]:
    out = work / f"model-{outtype}.gguf"
    report = work / f"report-{outtype}.json"
    result = _run([str(VENV), "-m", "streamconv", str(checkpoint), str(out), "--outtype",
                   outtype, "--max-ram", max_ram, "--quiet", "--report", str(report)],
                  label=f"streamconv GGUF {outtype} --max-ram {max_ram}",
                  log=work / f"streamconv-{outtype}.log")
    result["bytes"] = out.stat().st_size
    result["predicted_peak_mib"] = round(
        json.loads(report.read_text())["predicted_peak_bytes"] / (1 << 20), 1)
    out.unlink()
    return result


def two_step(checkpoint: Path, work: Path, outtype: str, max_ram: str) -> dict[str, Any]:
    """streamconv to a Hugging Face folder, then llama.cpp's convert_hf_to_gguf.py."""
    hf = work / "hf"
    first = _run([str(VENV), "-m", "streamconv", str(checkpoint), str(hf), "--max-ram", max_ram,
                  "--quiet"], label="streamconv -> HF", log=work / "hf.log")
    evict_from_page_cache([hf])
    converter = next(LLAMA_CPP.parent.parent.glob(CONVERTER_GLOB))
    out = work / f"two-step-{outtype}.gguf"
    second = _run([str(LLAMA_CPP), str(converter), str(hf), "--outfile", str(out), "--outtype",
                   outtype], label=f"convert_hf_to_gguf.py {outtype}",
                  log=work / f"llama-cpp-{outtype}.log")
    shutil.rmtree(hf)
    size = out.stat().st_size
    out.unlink()
    return {"run": f"two-step {outtype} (streamconv -> HF, then convert_hf_to_gguf.py)",
            "wall_s": round(first["wall_s"] + second["wall_s"], 2),
            "cpu_s": round(first["cpu_s"] + second["cpu_s"], 2),
            "peak_rss_mib": max(first["peak_rss_mib"], second["peak_rss_mib"]),
            "steps": [first, second], "bytes": size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--runs", default="floor,bf16,q8_0,two-step-q8_0")
    parser.add_argument("--max-ram", default="1G")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for run in args.runs.split(","):
        evict_from_page_cache([args.checkpoint])
        if run == "floor":
            result = floor(args.checkpoint, args.work)
        elif run.startswith("two-step-"):
            result = two_step(args.checkpoint, args.work, run.removeprefix("two-step-"),
                              args.max_ram)
        else:
            result = streamconv_gguf(args.checkpoint, args.work, run, args.max_ram)
        print(json.dumps(result), flush=True)
        results.append(result)
    (args.work / "gguf_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"resource: this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} KiB",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
