"""Run Meta's own Llama 4 code (llama-models) on a Meta-format checkpoint; save the outputs.

Runs inside .venv-meta (scripts/make_meta_env.sh), never in streamconv's .venv: it imports
llama_models and fairscale, which streamconv's tests do not need. tests/llama4_reference.py
starts it as a subprocess:

    .venv-meta/bin/python tests/llama4_reference_runner.py CKPT_DIR INPUTS.pt OUTPUT.pt

INPUTS.pt holds {"tokens": LongTensor (batch, seq), "image": FloatTensor (tiles, 3, H, W) or
None}. OUTPUT.pt gets {"logits": float32 (batch, seq, vocab), "vision": {...} or absent,
"info": {...}}.

What is Meta's and what is ours:
- Meta's: `llama4.args.ModelArgs` from params.json, `checkpoint.maybe_reshard_state_dict`
  (merges the MP8 rank files into the MP1 state dict exactly as Meta's loader does for a
  one-process run; MP1 files come back as they are), `llama4.model.Transformer` with its load
  hooks (wqkv split, expert views, shared expert and fc1/fc2 renames, norm renames),
  `Transformer.forward` over the full sequence (start position 0), and the vision encoder,
  adapter and projection.
- Ours, each forced by running on one CPU process: a gloo process group of size 1 and fairscale
  model parallel of size 1; `torch.Tensor.cuda` patched to identity while the model is built
  (Attention allocates its KV cache with `.cuda()`); the default dtype reset to float32 after
  maybe_reshard_state_dict (which sets bf16 as a side effect) so the text model runs in fp32;
  the state dict loaded with strict=False as Meta's Llama4.build does, but any missing or
  unexpected key is an error here (the fixture must hold exactly the names Meta's code reads).
- Only full-sequence forwards: Meta's single-token decode path ignores the chunked mask.
- Vision: VisionEmbeddings casts its encoder to bf16 unconditionally. The runner reports both
  that bf16 run (as Meta ships it) and an fp32 run of the same modules (encoder cast back to
  float32), which is the one to compare with another implementation.
"""

from __future__ import annotations

import codecs
import io
import json
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def _read_params(ckpt_dir: Path) -> dict[str, Any]:
    params: dict[str, Any] = json.loads((ckpt_dir / "params.json").read_text())
    # Meta's Llama4.build passes the file as is to ModelArgs(**params); transformers' converter
    # also accepts {"model": {...}}: unwrap it so both forms run.
    inner = params.get("model", params)
    assert isinstance(inner, dict)
    return inner


@contextmanager
def _cuda_is_identity() -> Any:
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


@contextmanager
def _tensors_only_load() -> Any:
    """Drop `_extra_state` (io.BytesIO) entries as torch.load returns a rank file.

    transformers' converter does the same (safe_load). Meta's reshard_mp would crash on them
    (`attention.wo._extra_state` matches its row regex and goes to torch.cat).
    """
    original = torch.load
    # The globals Meta's llama4/generation.py allows for these entries.
    torch.serialization.add_safe_globals([io.BytesIO, codecs.encode])

    def load(*args: Any, **kwargs: Any) -> Any:
        state = original(*args, **kwargs)
        if isinstance(state, dict):
            return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        return state

    torch.load = load  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = original


def _init_one_process_group(tmp: Path) -> None:
    import fairscale.nn.model_parallel.initialize as fs_init

    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{tmp / 'pg'}", rank=0, world_size=1)
    if not fs_init.model_parallel_is_initialized():
        fs_init.initialize_model_parallel(1)


