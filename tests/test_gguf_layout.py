"""The GGUF file layout as pure data: header bytes equal gguf-py's GGUFWriter, offsets aligned,
llama.cpp's tensor types, order and encodings, and the planner's memory model with Q8_0."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from streamconv.model.family import Family
from streamconv.model.gguf_metadata import GGUFEntry
from streamconv.model.spec import ModelSpec
from streamconv.model.tensor_table import OutputFormat
from streamconv.planning.encoding import Encoding
from streamconv.planning.gguf_file import (
    ALIGNMENT,
    GGUFTensor,
    encoding_for,
    header_bytes,
    layout_gguf_file,
    tensor_type,
)
from streamconv.planning.jobs import plan_conversion
from streamconv.planning.layout import hf_layouts
from streamconv.source.fp8_scales import FP8_DTYPE
from streamconv.system import dtypes

T = gguf.GGMLQuantizationType
V = gguf.GGUFValueType


def spec_of(*, dim: int = 4096, n_layers: int = 2, n_heads: int = 32, n_kv_heads: int = 8,
            vocab_size: int = 128256, ffn_dim: int = 14336, dtype: dtypes.DType = dtypes.BFLOAT16,
            rope_scaling: dict[str, object] | None = None) -> ModelSpec:
    return ModelSpec(Family.LLAMA3_1, 1, dtype, dim, n_layers, n_heads, n_kv_heads, vocab_size,
                     ffn_dim, 1e-5, 500000.0, rope_scaling, 131072, False, 0, 128000)


ENTRIES = (
    GGUFEntry("general.architecture", "llama", V.STRING),
    GGUFEntry("llama.block_count", 2, V.UINT32),
    GGUFEntry("llama.rope.freq_base", 500000.0, V.FLOAT32),
    GGUFEntry("tokenizer.ggml.add_bos_token", True, V.BOOL),
    GGUFEntry("tokenizer.ggml.tokens", ["a", "ü", "<s>"], V.ARRAY, V.STRING),
    GGUFEntry("tokenizer.ggml.scores", [0.0, -1.5, 2.25], V.ARRAY, V.FLOAT32),
    GGUFEntry("tokenizer.ggml.token_type", [1, 3, 6], V.ARRAY, V.INT32),
)
TENSORS = (GGUFTensor("rope_freqs.weight", T.F32, (64,), 256),
           GGUFTensor("token_embd.weight", T.Q8_0, (10, 64), 10 * 68),
           GGUFTensor("output_norm.weight", T.F32, (7,), 28),
           GGUFTensor("output.weight", T.BF16, (10, 64), 1280))


def test_header_bytes_equal_gguf_writer(tmp_path: Path) -> None:
    """The same entries and tensor infos through gguf-py's own writer give the same bytes."""
    path = tmp_path / "w.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.kv_data[0].clear()  # ENTRIES carries general.architecture first, as llama.cpp's
    for e in ENTRIES:
        writer.add_key_value(e.key, e.value, e.value_type, e.sub_type)
    for t in TENSORS:
        byte_shape = (*t.shape[:-1], t.nbytes // int(np.prod(t.shape[:-1])))
        writer.add_tensor_info(t.gguf_name, byte_shape, np.dtype(np.uint8), t.nbytes,
                               raw_dtype=t.ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    theirs = path.read_bytes()
    ours = header_bytes(ENTRIES, TENSORS)
    assert len(ours) % ALIGNMENT == 0
    assert ours == theirs + bytes(len(ours) - len(theirs))


def test_tensor_types_follow_llama_cpp() -> None:
    spec = spec_of(n_layers=1, ffn_dim=14336)
    by_name = {t.hf_name: t for t in hf_layouts(spec, output_format=OutputFormat.GGUF)}
    norm = by_name["model.layers.0.input_layernorm.weight"]
    q = by_name["model.layers.0.self_attn.q_proj.weight"]
    embed = by_name["model.embed_tokens.weight"]
    for outtype, weight_type in (("f32", T.F32), ("f16", T.F16), ("bf16", T.BF16),
                                 ("q8_0", T.Q8_0)):
        assert tensor_type(norm, "blk.0.attn_norm.weight", outtype=outtype) is T.F32
        assert tensor_type(q, "blk.0.attn_q.weight", outtype=outtype) is weight_type
        assert tensor_type(embed, "token_embd.weight", outtype=outtype) is weight_type
    odd = hf_layouts(spec_of(n_layers=1, dim=4096 + 16, n_heads=33, n_kv_heads=33),
                     output_format=OutputFormat.GGUF)[1]
    assert odd.n_cols % 32 and tensor_type(odd, "blk.0.attn_q.weight", outtype="q8_0") is T.F16


def test_encodings() -> None:
    q = hf_layouts(spec_of(n_layers=1), output_format=OutputFormat.GGUF)[1]
    bf16 = dtypes.BFLOAT16
    assert encoding_for(q, T.BF16, hf_dtype=bf16) == Encoding(bf16)
    assert encoding_for(q, T.F32, hf_dtype=bf16) == Encoding(dtypes.FLOAT32)
    assert encoding_for(q, T.Q8_0, hf_dtype=bf16) == Encoding(bf16, quantized=True)
    fp8 = type(q)(q.hf_name, q.shape, q.pieces, FP8_DTYPE)
    assert encoding_for(fp8, T.F16, hf_dtype=bf16) == Encoding(bf16, stored=dtypes.FLOAT16)
    assert encoding_for(fp8, T.BF16, hf_dtype=bf16) == Encoding(bf16)


def test_no_rotary_permute_in_gguf_layouts() -> None:
    spec = spec_of(n_layers=1)
    hf = {t.hf_name: t.rotary_head_dim for t in hf_layouts(spec)}
    gg = {t.hf_name: t.rotary_head_dim for t in hf_layouts(spec, output_format=OutputFormat.GGUF)}
    assert hf["model.layers.0.self_attn.q_proj.weight"] == 128
    assert hf["model.layers.0.self_attn.k_proj.weight"] == 128
    assert set(gg.values()) == {None}


@pytest.mark.parametrize("outtype", ["bf16", "q8_0"])
def test_file_layout_offsets_order_and_rope_freqs(outtype: str) -> None:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    spec = spec_of(n_layers=12, rope_scaling=scaling)
    layouts = hf_layouts(spec, output_format=OutputFormat.GGUF)
    # 3 GiB shards: the 12 layers fall into two shards, so the order is shard by shard.
    layout = layout_gguf_file(spec, layouts, file_name="m.gguf", entries=ENTRIES[:1],
                              outtype=outtype, hf_shard_bytes=3 << 30)
    names = [t.gguf_name for t in layout.tensors]
    assert names[0] == "rope_freqs.weight" and layout.tensors[0].shape == (64,)
    shard_1 = [n for n in names[1:] if n.startswith(("blk.0.", "blk.1.", "token_embd"))]
    assert names[1:len(shard_1) + 1] == shard_1  # embed and the first layers come first
    # Shards of 3 GiB: embedding, layers 0-3 and most of 4; the rest of 4, layers 5-11 and the
    # norm; the output. Within a shard llama.cpp sorts by Hugging Face name: 10 before 9.
    at = {n: names.index(f"blk.{n}.attn_k.weight") for n in (3, 4, 9, 10, 11)}
    assert at[3] < at[4] < at[10] < at[11] < at[9]
    assert names.index("blk.4.attn_norm.weight") > at[11]  # layer 4's norms: second shard
    assert names[-2:] == ["output_norm.weight", "output.weight"]
    out = layout.file
    assert out.data_start % ALIGNMENT == 0
    offsets = [t.data_offset for t in out.tensors]
    assert all(o % ALIGNMENT == 0 for o in offsets) and offsets == sorted(offsets)
    for a, b in zip(out.tensors, out.tensors[1:], strict=False):
        assert b.data_offset == a.data_offset + -(-a.nbytes // ALIGNMENT) * ALIGNMENT
    q8 = outtype == "q8_0"
    embed = next(t for t in out.tensors if t.layout.hf_name == "model.embed_tokens.weight")
    assert embed.nbytes == 128256 * (4096 // 32 * 34 if q8 else 4096 * 2)
    assert out.total_bytes == out.data_start + sum(-(-t.nbytes // 32) * 32 for t in out.tensors)


def test_plan_counts_quantization_memory() -> None:
    """A q8_0 job's slot holds its Q8_0 rows, the staged bf16 rows, the bf16 values and the
    quantizer's scratch; the predicted peak stays within the budget and above a bf16 plan's
    slot per output byte."""
    spec = spec_of(n_layers=2)
    layouts = hf_layouts(spec, output_format=OutputFormat.GGUF)
    plans = {}
    for outtype in ("bf16", "q8_0"):
        gl = layout_gguf_file(spec, layouts, file_name="m.gguf", entries=ENTRIES[:1],
                              outtype=outtype, hf_shard_bytes=5 << 30)
        plans[outtype] = plan_conversion(spec, layouts, dst_dtype=spec.dtype,
                                         budget_bytes=1 << 30, baseline_bytes=300 << 20,
                                         max_shard_bytes=5 << 30, encodings=gl.encodings,
                                         files=[gl.file])
    for plan in plans.values():
        assert plan.predicted_peak_bytes <= plan.budget_bytes
        for job in plan.jobs:
            assert job.file_offset + job.out_bytes <= plan.files[0].total_bytes
    q8 = [j for j in plans["q8_0"].jobs if j.encoding.quantized]
    assert q8 and all(j.values_bytes == (j.row_stop - j.row_start) * j.n_cols * 2 for j in q8)
    assert all(j.encode_scratch_bytes > 0 for j in q8)
    assert plans["q8_0"].output_bytes < plans["bf16"].output_bytes * 0.55
