"""Every GGUF metadata entry llama.cpp's convert_hf_to_gguf.py writes, in its order.

llama.cpp (b10573, gguf-py 0.19.0) converts a Hugging Face folder; streamconv already makes the
bytes of that folder (pipeline/conversion.py's extra_files: config.json, generation_config.json,
the tokenizer files). Rather than restate llama.cpp's rules from memory, this module writes those
bytes into a scratch folder and runs the same steps on it that the converter runs
(conversion/base.py ModelBase.prepare_metadata, TextModel.set_gguf_parameters,
conversion/llama.py LlamaModel / Llama4Model set_gguf_parameters and set_vocab; Llama 4's text
model is llama.cpp's llama4 architecture), calling gguf-py's own pieces
where llama.cpp does: GGUFWriter for key names, value types and the order of the keys (a dict,
so a key written twice keeps its first place, as in llama.cpp) and gguf.Metadata for the
general.* and general.sampling.* keys. The PyPI gguf 0.19.0 wheel is older than the gguf-py that
b10573 vendors under the same version; where they differ on a LLaMA folder (SpecialVocab: merges,
special ids, add_bos/add_eos, chat template; the repeat penalty's name) streamconv follows b10573
(model/gguf_special.py). The writer is only a recorder here: nothing is written to disk
but the scratch copy of the small JSON/tokenizer files.

The one step that is not llama.cpp's own: its BPE vocabulary goes through transformers'
AutoTokenizer, which streamconv does not depend on at run time; model/gguf_vocab.py reads the
same vocabulary from tokenizer.json, and tests/test_gguf_metadata.py proves the result equal.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from streamconv.errors import StreamconvError
from streamconv.model.families.registry import describe
from streamconv.model.gguf_vocab import add_vocab
from streamconv.model.spec import ModelSpec
from streamconv.model.tensor_table import full_shape, hf_name
from streamconv.system.dtypes import BFLOAT16, DType

__all__ = ["GGUF_FILE_TYPES", "GGUFEntry", "auto_outtype", "gguf_metadata",
           "gguf_param_counts"]

# convert_hf_to_gguf.py's --outtype -> general.file_type (its ftype_map).
GGUF_FILE_TYPES: dict[str, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}


def auto_outtype(hf_dtype: DType) -> str:
    """What convert_hf_to_gguf.py's default --outtype auto picks for weights of this dtype
    (ModelBase.__init__: the first 2-D tensor that is bf16 gives bf16, f16 gives f16; with
    neither, as for an all-f32 folder, it falls back to f16). ``hf_dtype`` is the dtype of the
    Hugging Face folder's weights (an FP8 checkpoint's folder is bf16)."""
    return "bf16" if hf_dtype == BFLOAT16 else "f16"


@dataclass(frozen=True)
class GGUFEntry:
    """One metadata key/value as the file stores it; sub_type is the element type of arrays.

    Values are plain Python: str, int, float, bool, or a list of one of those (token texts as
    str, token types as int), so GGUFWriter.add_key_value(key, value, value_type, sub_type) or
    any other writer serializes them to the bytes llama.cpp writes."""

    key: str
    value: object
    value_type: gguf.GGUFValueType
    sub_type: gguf.GGUFValueType | None = None


def _rope_parameters(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """TextModel.__init__'s rope_parameters: rope_scaling with rope_theta and rope_type."""
    rope = dict(hparams.get("rope_parameters", hparams.get("rope_scaling")) or {})
    if "rope_theta" not in rope and (theta := _find(hparams, _ROPE_THETA_KEYS)) is not None:
        rope["rope_theta"] = theta
    if "rope_type" not in rope and (rope_type := rope.get("type")) is not None:
        rope["rope_type"] = rope_type
    return rope


def _writes_rope_freqs(hparams: Mapping[str, Any]) -> bool:
    """LlamaModel.generate_extra_tensors: "llama3" scaling becomes a rope_freqs tensor."""
    return str(_rope_parameters(hparams).get("rope_type", "")).lower() == "llama3"


