"""Time of building the tokenizer files from Meta's tokenizer.model (best of N, wall and CPU).

These figures used to be asserted by timed unit tests (a wall bound failed on a loaded machine);
times belong here, not in the suite. Usage:

    python -m benchmarks.tokenizer_time [--repeat 3] [TOKENIZER.model ...]

With no paths it times the real LLaMA 2 / LLaMA 3 files in ../shared/data (when present) and
generated 32k SentencePiece and 128k tiktoken files. Prints one JSON object per file.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from fixtures.synthetic_tokenizer import write_synthetic_tokenizer
from streamconv.model.family import Family
from streamconv.tokenizer import files as tokenizer_files
from streamconv.tokenizer.files import write_tokenizer_files

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
_FAMILY_BY_NAME = {"llama2": Family.LLAMA2, "llama3": Family.LLAMA3_3}


def time_tokenizer(model: Path, *, family: Family, repeat: int) -> dict[str, object]:
    """Best wall and CPU seconds of write_tokenizer_files, parse included (cache cleared)."""
    best_wall = best_cpu = float("inf")
    with tempfile.TemporaryDirectory() as scratch:
        for attempt in range(repeat):
            tokenizer_files._parse_bytes.cache_clear()
            out = Path(scratch) / str(attempt)
            out.mkdir()
            start, start_cpu = time.perf_counter(), time.process_time()
            write_tokenizer_files(model, out, family=family, instruct=True,
                                  model_max_length=131072)
            best_wall = min(best_wall, time.perf_counter() - start)
            best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return {"file": str(model), "family": family.value, "repeat": repeat,
            "best_wall_s": round(best_wall, 3), "best_cpu_s": round(best_cpu, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cases: list[tuple[Path, Family]] = []
        for path in args.paths:
            family = Family.LLAMA2 if path.read_bytes()[:1] == b"\n" else Family.LLAMA3_3
            cases.append((path, family))
        if not args.paths:
            for name, family in _FAMILY_BY_NAME.items():
                real = SHARED_DATA / f"{name}_tokenizer.model"
                if real.is_file():
                    cases.append((real, family))
            start = time.perf_counter()
            spm = Path(scratch) / "spm.model"
            write_synthetic_tokenizer(spm, kind="sentencepiece", vocab_size=32000)
            tik = Path(scratch) / "tik.model"
            write_synthetic_tokenizer(tik, kind="tiktoken", vocab_size=128000)
            print(json.dumps({"generate_synthetic_s": round(time.perf_counter() - start, 3)}))
            cases += [(spm, Family.LLAMA2), (tik, Family.LLAMA3_3)]
        for path, family in cases:
            print(json.dumps(time_tokenizer(path, family=family, repeat=args.repeat)))


if __name__ == "__main__":
    main()
