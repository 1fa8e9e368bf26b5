"""Llama 3.2 Vision's tensor table: Meta's release names -> transformers'
MllamaForConditionalGeneration, in the names the published safetensors carry.

Sources: docs/llama32_vision_facts.md sections 2 (Meta names, shapes and fairscale splits, from
llama-models 0.3.0 `llama3/multimodal/model.py` run at MP 1, 2 and 8) and 4 (the mapping of
transformers' convert_mllama_weights_to_hf.py, 4.47.1). What this table needs of the grammar
(model/tensor_table.py):

- two layer sets with their own Hugging Face indices (LayerMap): Meta numbers its text layers
  and its cross-attention layers separately, transformers interleaves them in one list;
- a row band: embed_tokens is tok_embeddings' rows, then the 8 rows of learnable_embedding
  (<|image|> = 128256 is its row 0);
- computed tensors (`gather`): the tile and gated position embeddings, precomputed per aspect
  ratio (model/row_gathers.py);
- a reshape (`stored_shape`): the patch embedding is a conv kernel in transformers;
- biases split with their weights: column-parallel biases split like the rows (a 1-D tensor
  whose rank slices sit side by side, COLS), row-parallel ones whole on every rank;
- rotary permute per tensor: the text self-attention q and k only. Cross-attention has no
  rotary embedding, the vision tower neither.

Sizes that differ between releases and the tiny test towers are dimension names resolved by
model/mllama.py from params.json and the tensors' shapes.
"""

from __future__ import annotations

from streamconv.model.tensor_table import Split, TensorEntry, TensorTable, Transform

_TEXT = "language_model.model."
_SELF = _TEXT + "layers.{layer}."
_ENCODER = "vision_model.vision_encoder."


def _text(role: str, hf_suffix: str, meta_suffix: str, shape: tuple[str, ...], split: Split,
          transform: Transform | None = None) -> TensorEntry:
    return TensorEntry(role, _SELF + hf_suffix, "text_model.layers.{layer}." + meta_suffix,
                       shape, split, transform)


def _cross(role: str, hf_suffix: str, meta_suffix: str, shape: tuple[str, ...],
           split: Split) -> TensorEntry:
    return TensorEntry(f"cross_{role}", _SELF + hf_suffix,
                       "text_model.cross_attention_layers.{layer}." + meta_suffix, shape,
                       split, layers="cross")


_FFN = (("gate", "mlp.gate_proj.weight", "feed_forward.w1.weight", ("ffn_dim", "dim"), Split.ROWS),
        ("up", "mlp.up_proj.weight", "feed_forward.w3.weight", ("ffn_dim", "dim"), Split.ROWS),
        ("down", "mlp.down_proj.weight", "feed_forward.w2.weight", ("dim", "ffn_dim"),
         Split.COLS),
        ("attention_norm", "input_layernorm.weight", "attention_norm.weight", ("dim",),
         Split.REPLICATED),
        ("ffn_norm", "post_attention_layernorm.weight", "ffn_norm.weight", ("dim",),
         Split.REPLICATED))

_TEXT_LAYER_ENTRIES = (
    _text("q", "self_attn.q_proj.weight", "attention.wq.weight", ("q_rows", "dim"), Split.ROWS,
          Transform.ROTARY),
    _text("k", "self_attn.k_proj.weight", "attention.wk.weight", ("kv_rows", "dim"), Split.ROWS,
          Transform.ROTARY),
    _text("v", "self_attn.v_proj.weight", "attention.wv.weight", ("kv_rows", "dim"), Split.ROWS),
    _text("o", "self_attn.o_proj.weight", "attention.wo.weight", ("dim", "q_rows"), Split.COLS),
    *(_text(*row) for row in _FFN),
    # A cross-attention layer (CrossAttentionTransformerBlock): no rotary permute, q and k
    # RMS-normed per head, two tanh gates stored raw (transformers applies tanh, as Meta does).
    _cross("q", "cross_attn.q_proj.weight", "attention.wq.weight", ("q_rows", "dim"),
           Split.ROWS),
    _cross("k", "cross_attn.k_proj.weight", "attention.wk.weight", ("kv_rows", "dim"),
           Split.ROWS),
    _cross("v", "cross_attn.v_proj.weight", "attention.wv.weight", ("kv_rows", "dim"),
           Split.ROWS),
    _cross("o", "cross_attn.o_proj.weight", "attention.wo.weight", ("dim", "q_rows"),
           Split.COLS),
    _cross("q_norm", "cross_attn.q_norm.weight", "attention.q_norm.weight", ("head_dim",),
           Split.REPLICATED),
    _cross("k_norm", "cross_attn.k_norm.weight", "attention.k_norm.weight", ("head_dim",),
           Split.REPLICATED),
    _cross("attn_gate", "cross_attn_attn_gate", "gate_attn", ("1",), Split.REPLICATED),
    _cross("mlp_gate", "cross_attn_mlp_gate", "gate_ffwd", ("1",), Split.REPLICATED),
    *(_cross(*row) for row in _FFN),
)

