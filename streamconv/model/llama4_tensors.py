"""Llama 4's tensor table: Meta's release names -> transformers' Llama4ForConditionalGeneration.

Same format as LLAMA_TENSORS (model/tensor_table.py); this table needs the general entries:
one Meta tensor feeding several Hugging Face ones (each rank's fused wqkv holds its own q, k
and v rows; a dense layer's fc1 holds its w1 and w3 rows), two Meta tensors filling one (the
experts' gate and up projections are the two column halves of gate_up_proj), per-expert blocks
each split across ranks (down_proj), and a transpose (the router). Sources, with per-rank
shapes checked against Meta's own loader and against the Maverick release's file size:
docs/llama4_facts.md sections 2 and 3 (llama-models 0.3.0 `llama4/model.py`, `moe.py`,
`ffn.py`, `vision/`, `checkpoint.py`; transformers' convert_llama4_weights_to_hf.py).

No rotary permute anywhere: transformers' Llama 4 rotates interleaved pairs as Meta does.
The expert reshapes come from the sizes (experts, moe_ffn, ranks), not from constants.
"""

from __future__ import annotations

from dataclasses import replace

from streamconv.model.tensor_table import (
    OutputFormat,
    Split,
    TensorEntry,
    TensorTable,
    Transform,
)

_TEXT = "language_model.model."
_LAYER = _TEXT + "layers.{layer}."
_ENCODER = "vision_embeddings.vision_encoder."
_BLOCK = _ENCODER + "transformer.resblocks.{layer}."
_VISION_LAYER = "vision_model.model.layers.{layer}."


def _text(role: str, hf_suffix: str, meta_suffix: str, shape: tuple[str, ...], split: Split,
          *, layers: str = "all", meta_shape: tuple[str, ...] | None = None,
          part: tuple[str, str] | None = None, col_offset: str | None = None,
          stack: str | None = None, transform: Transform | None = None,
          fp8: tuple[str, str] | None = None,
          formats: frozenset[OutputFormat] | None = None) -> TensorEntry:
    return TensorEntry(role, _LAYER + hf_suffix, "layers.{layer}." + meta_suffix, shape, split,
                       transform, layers=layers, meta_shape=meta_shape, part=part,
                       col_offset=col_offset, stack=stack,
                       fp8_scale=fp8 and "layers.{layer}.feed_forward.experts." + fp8[0],
                       fp8_scale_rows=fp8 and fp8[1], formats=formats)


_HF_ONLY = frozenset({OutputFormat.SAFETENSORS})
_GGUF_ONLY = frozenset({OutputFormat.GGUF})


_EXPERTS_IN = ("experts * dim", "moe_ffn")  # each rank: (E*D, F/ranks), F split
_GATE_UP = ("experts", "dim", "2 * moe_ffn")

