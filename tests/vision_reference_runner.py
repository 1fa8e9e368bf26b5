"""Build Meta's own Llama 3.2 Vision model at model-parallel size N, save it, run it.

Runs inside .venv-meta (scripts/make_meta_env.sh), never in streamconv's .venv; started by
tests/vision_reference.py as

    .venv-meta/bin/python tests/vision_reference_runner.py WORK_DIR

WORK_DIR/request.json holds {"mp": N, "seed": S, "params": {params.json}, "vision": {tiny
tower sizes}, "max_seq_len": L}; WORK_DIR/inputs.pt holds {"tokens": LongTensor (1, seq),
"text_tokens": LongTensor (1, seq), "tiles": FloatTensor (n_tiles, 3, H, W),
"aspect_ratio": [h_tiles, w_tiles]}. The runner starts N gloo processes (one per rank, CPU) and
writes
- WORK_DIR/ckpt/consolidated.{rank:02d}.pth (each rank's `state_dict()` in bf16) and params.json:
  a checkpoint in Meta's format written by Meta's model, with no belief of ours about names,
  shapes or splits;
- WORK_DIR/reference.pt: {"text_logits", "image_logits", "vision_tokens", "info"} from rank 0.

What is Meta's and what is ours:
- Meta's: `llama3.args.ModelArgs`, `llama3.multimodal.model.CrossAttentionTransformer` (built
  at MP N under fairscale), `compute_vision_tokens_masks` (vision tower, projection, per-layer
  cross-attention KV caches, `_pad_masks`, `_get_xattn_mask`) and `forward`.
- Ours, each one forced and minimal:
  1. The vision tower's size is hard-coded in `CrossAttentionTransformerVision.__init__`
     (width 1280, 32 local + 8 global layers, 16 heads, intermediate layers "3,7,15,23,30",
     vision_input_dim 1280 * 6). A tower that size is ~630 M parameters: too big for a unit
     test and for 8 CPU ranks. While that __init__ runs, the module's `VisionEncoder` name is
     wrapped to override width, layers, heads, n_global_layers and return_intermediate
     (every other argument is Meta's). Meta then builds `vision_projection` for the 7680-wide
     input, so it is rebuilt with the same call (ColumnParallelLinear(in, dim, bias=True)) and
     the input width (len(return_intermediate) + 1) * width, and vision_input_dim set to match.
  2. `torchvision` stub: model.py imports image_transform.py, which imports torchvision only
     for `VariableSizeImageTransform` (PIL resize/normalize). PyPI's torchvision 0.28.0 wheel
     (the one paired with torch 2.13.0) links libtorch_cuda.so and does not import beside the
     CPU torch (`operator torchvision::nms does not exist`). The oracle feeds tiles that are
     already normalized, so `model.image_transform` is replaced by a function returning them
     as they are; the stub module raises if anything else touches it.
  3. Weights: Meta's layers are built with `init_method=lambda x: x` (uninitialized memory)
     and gates start at 0 (which would hide the whole cross-attention path). Every parameter
     is refilled from a generator seeded by (seed, its name), full size, then sliced to this
     rank by its fairscale layer type (Column: dim 0 with bias, Row: weight dim 1, bias whole,
     VocabParallelEmbedding: dim 0; anything else whole), so replicated tensors are equal on
     all ranks as in a real checkpoint. Values are rounded to bf16 (the released dtype), so
     the bf16 files and the fp32 forward hold the same numbers.
"""

from __future__ import annotations

import json
import sys
import types
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def _stub_torchvision() -> None:
    """Make `import torchvision.transforms` succeed without the CUDA-linked wheel (see 2.)."""
    if "torchvision" in sys.modules:
        return

    class _Unavailable:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("torchvision is stubbed in the vision oracle; feed tensors")

    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    for name in ("ToTensor", "Normalize"):
        setattr(transforms, name, _Unavailable)
    transforms.InterpolationMode = types.SimpleNamespace(  # type: ignore[attr-defined]
        BILINEAR="bilinear")
    transforms.functional = functional  # type: ignore[attr-defined]
    root.transforms = transforms  # type: ignore[attr-defined]
    sys.modules.update({"torchvision": root, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})


@contextmanager
def _tiny_vision_tower(vision: dict[str, Any]) -> Iterator[None]:
    """Shrink the hard-coded vision tower while CrossAttentionTransformer is built (see 1.)."""
    from fairscale.nn.model_parallel.layers import ColumnParallelLinear
    from llama_models.llama3.multimodal import model as mm

    original_encoder = mm.VisionEncoder
    original_init = mm.CrossAttentionTransformerVision.__init__

    def encoder(*args: Any, **kwargs: Any) -> Any:
        kwargs.update(width=vision["width"], layers=vision["layers"], heads=vision["heads"],
                      n_global_layers=vision["n_global_layers"],
                      return_intermediate=list(vision["return_intermediate"]))
        return original_encoder(*args, **kwargs)

    def init(self: Any, args: Any) -> None:
        original_init(self, args)
        self.vision_input_dim = (len(vision["return_intermediate"]) + 1) * vision["width"]
        self.vision_projection = ColumnParallelLinear(
            self.vision_input_dim, args.dim, bias=True, init_method=lambda x: x)

    mm.VisionEncoder = encoder
    mm.CrossAttentionTransformerVision.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        mm.VisionEncoder = original_encoder
        mm.CrossAttentionTransformerVision.__init__ = original_init  # type: ignore[method-assign]


