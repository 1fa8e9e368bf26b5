"""The GGUF output file: tensor names, types, order, header and aligned offsets, before a byte.

Sibling of output_files.py (safetensors). The file is the one llama.cpp's convert_hf_to_gguf.py
(b10573, gguf-py 0.19.0) writes from the Hugging Face folder streamconv makes of the same input,
so every rule here is the converter's (conversion/base.py ModelBase.prepare_tensors, conversion/
llama.py LlamaModel, gguf-py gguf_writer.py):

- Names: gguf-py's own table (`gguf.get_tensor_name_map(MODEL_ARCH.LLAMA, n_layers)`).
- Order: llama.cpp's generated tensors first (`rope_freqs` for LLaMA 3.1 scaling), then the Hugging
  Face tensors as it indexes the folder: shard files in name order, each shard's tensors sorted by
  name (gguf-py `SafetensorsLocal` sorts them). The shards are the ones streamconv's own Hugging
  Face conversion makes (default --max-shard-size, the checkpoint's dtype).
- Types: 1-D tensors and `*_norm.weight` in F32; the rest in the outtype; at q8_0 a tensor whose
  rows are not whole blocks of 32 falls back to F16 (its QuantError branch). Token embedding and
  output stay Q8_0 at q8_0 (only the TQ types change them).
- Layout: GGUF v3 little endian; header, metadata, tensor infos, zero padding to 32
  (GGUF_DEFAULT_ALIGNMENT, no general.alignment key), then each tensor's bytes padded to 32.
  Offsets in the tensor infos are relative to the data section.

Why a layout of our own instead of gguf-py's GGUFWriter: the writer needs every tensor's data
(in memory or in a temporary copy of the whole model) when it writes, while streamconv fills a
pre-allocated file in place, in any order, within --max-ram, and resumes. The header bytes are
the writer's format (tests/test_gguf_layout.py compares them with GGUFWriter's).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import gguf

from streamconv.model.families.registry import describe
from streamconv.model.gguf_metadata import GGUFEntry as Entry
from streamconv.model.spec import ModelSpec
from streamconv.planning.encoding import Encoding, can_quantize_q8_0, q8_0_row_bytes
from streamconv.planning.layout import TensorLayout, hf_layouts
from streamconv.planning.output_files import OutputFile, OutputTensor, layout_output_files
from streamconv.source.fp8_scales import FP8_DTYPE
from streamconv.system import dtypes
from streamconv.system.dtypes import DType

GGMLType = gguf.GGMLQuantizationType
ALIGNMENT = gguf.GGUF_DEFAULT_ALIGNMENT
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
_FLOAT_TYPES: dict[GGMLType, DType] = {GGMLType.F32: dtypes.FLOAT32,
                                       GGMLType.F16: dtypes.FLOAT16,
                                       GGMLType.BF16: dtypes.BFLOAT16}
_OUTTYPE_TYPES = {"f32": GGMLType.F32, "f16": GGMLType.F16, "bf16": GGMLType.BF16,
                  "q8_0": GGMLType.Q8_0}


@dataclass(frozen=True)
class GGUFTensor:
    gguf_name: str
    ggml_type: GGMLType
    shape: tuple[int, ...]  # numpy order (rows first); the file stores it reversed
    nbytes: int


# Tensors ModelBase.prepare_tensors always keeps in F32 ("Some tensor types are always in
# float32"), those of its list an architecture can hold (Llama 4's router is FFN_GATE_INP).
_ALWAYS_F32 = ("FFN_GATE_INP", "FFN_GATE_INP_SHEXP", "POS_EMBD", "TOKEN_TYPES",
               "SSM_CONV1D", "SHORTCONV_CONV", "TIME_MIX_FIRST", "TIME_MIX_W1", "TIME_MIX_W2",
               "TIME_MIX_DECAY_W1", "TIME_MIX_DECAY_W2", "TIME_MIX_LERP_FUSED", "POSNET_NORM1",
               "POSNET_NORM2", "V_ENC_EMBD_POS", "A_ENC_EMBD_POS", "ALTUP_CORRECT_COEF",
               "ALTUP_PREDICT_COEF", "SSM_CONV1D_Q", "SSM_CONV1D_K", "SSM_CONV1D_V",
               "INDEXER_PROJ")


def _always_f32(gguf_name: str, arch: gguf.MODEL_ARCH) -> bool:
    for key_name in _ALWAYS_F32:
        key = getattr(gguf.MODEL_TENSOR, key_name, None)
        if key is None or key not in gguf.MODEL_TENSORS[arch]:
            continue
        pattern = re.escape(gguf.TENSOR_NAMES[key] + ".weight").replace(r"\{bid\}", r"\d+")
        if re.fullmatch(pattern, gguf_name):
            return True
    return False


def tensor_type(layout: TensorLayout, gguf_name: str, *, outtype: str,
                arch: gguf.MODEL_ARCH = gguf.MODEL_ARCH.LLAMA) -> GGMLType:
    """ModelBase.prepare_tensors' choice for one tensor."""
    if (len(layout.shape) <= 1 or gguf_name.endswith("_norm.weight")
            or _always_f32(gguf_name, arch)):
        return GGMLType.F32
    chosen = _OUTTYPE_TYPES[outtype]
    if chosen is GGMLType.Q8_0 and not can_quantize_q8_0(layout.n_cols):
        return GGMLType.F16
    return chosen


