"""The benchmark's models: real LLaMA shapes from fixtures.synthetic.PRESETS, layer slices,
Llama 4 Scout slices (fixtures/llama4_layout.py's real Scout sizes, vision tower included) and
Llama 3.2 Vision 90B slices (fixtures/llama32_vision_checkpoint.py, full vision tower).

A slice keeps a big model's dim, heads, kv heads, FFN width, vocabulary and shard count and
only cuts the number of layers, so every tensor (and every output row) has its real size: peak
memory at 2, 4 and 8 layers then shows whether memory grows with the model or stays per-layer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import torch

from fixtures.llama4_layout import Llama4Spec, maverick, scout
from fixtures.llama4_synthetic import rank_file_bytes
from fixtures.llama32_vision_checkpoint import VisionSpec
from fixtures.llama32_vision_checkpoint import rank_shapes as vision_rank_shapes
from fixtures.synthetic import PRESETS, SyntheticSpec, rank_shapes

# Keys accepted by --models; "slices" expands to SLICES.
FULL_MODELS = ("7b", "13b", "8b", "1b", "l2-1b")
SLICES = ("70b-l2", "70b-l4", "70b-l8", "405b-l2", "405b-l4", "405b-l8")
_SLICE_RE = re.compile(r"^(70b|405b)-l(\d+)$")
# Llama 4 Scout slices: 16 experts, vision tower, 8 rank files (~9.6 GiB at 1 layer, +4.1 per
# layer). "scout" in --models means both.
SCOUT_SLICES = ("scout-l1", "scout-l2")
_SCOUT_RE = re.compile(r"^scout-l(\d+)$")
# Maverick slices (128 experts, MoE on odd layers): one MoE layer is 32 GB per copy, more than
# this disk holds twice, so their input is written sparse (holes read as zeros without touching
# the disk): the figures measure memory and the write side, not reading. "maverick-l2" is
# layer 0 (dense) and layer 1 (MoE), ~37 GB.
_MAVERICK_RE = re.compile(r"^maverick-l(\d+)$")
# Llama 3.2 Vision 90B slices (sizes: llama-models sku_list.py, docs/llama32_vision_facts.md
# sections 1 and 2): real widths (dim 8192, 64 heads, 8 kv heads, FFN 28672,
# 128256 + 8 embedding rows), 8 rank files, N text layers plus 1 cross-attention layer and the
# full vision tower (32 local + 8 global layers, width 1280): ~9.2 GiB at 1 text layer, +1.6 per
# text layer. "vision90" in --models means both.
VISION90_SLICES = ("vision90-l1", "vision90-l2")
_VISION90_RE = re.compile(r"^vision90-l(\d+)$")


@dataclass(frozen=True)
class BenchModel:
    key: str  # what --models takes: "7b", "70b-l4"
    label: str  # for tables: "LLaMA-2 7B", "405B-style, 4 layers"
    spec: SyntheticSpec | Llama4Spec | VisionSpec
    # transformers' --llama_version for the same checkpoint; None: no peer (its Llama 4 script
    # loads every shard at once: it cannot run here, see issue 12).
    peer_version: str | None
    slice_of: str | None = None  # "70b" / "405b" / "scout" / "maverick" / "vision90"
    sparse: bool = False  # input written as holes (fixtures/llama4_synthetic.write_llama4_sparse)

    @property
    def n_layers(self) -> int:
        return self.spec.n_layers

    @property
    def is_llama4(self) -> bool:
        return isinstance(self.spec, Llama4Spec)

    @property
    def is_vision(self) -> bool:
        return isinstance(self.spec, VisionSpec)

    @property
    def every_budget(self) -> bool:
        """Multimodal slices get every --budgets and the O_DIRECT copy floor (issues 12, 20)."""
        return self.is_llama4 or self.is_vision

    @property
    def n_ranks(self) -> int:
        return self.spec.n_ranks

    @property
    def shard_bytes(self) -> list[int]:
        """Tensor bytes of each consolidated.NN.pth (the pickle and zip headers add ~100 KB)."""
        if isinstance(self.spec, Llama4Spec):
            return [rank_file_bytes(self.spec)] * self.spec.n_ranks
        if isinstance(self.spec, VisionSpec):  # bf16; the same shapes in every rank
            per_rank = sum(math.prod(s) for s in vision_rank_shapes(self.spec).values()) * 2
            return [per_rank] * self.spec.n_ranks
        itemsize = torch.empty((), dtype=getattr(torch, self.spec.dtype)).element_size()
        per_shard = sum(math.prod(s) for s in rank_shapes(self.spec).values()) * itemsize
        return [per_shard] * self.spec.n_ranks

    @property
    def checkpoint_bytes(self) -> int:
        return sum(self.shard_bytes)

    @property
    def input_disk_bytes(self) -> int:
        """Disk the input takes: none to speak of when it is sparse."""
        return 0 if self.sparse else self.checkpoint_bytes

    @property
    def generation_peak_bytes(self) -> int:
        """Disk needed while writing the checkpoint: the shard being written also exists as
        mapped scratch files until torch.save is done (cache.ensure_checkpoint)."""
        if self.sparse:
            return 0
        return self.checkpoint_bytes + max(self.shard_bytes)


# share_storage: each rank's tensors in one storage (as in some Meta files), so generating a
# shard needs twice its size on disk instead of three times (synthetic.py otherwise copies every
# tensor into a file of its own before torch.save). The bytes are in the same order either way
# (one zip entry instead of one per tensor), so streamconv and cp read the same ranges. Not for
# a model the peer converts: its per-layer torch.save of views into one storage writes the
# whole storage into every layer file (13 GB x 33 files for 7B: it filled the disk once).
_COMMON = {"with_tokenizer": False, "share_storage": True}


def _full(key: str, label: str, preset: str, peer_version: str, *,
          storage_per_tensor: bool = False) -> BenchModel:
    spec = replace(PRESETS[preset], **_COMMON)
    if storage_per_tensor:
        spec = replace(spec, share_storage=False)
    return BenchModel(key, label, spec, peer_version)


_FULL: dict[str, BenchModel] = {
    # The reference, converted by the peer too: one storage per tensor, as Meta ships it.
    "7b": _full("7b", "LLaMA-2 7B", "llama2-7b", "2", storage_per_tensor=True),
    "13b": _full("13b", "LLaMA-2 13B", "llama2-13b", "2"),
    "8b": _full("8b", "LLaMA-3 8B", "llama3-8b", "3"),
    # The 2-3 GiB class, where fixed costs (start-up, imports, exit) weigh (issue 13): the
    # Llama-3.2-1B shape (2.8 GiB, embedding tied to the output as Meta's file carries it) and
    # a small LLaMA-2 shape in 2 shards (TinyLlama-1.1B's published dims: 2048, 22 layers, 32
    # heads, 4 kv heads, FFN 5632; 2.0 GiB).
    "1b": _full("1b", "Llama-3.2-1B shape", "llama3.2-1b", "3.2"),
    "l2-1b": BenchModel("l2-1b", "LLaMA-2-style 1.1B, 2 shards",
                        replace(PRESETS["llama2-7b"], dim=2048, n_layers=22, n_heads=32,
                                n_kv_heads=4, n_ranks=2, **_COMMON), "2"),
    # Seconds, not minutes: for checking the harness itself (--models tiny --reference tiny).
    "tiny": _full("tiny", "tiny LLaMA-2 (harness check)", "tiny-llama2", "2",
                  storage_per_tensor=True),
}


def _slice(family: str, n_layers: int) -> BenchModel:
    # 405B: dim 16384, 128 heads, 8 kv heads, FFN 53248, vocabulary 128256, in 8 shards (the
    # preset's shard count; Meta's MP16 download has 16).
    preset, version = {"70b": ("llama2-70b", "2"), "405b": ("llama3.1-405b", "3.1")}[family]
    spec = replace(PRESETS[preset], n_layers=n_layers, n_ranks=8, **_COMMON)
    label = f"{family.upper()}-style, {n_layers} layer{'s' if n_layers > 1 else ''}"
    return BenchModel(f"{family}-l{n_layers}", label, spec, version, slice_of=family)


def _scout_slice(n_layers: int) -> BenchModel:
    """Scout's real sizes cut to n_layers; with the vision tower (34 layers, ~1.6 GB), whose
    many small tensors are part of what a Llama 4 conversion does."""
    label = f"Scout-style, {n_layers} layer{'s' if n_layers > 1 else ''}"
    return BenchModel(f"scout-l{n_layers}", label, scout(n_layers=n_layers), None,
                      slice_of="scout")


def _maverick_slice(n_layers: int) -> BenchModel:
    label = f"Maverick-style, {n_layers} layer{'s' if n_layers > 1 else ''}, sparse input"
    return BenchModel(f"maverick-l{n_layers}", label, maverick(n_layers=n_layers), None,
                      slice_of="maverick", sparse=True)


def _vision90_slice(n_layers: int) -> BenchModel:
    """Llama 3.2 Vision 90B's real sizes with n_layers text layers and 1 cross-attention layer
    (Meta's fusion schedule puts it before the last text layer), plus the full vision tower."""
    spec = VisionSpec(dim=8192, n_layers=n_layers, n_heads=64, n_kv_heads=8, n_cross=1,
                      multiple_of=4096, n_ranks=8)
    label = (f"Vision-90B-style, {n_layers} text layer{'s' if n_layers > 1 else ''} "
             "+ 1 cross-attention")
    return BenchModel(f"vision90-l{n_layers}", label, spec, None, slice_of="vision90")


def resolve_models(text: str) -> list[BenchModel]:
    """'7b,13b,slices' -> models in the order given (duplicates dropped)."""
    keys: list[str] = []
    for raw in (part.strip().lower() for part in text.split(",") if part.strip()):
        keys += {"slices": list(SLICES), "scout": list(SCOUT_SLICES),
                 "vision90": list(VISION90_SLICES)}.get(raw, [raw])
    models: list[BenchModel] = []
    for key in dict.fromkeys(keys):
        if key in _FULL:
            models.append(_FULL[key])
        elif match := _SLICE_RE.match(key):
            models.append(_slice(match.group(1), int(match.group(2))))
        elif match := _SCOUT_RE.match(key):
            models.append(_scout_slice(int(match.group(1))))
        elif match := _MAVERICK_RE.match(key):
            models.append(_maverick_slice(int(match.group(1))))
        elif match := _VISION90_RE.match(key):
            models.append(_vision90_slice(int(match.group(1))))
        else:
            raise ValueError(f"unknown model {key!r} in --models; use {', '.join(FULL_MODELS)}, "
                             "70b-lN, 405b-lN, scout-lN or vision90-lN (N layers), 'slices' "
                             f"for {','.join(SLICES)}, 'scout' for {','.join(SCOUT_SLICES)} "
                             f"or 'vision90' for {','.join(VISION90_SLICES)}")
    return models