def gguf_param_counts(spec: ModelSpec, *, hparams: Mapping[str, Any]
                      ) -> tuple[int, int, int, int]:
    """(total, shared, expert, expert count) as GGUFWriter.get_total_parameter_count gives
    them for the tensors llama.cpp writes: the text model's (TextModel.filter_tensors drops the
    vision tower and projector), Llama 4's gate_up_proj split into gate and up, plus the
    rope_freqs tensor (head_dim / 2 factors). gguf.size_label turns them into
    general.size_label."""
    total = shared = expert = expert_sum = n_expert_tensors = 0
    seen: set[str] = set()
    for entry, _, hf_layer_idx in spec.tensors.placed(spec.layer_sets):
        name = hf_name(entry, hf_layer_idx)
        if (entry.unless_tied and spec.tie_word_embeddings) or name in seen \
                or any(part in name for part in _NOT_TEXT):
            continue
        seen.add(name)
        shape = full_shape(entry, spec)
        size = math.prod(shape)
        total += size
        if ".experts." in name:
            pieces = 2 if name.endswith("gate_up_proj") else 1
            expert += size // shape[0]
            expert_sum += shape[0] * pieces
            n_expert_tensors += pieces
        else:
            shared += size
    if _writes_rope_freqs(hparams):
        head_dim = hparams.get("head_dim") or hparams["hidden_size"] // hparams[
            "num_attention_heads"]
        total += head_dim // 2
        shared += head_dim // 2
    return total, shared, expert, (expert_sum // n_expert_tensors if n_expert_tensors else 0)


def gguf_metadata(spec: ModelSpec, *, hf_files: Mapping[str, bytes], outtype: str,
                  model_name: str | None = None) -> tuple[GGUFEntry, ...]:
    """The metadata llama.cpp writes for the Hugging Face folder holding ``hf_files``.

    ``model_name`` is the folder name llama.cpp would have been given: general.name (and the
    size/basename heuristics of gguf.Metadata) come from it, so two llama.cpp runs on differently
    named folders differ there too. Default: the family's label and size, e.g. "LLaMA-2-6.7B".
    """
    if outtype not in GGUF_FILE_TYPES:
        raise StreamconvError(f"GGUF outtype {outtype!r} is not one of "
                              f"{', '.join(GGUF_FILE_TYPES)}; pick one of those")
    if "tokenizer.json" not in hf_files:
        raise StreamconvError("a GGUF file carries the tokenizer, and this conversion has none; "
                              "put the checkpoint's tokenizer.model next to params.json and "
                              "drop --no-tokenizer")
    family = describe(spec.family)
    hparams = _hparams(json.loads(hf_files["config.json"]), family=spec.family)
    arch = gguf.MODEL_ARCH[family.gguf_arch]
    name = model_name or f"{family.label.replace(' ', '-')}-{spec.size_label}"
    with tempfile.TemporaryDirectory(prefix="streamconv-gguf-") as scratch:
        folder = Path(scratch) / name
        folder.mkdir()
        for file_name, data in hf_files.items():
            (folder / file_name).write_bytes(data)
        writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])
        _add_general(writer, folder, counts=gguf_param_counts(spec, hparams=hparams))
        _add_llama_parameters(writer, hparams, file_type=GGUF_FILE_TYPES[outtype])
        if arch is gguf.MODEL_ARCH.LLAMA4:
            _add_llama4_parameters(writer, hparams)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_vocab(writer, folder, hparams=hparams, family=spec.family)
        return tuple(_entry(key, value) for key, value in writer.kv_data[0].items())


def _hparams(config: dict[str, Any], *, family: str) -> dict[str, Any]:
    """What the converter reads its hyperparameters from: config.json with text_config's keys
    on top (TextModel.__init__), then the family's own moves (Llama 4: model/llama4.py's
    gguf_hparams)."""
    hparams = {**config, **config.get("text_config", {})}
    moves = describe(family).gguf_hparams
    return hparams if moves is None else moves(hparams)


def _add_general(writer: gguf.GGUFWriter, folder: Path, *,
                 counts: tuple[int, int, int, int]) -> None:
    """ModelBase.prepare_metadata up to set_gguf_parameters: general.type, general.sampling.*
    from generation_config.json, general.name and the heuristics gguf.Metadata derives."""
    n_params = counts[0]
    metadata = gguf.Metadata.load(None, folder, None, n_params)
    # b10573's gguf-py also reads transformers' name for the repeat penalty; the 0.19.0 wheel
    # reads only "penalty_repeat".
    generation = gguf.Metadata.load_generation_config(folder)
    if metadata.sampling_penalty_repeat is None and "repetition_penalty" in generation:
        metadata.sampling_penalty_repeat = generation["repetition_penalty"]
    if metadata.name is None:
        metadata.name = folder.name
    if metadata.size_label is None and n_params > 0:
        metadata.size_label = gguf.size_label(*counts)
    writer.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(writer)