_EMBED = _TEXT + "embed_tokens.weight"
_EMBED_SHAPE = ("vocab_size + learnable", "dim")
_TEXT_ENTRIES = (
    # VocabParallelEmbedding both: tok_embeddings' rows, then learnable_embedding's (its
    # max(MP, 8) = 8 rows split by rows too: one per rank at MP8).
    TensorEntry("embedding", _EMBED, "text_model.tok_embeddings.weight", _EMBED_SHAPE,
                Split.EMBEDDING, meta_shape=("vocab_size", "dim"), row_offset="0"),
    TensorEntry("learnable_embedding", _EMBED, "text_model.learnable_embedding.weight",
                _EMBED_SHAPE, Split.ROWS, meta_shape=("learnable", "dim"),
                row_offset="vocab_size"),
    *_TEXT_LAYER_ENTRIES,
    TensorEntry("norm", _TEXT + "norm.weight", "text_model.norm.weight", ("dim",),
                Split.REPLICATED),
    TensorEntry("output", "language_model.lm_head.weight", "text_model.output.weight",
                ("vocab_size", "dim"), Split.ROWS),
)


def _tower(kind: str, hf_kind: str, layers: str) -> tuple[TensorEntry, ...]:
    """One encoder block of the local ("transformer") or global ("global_transformer") stack:
    ImageTransformerBlock, attention without biases (column-parallel q, k, v, row-parallel o),
    a GELU MLP with biases, two LayerNorms."""
    meta = f"{_ENCODER}{kind}.resblocks.{{layer}}."
    hf = f"vision_model.{hf_kind}.layers.{{layer}}."

    def block(role: str, hf_suffix: str, meta_suffix: str, shape: tuple[str, ...],
              split: Split) -> TensorEntry:
        return TensorEntry(f"{layers}_{role}", hf + hf_suffix, meta + meta_suffix, shape,
                           split, layers=layers)

    width = ("vision_dim", "vision_dim")
    return (
        block("q", "self_attn.q_proj.weight", "attn.wq.weight", width, Split.ROWS),
        block("k", "self_attn.k_proj.weight", "attn.wk.weight", width, Split.ROWS),
        block("v", "self_attn.v_proj.weight", "attn.wv.weight", width, Split.ROWS),
        block("o", "self_attn.o_proj.weight", "attn.wo.weight", width, Split.COLS),
        block("fc1", "mlp.fc1.weight", "mlp.c_fc.weight", ("vision_ffn", "vision_dim"),
              Split.ROWS),
        block("fc1_bias", "mlp.fc1.bias", "mlp.c_fc.bias", ("vision_ffn",), Split.COLS),
        block("fc2", "mlp.fc2.weight", "mlp.c_proj.weight", ("vision_dim", "vision_ffn"),
              Split.COLS),
        block("fc2_bias", "mlp.fc2.bias", "mlp.c_proj.bias", ("vision_dim",), Split.REPLICATED),
        *(block(f"{norm}_{kind_}", f"{hf_norm}.{kind_}", f"{norm}.{kind_}", ("vision_dim",),
                Split.REPLICATED)
          for norm, hf_norm in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm"))
          for kind_ in ("weight", "bias")),
    )