def _split_dim(module: Any, param_name: str) -> int | None:
    """The dimension fairscale splits this parameter on, None when every rank holds it whole."""
    from fairscale.nn.model_parallel import layers

    if isinstance(module, layers.ColumnParallelLinear | layers.VocabParallelEmbedding):
        return 0
    if isinstance(module, layers.RowParallelLinear):
        return 1 if param_name == "weight" else None
    if isinstance(module, layers.ParallelEmbedding):
        return 1
    return None


def _initial_value(meta_name: str, shape: list[int], gen: torch.Generator) -> torch.Tensor:
    """Values that keep every path of the tiny model alive (gates well away from 0)."""
    leaf = meta_name.rsplit(".", 1)[-1]
    if "gate" in leaf:
        return 0.5 + 0.5 * torch.rand(shape, generator=gen)
    if len(shape) >= 2:
        return torch.randn(shape, generator=gen) * shape[-1] ** -0.5
    if "norm" in meta_name or ".ln_" in meta_name or meta_name.startswith("ln_"):
        return (1.0 if leaf == "weight" else 0.0) + 0.1 * torch.randn(shape, generator=gen)
    return 0.2 * torch.randn(shape, generator=gen)


def _randomize(model: torch.nn.Module, *, seed: int, rank: int, world: int) -> None:
    """Refill every parameter; see 3. in the module docstring."""
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                meta_name = f"{module_name}.{param_name}" if module_name else param_name
                dim = _split_dim(module, param_name)
                shape = list(param.shape)
                if dim is not None:
                    shape[dim] *= world
                gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(
                    meta_name.encode()))
                value = _initial_value(meta_name, shape, gen)
                if dim is not None:
                    value = value.chunk(world, dim)[rank]
                param.copy_(value.to(torch.bfloat16).float())


def _build(request: dict[str, Any]) -> tuple[Any, Any]:
    from llama_models.llama3.args import ModelArgs
    from llama_models.llama3.multimodal.model import CrossAttentionTransformer

    args = ModelArgs(**request["params"], max_seq_len=request["max_seq_len"], max_batch_size=1)
    torch.set_default_dtype(torch.float32)
    with _tiny_vision_tower(request["vision"]):
        model = CrossAttentionTransformer(args)
    model.eval()
    return model, args


def _forward(model: Any, *, tokens: torch.Tensor, tiles: torch.Tensor | None,
             aspect_ratio: list[int], text_only: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Meta's generation path (llama3/generation.py): masks and caches, then one forward over
    the whole sequence from position 0. One image covering every token from position 0."""
    seq = tokens.shape[1]
    images: list[list[Any]] = [[]] if tiles is None else [[(tiles, aspect_ratio)]]
    masks: list[list[list[int]]] = [[]] if tiles is None else [[[0, -1]]]
    # The tiles are already Meta's transform output (see 2.): pass them through.
    model.image_transform = lambda image: image
    with torch.inference_mode():
        xattn_caches, xattn_mask, row_mask = model.compute_vision_tokens_masks(
            batch_images=images, batch_masks=masks, total_len=seq, device="cpu")
        logits = model.forward(position_ids=torch.arange(seq), tokens=tokens,
                               cross_attention_masks=xattn_mask,
                               full_text_row_masked_out_mask=row_mask,
                               xattn_caches=xattn_caches, text_only_inference=text_only)
        vision_tokens = None
        if tiles is not None:
            stacked = torch.zeros(1, 1, model.max_num_chunks, *tiles.shape[1:])
            stacked[0, 0, : tiles.shape[0]] = tiles
            vision_tokens = model.vision_model(stacked, torch.tensor([[aspect_ratio]]))
    return logits.float(), vision_tokens


def _worker(rank: int, work_dir: str, request: dict[str, Any]) -> None:
    import fairscale.nn.model_parallel.initialize as fs_init

    _stub_torchvision()
    work = Path(work_dir)
    world = int(request["mp"])
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{work / 'pg'}", rank=rank, world_size=world)
    fs_init.initialize_model_parallel(world)
    model, _ = _build(request)
    _randomize(model, seed=int(request["seed"]), rank=rank, world=world)
    state = {k: v.to(torch.bfloat16).clone() for k, v in model.state_dict().items()}
    torch.save(state, work / "ckpt" / f"consolidated.{rank:02d}.pth")
    model.setup_cache(1, torch.device("cpu"), torch.float32)
    inputs = torch.load(work / "inputs.pt", weights_only=True)
    text_logits, _ = _forward(model, tokens=inputs["text_tokens"], tiles=None,
                              aspect_ratio=[1, 1], text_only=True)
    image_logits, vision_tokens = _forward(
        model, tokens=inputs["tokens"], tiles=inputs["tiles"],
        aspect_ratio=list(inputs["aspect_ratio"]), text_only=False)
    if rank == 0:
        info = {"mp": world, "fusion_schedule": list(model.text_model.fusion_schedule),
                "shapes": {k: list(v.shape) for k, v in state.items()}}
        torch.save({"text_logits": text_logits, "image_logits": image_logits,
                    "vision_tokens": vision_tokens, "info": info}, work / "reference.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def run(work_dir: Path) -> None:
    request = json.loads((work_dir / "request.json").read_text())
    ckpt = work_dir / "ckpt"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "params.json").write_text(json.dumps(request["params"], indent=2) + "\n")
    world = int(request["mp"])
    if world == 1:
        _worker(0, str(work_dir), request)
    else:
        torch.multiprocessing.spawn(_worker, args=(str(work_dir), request), nprocs=world)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    run(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