_TEXT_ENTRIES = (
    TensorEntry("embedding", _TEXT + "embed_tokens.weight", "tok_embeddings.weight",
                ("vocab_size", "dim"), Split.EMBEDDING),
    # Each rank's wqkv is its own [q; k; v] rows (Attention.load_hook, reshard_mp).
    _text("q", "self_attn.q_proj.weight", "attention.wqkv.weight", ("q_rows", "dim"), Split.ROWS,
          meta_shape=("q_rows + 2 * kv_rows", "dim"), part=("0", "q_rows // ranks")),
    _text("k", "self_attn.k_proj.weight", "attention.wqkv.weight", ("kv_rows", "dim"),
          Split.ROWS, meta_shape=("q_rows + 2 * kv_rows", "dim"),
          part=("q_rows // ranks", "kv_rows // ranks")),
    _text("v", "self_attn.v_proj.weight", "attention.wqkv.weight", ("kv_rows", "dim"),
          Split.ROWS, meta_shape=("q_rows + 2 * kv_rows", "dim"),
          part=("(q_rows + kv_rows) // ranks", "kv_rows // ranks")),
    _text("o", "self_attn.o_proj.weight", "attention.wo.weight", ("dim", "q_rows"), Split.COLS),
    _text("attention_norm", "input_layernorm.weight", "attention.wqkv.layer_norm_weight",
          ("dim",), Split.REPLICATED),
    # MoE layers (TransformerBlock: (layer + 1) % interleave_moe_layer_step == 0).
    _text("moe_norm", "post_attention_layernorm.weight", "feed_forward.norm.weight", ("dim",),
          Split.REPLICATED, layers="moe"),
    _text("router", "feed_forward.router.weight", "feed_forward.router_DE",
          ("experts", "dim"), Split.REPLICATED, layers="moe", meta_shape=("dim", "experts"),
          transform=Transform.TRANSPOSE),
    _text("experts_gate", "feed_forward.experts.gate_up_proj",
          "feed_forward.experts.moe_w_in_eD_F", _GATE_UP, Split.COLS, layers="moe",
          meta_shape=_EXPERTS_IN, col_offset="0", fp8=("w1", "dim"), formats=_HF_ONLY),
    _text("experts_up", "feed_forward.experts.gate_up_proj",
          "feed_forward.experts.moe_w_swiglu_eD_F", _GATE_UP, Split.COLS, layers="moe",
          meta_shape=_EXPERTS_IN, col_offset="moe_ffn", fp8=("w3", "dim"), formats=_HF_ONLY),
    # Each rank: (E*F/ranks, D), every expert's slice of F in turn.
    _text("experts_down", "feed_forward.experts.down_proj",
          "feed_forward.experts.moe_w_out_eF_D", ("experts", "moe_ffn", "dim"), Split.ROWS,
          layers="moe", meta_shape=("experts * moe_ffn", "dim"), stack="experts",
          fp8=("w2", "moe_ffn // ranks"), formats=_HF_ONLY),
    # llama.cpp's llama4 experts (conversion/llama.py Llama4Model.modify_tensors): gate_up_proj
    # transposed and split into gate and up, (experts, moe_ffn, dim) each; down_proj
    # transposed, (experts, dim, moe_ffn). Named as the converter names them before gguf-py's
    # table maps them (ffn_gate_exps, ffn_up_exps, ffn_down_exps). A rank's (dim, moe_ffn //
    # ranks) band of an expert in w1/w3 is that expert's rows of the rank's moe_ffn slice,
    # transposed; its (moe_ffn // ranks, dim) band in w2 is a column band of the expert.
    _text("experts_gate_t", "feed_forward.experts.gate_proj.weight",
          "feed_forward.experts.moe_w_in_eD_F", ("experts", "moe_ffn", "dim"), Split.COLS,
          layers="moe", meta_shape=_EXPERTS_IN, stack="experts",
          transform=Transform.BAND_TRANSPOSE, formats=_GGUF_ONLY),
    _text("experts_up_t", "feed_forward.experts.up_proj.weight",
          "feed_forward.experts.moe_w_swiglu_eD_F", ("experts", "moe_ffn", "dim"), Split.COLS,
          layers="moe", meta_shape=_EXPERTS_IN, stack="experts",
          transform=Transform.BAND_TRANSPOSE, formats=_GGUF_ONLY),
    _text("experts_down_t", "feed_forward.experts.down_proj.weight",
          "feed_forward.experts.moe_w_out_eF_D", ("experts", "dim", "moe_ffn"), Split.ROWS,
          layers="moe", meta_shape=("experts * moe_ffn", "dim"), stack="experts",
          transform=Transform.BAND_TRANSPOSE, formats=_GGUF_ONLY),
    _text("shared_gate", "feed_forward.shared_expert.gate_proj.weight",
          "feed_forward.w_in_shared_FD.weight", ("moe_ffn", "dim"), Split.ROWS, layers="moe"),
    _text("shared_up", "feed_forward.shared_expert.up_proj.weight",
          "feed_forward.w_swiglu_FD.weight", ("moe_ffn", "dim"), Split.ROWS, layers="moe"),
    _text("shared_down", "feed_forward.shared_expert.down_proj.weight",
          "feed_forward.w_out_shared_DF.weight", ("dim", "moe_ffn"), Split.COLS, layers="moe"),
    # Dense layers: each rank's fc1 is its [w1; w3] rows (FeedForward.load_hook).
    _text("dense_norm", "post_attention_layernorm.weight",
          "feed_forward.mlp.layer_norm_weight", ("dim",), Split.REPLICATED, layers="dense"),
    _text("gate", "feed_forward.gate_proj.weight", "feed_forward.mlp.fc1_weight",
          ("dense_ffn", "dim"), Split.ROWS, layers="dense", meta_shape=("2 * dense_ffn", "dim"),
          part=("0", "dense_ffn // ranks")),
    _text("up", "feed_forward.up_proj.weight", "feed_forward.mlp.fc1_weight",
          ("dense_ffn", "dim"), Split.ROWS, layers="dense", meta_shape=("2 * dense_ffn", "dim"),
          part=("dense_ffn // ranks", "dense_ffn // ranks")),
    _text("down", "feed_forward.down_proj.weight", "feed_forward.mlp.fc2_weight",
          ("dim", "dense_ffn"), Split.COLS, layers="dense"),
    TensorEntry("norm", _TEXT + "norm.weight", "norm.weight", ("dim",), Split.REPLICATED),
    TensorEntry("output", "language_model.lm_head.weight", "output.weight",
                ("vocab_size", "dim"), Split.ROWS),
)


def _block(role: str, hf_suffix: str, meta_suffix: str, shape: tuple[str, ...],
           split: Split) -> TensorEntry:
    return TensorEntry(role, _VISION_LAYER + hf_suffix, _BLOCK + meta_suffix, shape, split,
                       layers="vision")


