"""Meta's Llama 3.2 Vision model as the oracle: a checkpoint it wrote and what it computed.

`run_meta_reference(tmp, mp=N)` starts tests/vision_reference_runner.py in .venv-meta
(scripts/make_meta_env.sh; or $STREAMCONV_META_PYTHON). Meta's own `CrossAttentionTransformer`
is built at model-parallel size N (one gloo process per rank), randomly initialized with a fixed
seed, saved rank by rank as `consolidated.{rank:02d}.pth` + params.json, and run on a text-only
prompt and an image+text prompt. The test of a converter is then

    ckpt_dir, reference = run_meta_reference(tmp_path, mp=2)
    convert(ckpt_dir, hf_dir)                      # the converter under test
    compare_with_hf(hf_dir, reference).assert_close()   # tests/vision_oracle.py

The tiny sizes and the seeded prompts are in fixtures/llama32_vision_inputs.py; the vision tower
is shrunk by the runner (its sizes are hard-coded in Meta's code, see the runner's docstring).
"""

from __future__ import annotations

import functools
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from llama4_reference import meta_python

from fixtures.llama32_vision_inputs import (
    SEED,
    TINY_PARAMS,
    TINY_VISION,
    VisionInputs,
    make_inputs,
)

RUNNER = Path(__file__).resolve().parent / "vision_reference_runner.py"
# One MP8 run takes ~38 s on two shared cores (8 processes importing torch); MP1 ~8 s.
TIMEOUT_S = 600
MAX_SEQ_LEN = 32


@functools.lru_cache(maxsize=1)
def missing_reason() -> str | None:
    """Why Meta's vision model cannot run here, or None (a pytest skip reason)."""
    python = meta_python()
    if python is None:
        return ("no .venv-meta (Meta's llama-models + fairscale): run scripts/make_meta_env.sh "
                "or set STREAMCONV_META_PYTHON")
    probe = subprocess.run(
        [str(python), "-c", "import fairscale, llama_models.llama3.args, PIL"],
        capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"{python} cannot import llama_models / fairscale / PIL: {last}"
    return None


@dataclass(frozen=True)
class MetaVisionReference:
    """What Meta's model computed on its own checkpoint."""

    inputs: VisionInputs
    text_logits: torch.Tensor  # (1, seq, vocab) float32, text-only prompt
    image_logits: torch.Tensor  # (1, seq, vocab) float32, image+text prompt
    vision_tokens: torch.Tensor  # (1, 1, max_tiles, patches+1, dim): projected vision tokens
    vision: dict[str, Any]  # the tower sizes the runner built (TINY_VISION)
    info: dict[str, Any]  # mp, fusion_schedule, per-key shapes of rank 0


def run_meta_reference(tmp: Path, *, mp: int, seed: int = SEED,
                       params: dict[str, Any] | None = None,
                       vision: dict[str, Any] | None = None) -> tuple[Path, MetaVisionReference]:
    """Meta's model at MP `mp`: (checkpoint folder it wrote, what it computed)."""
    python = meta_python()
    if python is None:
        raise FileNotFoundError(missing_reason())
    work = tmp / f"meta-vision-mp{mp}"
    work.mkdir(parents=True)
    vision = dict(TINY_VISION if vision is None else vision)
    request = {"mp": mp, "seed": seed, "params": dict(TINY_PARAMS if params is None else params),
               "vision": vision, "max_seq_len": MAX_SEQ_LEN}
    (work / "request.json").write_text(json.dumps(request))
    inputs = make_inputs(seed=seed, chunk_size=int(request["params"]["vision_chunk_size"]))
    torch.save({"tokens": inputs.tokens, "text_tokens": inputs.text_tokens,
                "tiles": inputs.tiles, "aspect_ratio": list(inputs.aspect_ratio)},
               work / "inputs.pt")
    proc = subprocess.run([str(python), str(RUNNER), str(work)], capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"Meta's vision reference failed at MP{mp} (exit {proc.returncode}):"
                           f"\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")
    out = torch.load(work / "reference.pt", weights_only=True)
    reference = MetaVisionReference(
        inputs=inputs, text_logits=out["text_logits"], image_logits=out["image_logits"],
        vision_tokens=out["vision_tokens"], vision=vision, info=out["info"])
    return work / "ckpt", reference
