"""Meta's Llama 4 reference forward, run by Meta's own code in a venv of its own.

streamconv's .venv does not import llama_models: this module starts
tests/llama4_reference_runner.py with the Python of .venv-meta (scripts/make_meta_env.sh:
torch 2.13.0 CPU, llama-models 0.3.0, fairscale 0.4.13) and reads back what it saved. Set
STREAMCONV_META_PYTHON to use another interpreter with those packages.

Why another process and not an import: llama-models pins its own stack (pydantic, tiktoken,
fairscale) and mutates process-wide state while loading (maybe_reshard_state_dict sets the
default tensor type to bf16; the runner patches torch.Tensor.cuda and torch.load and starts a
torch.distributed group); none of that should leak into the converter's tests.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "llama4_reference_runner.py"
# Generous: one run takes ~3 s on this machine (torch import + a tiny model), more when the two
# shared cores are busy.
TIMEOUT_S = 300


def meta_python() -> Path | None:
    """The interpreter of .venv-meta (or $STREAMCONV_META_PYTHON), None when missing."""
    override = os.environ.get("STREAMCONV_META_PYTHON")
    path = Path(override) if override else REPO / ".venv-meta" / "bin" / "python"
    return path if path.exists() else None


def meta_package_file(relative: str) -> Path | None:
    """A file llama-models ships inside .venv-meta (its tokenizer.model files), None when
    missing."""
    python = meta_python()
    if python is None:
        return None
    found = sorted(python.parent.parent.glob(f"lib/python3*/site-packages/{relative}"))
    return found[0] if found else None


@functools.lru_cache(maxsize=1)
def missing_reason() -> str | None:
    """Why the reference cannot run here, or None when it can (a pytest skip reason).

    Cached: the probe starts the venv's Python once per test session (~2 s)."""
    python = meta_python()
    if python is None:
        return ("no .venv-meta (Meta's llama-models + fairscale): run scripts/make_meta_env.sh "
                "or set STREAMCONV_META_PYTHON")
    probe = subprocess.run(
        [str(python), "-c", "import fairscale, llama_models.llama4.model"],
        capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"{python} cannot import llama_models.llama4 / fairscale: {last}"
    return None


@dataclass(frozen=True)
class MetaRun:
    """What Meta's code computed for one checkpoint and one input."""

    logits: torch.Tensor  # float32 (batch, seq, vocab)
    info: dict[str, Any]
    # {"bf16"|"fp32": {"encoder"|"adapter"|"projection": tensor}} when an image was given
    vision: dict[str, dict[str, torch.Tensor]] | None = None
    image_logits: torch.Tensor | None = None


def run_meta_reference(ckpt_dir: Path, tokens: torch.Tensor, *,
                       image: torch.Tensor | None = None,
                       image_positions: torch.Tensor | None = None) -> MetaRun:
    """Meta's Transformer on ckpt_dir: logits for tokens, and the vision path on image.

    image is (tiles, 3, H, W) float32; image_positions a bool (batch, seq) mask of the tokens
    that the image's patch embeddings replace (for the image_logits forward).
    """
    python = meta_python()
    if python is None:
        raise FileNotFoundError(missing_reason())
    with tempfile.TemporaryDirectory(prefix="llama4-ref-") as tmp:
        inputs_path = Path(tmp) / "inputs.pt"
        output_path = Path(tmp) / "output.pt"
        inputs: dict[str, torch.Tensor] = {"tokens": tokens}
        if image is not None:
            inputs["image"] = image
        if image_positions is not None:
            inputs["image_positions"] = image_positions
        torch.save(inputs, inputs_path)
        proc = subprocess.run(
            [str(python), str(RUNNER), str(ckpt_dir), str(inputs_path), str(output_path)],
            capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"Meta's reference failed on {ckpt_dir} (exit {proc.returncode}):"
                               f"\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        result = torch.load(output_path, weights_only=True)
    return MetaRun(logits=result["logits"], info=result["info"], vision=result.get("vision"),
                   image_logits=result.get("image_logits"))


if __name__ == "__main__":  # python tests/llama4_reference.py CKPT_DIR: print a summary
    ckpt = Path(sys.argv[1])
    params = json.loads((ckpt / "params.json").read_text())
    vocab_size = int(params.get("model", params)["vocab_size"])
    gen = torch.Generator().manual_seed(0)
    run = run_meta_reference(ckpt, torch.randint(0, vocab_size, (1, 16), generator=gen))
    print(run.info, tuple(run.logits.shape))