def _block_linear(name: str, hf_suffix: str, meta_suffix: str, shape: tuple[str, str],
                  split: Split) -> tuple[TensorEntry, TensorEntry]:
    """A vision linear with bias. Column-parallel (ROWS): the bias is split like the rows, a
    1-D tensor whose ranks sit side by side (COLS). Row-parallel: the bias is whole."""
    bias_split = Split.COLS if split is Split.ROWS else Split.REPLICATED
    return (_block(f"vision_{name}", f"{hf_suffix}.weight", f"{meta_suffix}.weight", shape,
                   split),
            _block(f"vision_{name}_bias", f"{hf_suffix}.bias", f"{meta_suffix}.bias",
                   (shape[0],), bias_split))


def _norm(role: str, hf_prefix: str, meta_prefix: str, *, per_layer: bool) -> list[TensorEntry]:
    entries = []
    for kind in ("weight", "bias"):
        if per_layer:
            entries.append(_block(f"{role}_{kind}", f"{hf_prefix}.{kind}", f"{meta_prefix}.{kind}",
                                  ("vision_dim",), Split.REPLICATED))
        else:
            entries.append(TensorEntry(f"{role}_{kind}", f"vision_model.{hf_prefix}.{kind}",
                                       f"{_ENCODER}{meta_prefix}.{kind}", ("vision_dim",),
                                       Split.REPLICATED))
    return entries


# The vision encoder (vision/encoder.py: a CLIP-style ViT whose attention is the text
# Attention with biases and no kv grouping), its pixel-shuffle adapter and the projector into
# the text model. Names: transformers' converter (docs/llama4_facts.md section 3).
_VISION_ENTRIES = (
    TensorEntry("patch_embedding", "vision_model.patch_embedding.linear.weight",
                _ENCODER + "conv1._linear.weight", ("vision_dim", "patch_inputs"), Split.ROWS),
    TensorEntry("class_embedding", "vision_model.class_embedding",
                _ENCODER + "class_embedding", ("vision_dim",), Split.REPLICATED),
    TensorEntry("positional_embedding", "vision_model.positional_embedding_vlm",
                _ENCODER + "positional_embedding_vlm", ("vision_positions", "vision_dim"),
                Split.REPLICATED),
    *_norm("layernorm_pre", "layernorm_pre", "ln_pre", per_layer=False),
    *_norm("layernorm_post", "layernorm_post", "ln_post", per_layer=False),
    *_block_linear("q", "self_attn.q_proj", "attn.wq", ("vision_dim", "vision_dim"), Split.ROWS),
    *_block_linear("k", "self_attn.k_proj", "attn.wk", ("vision_dim", "vision_dim"), Split.ROWS),
    *_block_linear("v", "self_attn.v_proj", "attn.wv", ("vision_dim", "vision_dim"), Split.ROWS),
    *_block_linear("o", "self_attn.o_proj", "attn.wo", ("vision_dim", "vision_dim"), Split.COLS),
    *_block_linear("fc1", "mlp.fc1", "mlp.c_fc", ("vision_ffn", "vision_dim"), Split.ROWS),
    *_block_linear("fc2", "mlp.fc2", "mlp.c_proj", ("vision_dim", "vision_ffn"), Split.COLS),
    *_norm("vision_norm1", "input_layernorm", "ln_1", per_layer=True),
    *_norm("vision_norm2", "post_attention_layernorm", "ln_2", per_layer=True),
    TensorEntry("adapter_fc1", "vision_model.vision_adapter.mlp.fc1.weight",
                "vision_embeddings.vision_adapter.mlp.c_fc.weight",
                ("vision_output", "adapter_inputs"), Split.ROWS),
    TensorEntry("adapter_fc2", "vision_model.vision_adapter.mlp.fc2.weight",
                "vision_embeddings.vision_adapter.mlp.c_proj.weight",
                ("vision_output", "vision_output"), Split.COLS),
    TensorEntry("projector", "multi_modal_projector.linear_1.weight", "vision_projection.weight",
                ("dim", "vision_output"), Split.ROWS),
)

# Meta tensors the conversion drops, as transformers' converter does: rotary buffers and MoE
# statistics the model does not use (docs/llama4_facts.md section 2). The `_extra_state`
# entries are not tensors and are dropped when the files are indexed.
_IGNORED = ("rope.freqs", "freq_cis", "layers.{layer}.feed_forward.expert_activation_DE",
            "layers.{layer}.feed_forward.global_gate_stats_3E",
            "layers.{layer}.feed_forward.running_gate_stats_3E")

# transformers' Llama4ForConditionalGeneration lists vision_model, multi_modal_projector, then
# language_model. The vision tower goes to llama.cpp's separate mmproj file, not the text GGUF.
LLAMA4_TENSORS = TensorTable(
    entries=(*(replace(e, formats=_HF_ONLY) for e in _VISION_ENTRIES), *_TEXT_ENTRIES),
    ignored=_IGNORED)
