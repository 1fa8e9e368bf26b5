"""`python -m streamconv.demo`: convert a generated checkpoint larger than the budget it gets.

The demo checkpoint is LLaMA-2-shaped (SentencePiece tokenizer, one shard, bf16) but smaller:
10 layers of width 2048, about 1.3 GB. It is converted with --max-ram 500M, so the run shows
streaming: the model is 2.6 times the memory the converter may use, and about 300 MB of that
budget is the interpreter and torch themselves.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from .family import Family
from .synthetic import SyntheticSpec, write_checkpoint

DEMO_SPEC = SyntheticSpec(Family.LLAMA2, 2048, 10, 16, None, 32000, seed=7)
DEMO_MAX_RAM = "500M"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamconv.demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("demo"),
                        help="where the demo checkpoint and its conversion go (default ./demo)")
    parser.add_argument("--max-ram", default=DEMO_MAX_RAM, help="budget for the conversion")
    args = parser.parse_args(argv)
    console = Console()
    src, dst = args.dir / "meta-checkpoint", args.dir / "hf-model"
    if not (src / "params.json").exists():
        console.print(f"generating a LLaMA-2-shaped demo checkpoint in {src} ...")
        shutil.rmtree(src, ignore_errors=True)
        write_checkpoint(DEMO_SPEC, src)
    size = sum(p.stat().st_size for p in src.iterdir())
    console.print(f"checkpoint: {size / 1e9:.2f} GB; converting with --max-ram {args.max_ram}")
    # A fresh process, so its peak RSS is the conversion's own and not the generator's.
    code = subprocess.call([sys.executable, "-m", "streamconv", str(src), str(dst),
                            "--max-ram", args.max_ram, "--force"])
    if code == 0:
        console.print(f"[green]the Hugging Face model is in {dst}[/green] (load it with "
                      "transformers' AutoModelForCausalLM.from_pretrained)")
    return code


if __name__ == "__main__":
    sys.exit(main())