def encoding_for(layout: TensorLayout, ggml_type: GGMLType, *, hf_dtype: DType) -> Encoding:
    """How the executor makes a tensor of this type. llama.cpp reads the Hugging Face tensor (in
    hf_dtype) and converts it; a direct cast from the rank files gives the same values (bf16
    and f16 widen exactly to f32, and torch casts bf16 to f16 through f32 like numpy), except
    for FP8 weights, which are dequantized into hf_dtype first and only then cast."""
    if ggml_type is GGMLType.Q8_0:
        return Encoding(hf_dtype, quantized=True)
    stored = _FLOAT_TYPES[ggml_type]
    if layout.src_dtype == FP8_DTYPE and stored != hf_dtype:
        return Encoding(hf_dtype, stored=stored)
    return Encoding(stored)


def gguf_names(layouts: Sequence[TensorLayout], *, n_layers: int,
               arch: gguf.MODEL_ARCH = gguf.MODEL_ARCH.LLAMA) -> dict[str, str]:
    """Hugging Face name -> GGUF name, by gguf-py's tensor-name table (after the converter's
    ModelBase.filter_tensors drops Llama 4's `language_model.` prefix)."""
    table = gguf.get_tensor_name_map(arch, n_layers)
    names = {}
    for layout in layouts:
        name = table.get_name(layout.hf_name.replace("language_model.", ""),
                              try_suffixes=(".weight", ".bias"))
        if name is None:
            raise AssertionError(f"gguf-py has no LLaMA name for {layout.hf_name}")
        names[layout.hf_name] = name
    return names


def llama_cpp_order(layouts: Sequence[TensorLayout], *, hf_dtype: DType, hf_shard_bytes: int,
                    hf_tensors: Sequence[TensorLayout] | None = None) -> list[TensorLayout]:
    """The order llama.cpp's converter meets the tensors of streamconv's Hugging Face folder
    (`hf_tensors`, when the GGUF tensors are not the folder's own). A GGUF tensor the folder
    does not hold under its name (Llama 4's transposed experts) comes where the folder's
    tensor made of its Meta tensor comes, in table order (gate before up, as
    Llama4Model.modify_tensors yields them); folder tensors the GGUF lacks (the vision tower)
    are skipped."""
    folder = list(layouts if hf_tensors is None else hf_tensors)
    shards = layout_output_files(folder, dtype=hf_dtype, max_shard_bytes=hf_shard_bytes)
    folder_names = {layout.hf_name for layout in folder}
    by_source: dict[str, list[TensorLayout]] = {}
    for layout in layouts:
        source = layout.hf_name if layout.hf_name in folder_names else next(
            t.hf_name for t in folder if layout.meta_name in {p.meta_name for p in t.pieces})
        by_source.setdefault(source, []).append(layout)
    return [layout for shard in sorted(shards, key=lambda f: f.name)
            for name in sorted(t.layout.hf_name for t in shard.tensors)
            for layout in by_source.get(name, [])]


def rope_freqs(spec: ModelSpec) -> bytes | None:
    """The `rope_freqs.weight` factors llama.cpp computes for LLaMA 3.1's "llama3" rope scaling,
    as float32 bytes; None without that scaling. The arithmetic is LlamaModel
    .generate_extra_tensors' own, step for step in torch float32, so the bytes are its bytes."""
    rope = spec.rope_scaling or {}
    if str(rope.get("rope_type", "")).lower() != "llama3":
        return None
    import torch

    base = spec.rope_theta
    dim = spec.head_dim
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rope.get("factor", 8.0)
    low_freq_factor = rope.get("low_freq_factor", 1.0)
    high_freq_factor = rope.get("high_freq_factor", 4.0)
    old_context_len = rope.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    factors: list[object] = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = ((old_context_len / wavelen - low_freq_factor)
                      / (high_freq_factor - low_freq_factor))
            factors.append(1 / ((1 - smooth) / factor + smooth))
    data: bytes = torch.tensor(factors, dtype=torch.float32).numpy().tobytes()
    return data


# --- the header's bytes (gguf-py GGUFWriter's format) ----------------------------------------