def _top(role: str, hf: str, meta: str, shape: tuple[str, ...], split: Split = Split.REPLICATED,
         *, meta_shape: tuple[str, ...] | None = None, gather: str | None = None,
         stored_shape: tuple[str, ...] | None = None) -> TensorEntry:
    return TensorEntry(role, f"vision_model.{hf}", f"{_ENCODER}{meta}", shape, split,
                       meta_shape=meta_shape, gather=gather, stored_shape=stored_shape)


def _norm(hf: str, meta: str) -> tuple[TensorEntry, ...]:
    return tuple(_top(f"{hf}_{kind}", f"{hf}.{kind}", f"{meta}.{kind}", ("vision_dim",))
                 for kind in ("weight", "bias"))


_TILES = ("tiles", "tiles", "1", "vision_dim")
_VISION_ENTRIES = (
    # Meta's ColumnParallelConv2dPatch: nn.Unfold (channel-major, as a conv kernel) and a
    # column-parallel linear without bias; transformers' patch_embedding is the Conv2d.
    _top("patch_embedding", "patch_embedding.weight", "conv1._linear.weight",
         ("vision_dim", "patch_inputs"), Split.ROWS,
         stored_shape=("vision_dim", "3", "patch", "patch")),
    _top("class_embedding", "class_embedding", "class_embedding", ("vision_dim",)),
    _top("positional_embedding", "gated_positional_embedding.embedding", "positional_embedding",
         ("vision_positions", "vision_dim")),
    _top("gated_positional_embedding", "gated_positional_embedding.tile_embedding.weight",
         "gated_positional_embedding", ("aspect_ratios", "tiles * vision_positions * vision_dim"),
         meta_shape=("tiles", "tiles", "vision_positions", "vision_dim"),
         gather="aspect_ratio_tiles"),
    _top("gated_positional_gate", "gated_positional_embedding.gate",
         "gated_positional_embedding_gate", ("1",)),
    *(entry for stage in ("pre", "post") for entry in (
        _top(f"{stage}_tile_embedding", f"{stage}_tile_positional_embedding.embedding.weight",
             f"{stage}_tile_pos_embed.embedding", ("aspect_ratios", "tiles * vision_dim"),
             meta_shape=_TILES, gather="aspect_ratio_tiles"),
        _top(f"{stage}_tile_gate", f"{stage}_tile_positional_embedding.gate",
             f"{stage}_tile_pos_embed.gate", ("1",)))),
    *_norm("layernorm_pre", "ln_pre"),
    *_tower("transformer", "transformer", "vision_local"),
    # Between the two stacks, so that each stack's layers stay together in the write order
    # (TensorTable.placed sorts one run of per-layer entries by layer index).
    *_norm("layernorm_post", "ln_post"),
    *_tower("global_transformer", "global_transformer", "vision_global"),
    *(TensorEntry(f"vision_global_{gate}", f"vision_model.global_transformer.layers.{{layer}}."
                  f"{gate}", f"{_ENCODER}global_transformer.resblocks.{{layer}}.{gate}", ("1",),
                  Split.REPLICATED, layers="vision_global")
      for gate in ("gate_attn", "gate_ffn")),
)

_PROJECTOR = (
    TensorEntry("projector", "multi_modal_projector.weight",
                "vision_model.vision_projection.weight", ("dim", "vision_output"), Split.ROWS),
    TensorEntry("projector_bias", "multi_modal_projector.bias",
                "vision_model.vision_projection.bias", ("dim",), Split.COLS),
)

# transformers' MllamaForConditionalGeneration lists vision_model, language_model, then
# multi_modal_projector. Meta's rotary buffer, if a file carries one, is dropped (HFC skips
# text_model.rope.freqs).
MLLAMA_TENSORS = TensorTable(
    entries=(*_VISION_ENTRIES, *_TEXT_ENTRIES, *_PROJECTOR),
    ignored=("text_model.rope.freqs",))
