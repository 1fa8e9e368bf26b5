"""Meta's Llama 3.2 Vision model as the oracle: a checkpoint it wrote and what it computed.

`run_meta_reference(tmp, mp=N)` starts tests/vision_reference_runner.py in .venv-meta
(scripts/make_meta_env.sh; or $STREAMCONV_META_PYTHON). Meta's own `CrossAttentionTransformer`
is built at model-parallel size N (one gloo process per rank), randomly initialized with a fixed
seed, saved rank by rank as `consolidated.{rank:02d}.pth` + params.json, and run on a text-only
prompt and an image+text prompt. The test of a converter is then

    ckpt_dir, reference = run_meta_reference(tmp_path, mp=2)
    convert(ckpt_dir, hf_dir)                      # the converter under test
    compare_with_hf(hf_dir, reference).assert_close()   # tests/vision_oracle.py

The tiny sizes: text dim 128 (16 heads, 8 KV heads, head_dim 8), 4 layers with 2
cross-attention layers (fusion schedule [1, 3], as Meta's rule gives), the real vocabulary
(128256, so the image token is 128256 as in the releases and in transformers' default config),
tiles of 28x28 (2x2 patches of 14), up to 4 tiles. The vision tower is shrunk by the runner (its
sizes are hard-coded in Meta's code, see the runner's docstring): width 32, 8 heads, 4 local + 2
global layers, intermediate layers [1, 3]. Every split dimension is divisible by 8.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "vision_reference_runner.py"
# One MP8 run takes ~30 s on two shared cores (8 processes importing torch); MP1 ~8 s.
TIMEOUT_S = 600
SEED = 20

# params.json keys as the releases carry them (docs/llama32_vision_facts.md section 1), tiny.
TINY_PARAMS: dict[str, Any] = {
    "dim": 128, "n_layers": 4, "n_heads": 16, "n_kv_heads": 8, "vocab_size": 128256,
    "ffn_dim_multiplier": 1.3, "multiple_of": 64, "norm_eps": 1e-05, "rope_theta": 500000.0,
    "use_scaled_rope": True, "vision_chunk_size": 28, "vision_max_num_chunks": 4,
    "vision_num_cross_attention_layers": 2,
}
# Replaces Meta's hard-coded 1280 / 32 / 16 / 8 / [3, 7, 15, 23, 30] (runner docstring, 1.).
TINY_VISION: dict[str, Any] = {
    "width": 32, "layers": 4, "heads": 8, "n_global_layers": 2, "return_intermediate": [1, 3],
}
IMAGE_TOKEN_ID = 128256  # HF's <|image|> and the row Meta's forward reads from learnable_embedding
BOS_ID = 128000
MAX_SEQ_LEN = 32


def meta_python() -> Path | None:
    """The interpreter of .venv-meta (or $STREAMCONV_META_PYTHON), None when missing."""
    override = os.environ.get("STREAMCONV_META_PYTHON")
    path = Path(override) if override else REPO / ".venv-meta" / "bin" / "python"
    return path if path.exists() else None


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
class VisionInputs:
    """One image (first, as transformers' processor puts it) and the text after it."""

    tokens: torch.Tensor  # (1, seq): <|image|> <|begin_of_text|> text...
    text_tokens: torch.Tensor  # (1, seq): <|begin_of_text|> text..., no image
    tiles: torch.Tensor  # (n_tiles, 3, H, W): already normalized tiles
    aspect_ratio: tuple[int, int]  # (tiles high, tiles wide)


def make_inputs(*, seed: int = SEED, aspect_ratio: tuple[int, int] = (1, 2)) -> VisionInputs:
    """Seeded inputs; (1, 2) is not square, so a transposed tile grid shows."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(1000, 100000, (1, 20), generator=gen)
    bos = torch.tensor([[BOS_ID]])
    size = TINY_PARAMS["vision_chunk_size"]
    n_tiles = aspect_ratio[0] * aspect_ratio[1]
    return VisionInputs(
        tokens=torch.cat([torch.tensor([[IMAGE_TOKEN_ID]]), bos, text], dim=1),
        text_tokens=torch.cat([bos, text], dim=1),
        tiles=torch.randn((n_tiles, 3, size, size), generator=gen),
        aspect_ratio=aspect_ratio)


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
    inputs = make_inputs(seed=seed)
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