_ROPE_THETA_KEYS = ["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta",
                    "rotary_emb_base"]
# TextModel.filter_tensors: names of the vision tower and projector, not written.
_NOT_TEXT = ("vision_", "vision.", "projector.", "multi_modal_projector")


def _find(hparams: Mapping[str, Any], keys: list[str]) -> Any:
    return next((hparams[k] for k in keys if k in hparams), None)


def _add_llama_parameters(writer: gguf.GGUFWriter, hparams: Mapping[str, Any], *,
                          file_type: gguf.LlamaFileType) -> None:
    """TextModel.set_gguf_parameters then LlamaModel's, for the keys a LLaMA config.json can
    hold (no MoE, sliding-window or multimodal rope keys; their branches never fire here)."""
    writer.add_block_count(_find(hparams, ["n_layers", "num_hidden_layers", "n_layer",
                                           "num_layers"]))
    for keys, add in (
        (["max_position_embeddings", "n_ctx", "n_positions", "max_length",
          "max_sequence_length", "model_max_length"], writer.add_context_length),
        (["hidden_size", "n_embd", "dim"], writer.add_embedding_length),
        (["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size",
          "n_inner", "hidden_dim"], writer.add_feed_forward_length),
        (["num_attention_heads", "n_head", "n_heads"], writer.add_head_count),
        (["num_key_value_heads", "n_kv_heads"], writer.add_head_count_kv),
    ):
        if (value := _find(hparams, keys)) is not None:
            add(value)
    rope = _rope_parameters(hparams)
    _add_rope_scaling(writer, rope)
    if rope.get("rope_theta") is not None:
        writer.add_rope_freq_base(rope["rope_theta"])
    if (eps := _find(hparams, ["rms_norm_eps", "norm_eps"])) is not None:
        writer.add_layer_norm_rms_eps(eps)
    if (n_experts := _find(hparams, ["num_local_experts", "num_experts",
                                     "n_routed_experts"])) is not None:
        writer.add_expert_count(n_experts)
    if (n_used := _find(hparams, ["num_experts_per_tok", "num_experts_per_token",
                                  "top_k_experts"])) is not None:
        writer.add_expert_used_count(n_used)
    if (head_dim := hparams.get("head_dim")) is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(file_type)
    # conversion/llama.py LlamaModel.set_gguf_parameters
    writer.add_vocab_size(hparams["vocab_size"])
    rope_dim = hparams.get("head_dim")
    if rope_dim is None:
        rope_dim = hparams["hidden_size"] // hparams["num_attention_heads"]
    writer.add_rope_dimension_count(rope_dim)


def _add_llama4_parameters(writer: gguf.GGUFWriter, hparams: Mapping[str, Any]) -> None:
    """Llama4Model.set_gguf_parameters (conversion/llama.py)."""
    writer.add_interleave_moe_layer_step(hparams["interleave_moe_layer_step"])
    writer.add_expert_feed_forward_length(hparams["intermediate_size_moe"])
    if all(kind == "full_attention" for kind in hparams["layer_types"]):
        writer.add_sliding_window(0)


def _add_rope_scaling(writer: gguf.GGUFWriter, rope: Mapping[str, Any]) -> None:
    """Linear and YaRN scaling are keys; LLaMA 3.1's "llama3" scaling is the rope_freqs tensor
    (written by the tensor side), no key at all, as in TextModel.set_gguf_parameters."""
    rope_type = rope.get("rope_type", rope.get("type"))
    factor = rope.get("factor")
    if rope_type == "linear" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    elif rope_type == "yarn" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(factor)
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])


def _plain(value: Any) -> Any:
    """Bytes as str, IntEnums as int; lists element by element (one type per list)."""
    if isinstance(value, (list, tuple)):
        if not value or isinstance(value[0], str):
            return list(value)
        if isinstance(value[0], (bytes, bytearray)):
            return [bytes(v).decode("utf-8") for v in value]
        if isinstance(value[0], int) and not isinstance(value[0], bool):
            return [int(v) for v in value]
        return list(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return value


def _entry(key: str, value: gguf.GGUFValue) -> GGUFEntry:
    plain = _plain(value.value)
    sub_type = value.sub_type
    if value.type is gguf.GGUFValueType.ARRAY and sub_type is None and plain:
        # what GGUFWriter picks when it packs the array (_pack_val)
        sub_type = gguf.GGUFValueType.get_type(value.value[0])
    return GGUFEntry(key, plain, value.type, sub_type)