_SCALARS = {
    gguf.GGUFValueType.UINT8: "<B", gguf.GGUFValueType.INT8: "<b",
    gguf.GGUFValueType.UINT16: "<H", gguf.GGUFValueType.INT16: "<h",
    gguf.GGUFValueType.UINT32: "<I", gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f", gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q", gguf.GGUFValueType.FLOAT64: "<d",
    gguf.GGUFValueType.BOOL: "?",
}


def _string(text: str | bytes) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def _value(value: object, value_type: gguf.GGUFValueType,
           sub_type: gguf.GGUFValueType | None) -> bytes:
    if value_type in _SCALARS:
        return struct.pack(_SCALARS[value_type], value)
    if value_type is gguf.GGUFValueType.STRING:
        assert isinstance(value, (str, bytes))
        return _string(value)
    assert value_type is gguf.GGUFValueType.ARRAY and sub_type is not None
    assert isinstance(value, (list, tuple))
    if sub_type in _SCALARS:
        fmt = _SCALARS[sub_type]
        body = struct.pack(f"<{len(value)}{fmt[-1]}", *value)
    else:
        body = b"".join(_value(item, sub_type, None) for item in value)
    return struct.pack("<IQ", sub_type, len(value)) + body


def _pad(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def header_bytes(entries: Sequence[Entry], tensors: Sequence[GGUFTensor]) -> bytes:
    """Everything before the data section: magic, version, counts, metadata, tensor infos,
    zero padding to ALIGNMENT."""
    parts = [struct.pack("<IIQQ", gguf.GGUF_MAGIC, gguf.GGUF_VERSION, len(tensors),
                         len(entries))]
    for entry in entries:
        parts += [_string(entry.key), struct.pack("<I", entry.value_type),
                  _value(entry.value, entry.value_type, entry.sub_type)]
    offset = 0
    for tensor in tensors:
        parts += [_string(tensor.gguf_name), struct.pack("<I", len(tensor.shape)),
                  struct.pack(f"<{len(tensor.shape)}Q", *reversed(tensor.shape)),
                  struct.pack("<IQ", tensor.ggml_type, offset)]
        offset += _pad(tensor.nbytes)
    header = b"".join(parts)
    return header + bytes(_pad(len(header)) - len(header))


@dataclass(frozen=True)
class GGUFLayout:
    file: OutputFile  # header (+ generated tensors) and the tensors jobs fill
    encodings: dict[str, Encoding]  # by Hugging Face name
    tensors: tuple[GGUFTensor, ...]  # every tensor in file order, generated ones included


def _stored_bytes(layout: TensorLayout, ggml_type: GGMLType) -> int:
    if ggml_type is GGMLType.Q8_0:
        return layout.n_rows * q8_0_row_bytes(layout.n_cols)
    return layout.n_rows * layout.n_cols * _FLOAT_TYPES[ggml_type].itemsize


def layout_gguf_file(spec: ModelSpec, layouts: Sequence[TensorLayout], *, file_name: str,
                     entries: Sequence[Entry], outtype: str,
                     hf_shard_bytes: int) -> GGUFLayout:
    """The whole file before a byte is written. Generated tensors (rope_freqs) are constants:
    their bytes are part of the file's header area, written with it, so jobs fill only the
    Meta tensors, at offsets relative to OutputFile.data_start."""
    ordered = llama_cpp_order(layouts, hf_dtype=spec.dtype, hf_shard_bytes=hf_shard_bytes,
                              hf_tensors=hf_layouts(spec))
    arch = gguf.MODEL_ARCH[describe(spec.family).gguf_arch]
    names = gguf_names(ordered, n_layers=spec.n_layers, arch=arch)
    tensors: list[GGUFTensor] = []
    constant = b""
    freqs = rope_freqs(spec)
    if freqs is not None:
        tensors.append(GGUFTensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                                  GGMLType.F32, (len(freqs) // 4,), len(freqs)))
        constant = freqs + bytes(_pad(len(freqs)) - len(freqs))
    encodings: dict[str, Encoding] = {}
    for layout in ordered:
        ggml_type = tensor_type(layout, names[layout.hf_name], outtype=outtype, arch=arch)
        encodings[layout.hf_name] = encoding_for(layout, ggml_type, hf_dtype=spec.dtype)
        tensors.append(GGUFTensor(names[layout.hf_name], ggml_type, layout.shape,
                                  _stored_bytes(layout, ggml_type)))
    out_tensors, offset = [], 0
    for layout, tensor in zip(ordered, tensors[len(tensors) - len(ordered):], strict=True):
        out_tensors.append(OutputTensor(layout, offset, tensor.nbytes))
        offset += _pad(tensor.nbytes)
    header = header_bytes(entries, tensors) + constant
    return GGUFLayout(OutputFile(file_name, tuple(out_tensors), header, data_align=ALIGNMENT),
                      encodings, tuple(tensors))