def build_model(ckpt_dir: Path, *, max_seq_len: int, max_batch_size: int) -> tuple[Any, Any]:
    from llama_models.checkpoint import maybe_reshard_state_dict
    from llama_models.llama4.args import ModelArgs
    from llama_models.llama4.model import Transformer

    params = _read_params(ckpt_dir)
    args = ModelArgs(**params, max_seq_len=max_seq_len, max_batch_size=max_batch_size)
    ckpt_paths = sorted(ckpt_dir.glob("*.pth"))
    with _tensors_only_load():
        state_dict = maybe_reshard_state_dict(
            ckpt_paths,
            n_kv_heads=args.n_kv_heads if args.n_kv_heads else args.n_heads,
            moe_num_experts=args.moe_args.num_experts if args.moe_args else None,
        )
    # maybe_reshard_state_dict set the default tensor type to bf16; build the model in fp32.
    torch.set_default_dtype(torch.float32)
    with _cuda_is_identity():
        model = Transformer(args)
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise KeyError(f"Meta's Transformer did not take the checkpoint as is: "
                       f"missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    model.eval()
    return model, args


def _vision_outputs(model: Any, args: Any, image: torch.Tensor) -> dict[str, Any]:
    """Encoder, adapter and projection of one image (tiles, 3, H, W), in bf16 and in fp32."""
    embeddings = model.vision_embeddings
    out: dict[str, Any] = {}
    for label, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        embeddings.vision_encoder.to(dtype)
        with torch.inference_mode(), _cuda_is_identity():
            # VisionEmbeddings.forward: images are (tiles, 1, 3, H, W) after vstack/unsqueeze.
            encoded = embeddings.vision_encoder(image.unsqueeze(1).to(dtype))
            adapted = embeddings.vision_adapter(encoded.float())
            projected = model.vision_projection(adapted)
        out[label] = {"encoder": encoded.float(), "adapter": adapted.float(),
                      "projection": projected.float()}
    embeddings.vision_encoder.to(torch.bfloat16)  # as Meta's code leaves it
    return out


def _text_logits(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    from llama_models.llama4.datatypes import TransformerInput

    with torch.inference_mode():
        output = model.forward(TransformerInput(tokens=tokens, tokens_position=0))
    logits: torch.Tensor = output.logits.float()
    return logits


def _image_logits(model: Any, tokens: torch.Tensor, image: torch.Tensor,
                  image_positions: torch.Tensor) -> torch.Tensor:
    """Full forward with the image's patch embeddings scattered at image_positions (a bool
    (batch, seq) mask), as Llama4.generate does through VisionEmbeddings.forward."""
    from llama_models.llama4.datatypes import MaskedEmbedding, TransformerInput

    embeddings = model.vision_embeddings
    embeddings.vision_encoder.to(torch.float32)
    mask = image_positions.unsqueeze(-1)
    with torch.inference_mode(), _cuda_is_identity():
        h_ref = model.tok_embeddings(tokens)
        image_batch = [[image] for _ in range(tokens.shape[0])]
        embedding = embeddings(image_batch, mask, h_ref)
        output = model.forward(TransformerInput(
            tokens=tokens, tokens_position=0,
            image_embedding=MaskedEmbedding(embedding=embedding, mask=mask)))
    embeddings.vision_encoder.to(torch.bfloat16)
    logits: torch.Tensor = output.logits.float()
    return logits


def run(ckpt_dir: Path, inputs_path: Path, output_path: Path) -> None:
    inputs = torch.load(inputs_path, weights_only=True)
    tokens: torch.Tensor = inputs["tokens"]
    image: torch.Tensor | None = inputs.get("image")
    with tempfile.TemporaryDirectory() as tmp:
        _init_one_process_group(Path(tmp))
        model, args = build_model(ckpt_dir, max_seq_len=max(tokens.shape[1], 8),
                                  max_batch_size=tokens.shape[0])
        result: dict[str, Any] = {"logits": _text_logits(model, tokens)}
        info: dict[str, Any] = {
            "n_rank_files": len(sorted(ckpt_dir.glob("*.pth"))),
            "nope_layers": [i for i, layer in enumerate(model.layers) if layer.is_nope_layer],
            "moe_layers": [i for i, layer in enumerate(model.layers)
                           if type(layer.feed_forward).__name__ == "MoE"],
            "param_dtype": str(next(model.layers.parameters()).dtype),
        }
        if image is not None and args.vision_args is not None:
            result["vision"] = _vision_outputs(model, args, image)
            positions = inputs.get("image_positions")
            if positions is not None:
                result["image_logits"] = _image_logits(model, tokens, image, positions)
        result["info"] = info
        torch.save(result, output_path)
        torch.distributed.destroy_process_group()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    run(Path(argv[0]), Path(argv[1]), Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
