"""streamconv's Llama 4 conversion, tensor by tensor, against the mapping facts.

Every tensor of the converted folder must equal, bit for bit, what tests/llama4_hf_mapping.py
(docs/llama4_facts.md section 3 as naive in-memory code) makes of the merged model, whatever the
rank count and however the budget cuts the tensors into jobs. The mapping itself is held to
Meta's reference and transformers in tests/test_llama4_hf_mapping.py, which also runs the
streaming conversion's folder through both (the oracle of issue 12).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import in_process_budget
from llama4_hf_mapping import hf_state_dict
from safetensors import safe_open

import streamconv
from fixtures.llama4_checkpoint import (
    Llama4Spec,
    VisionSpec,
    maverick_like,
    merged_state,
    params_json,
    scout_like,
    write_llama4_checkpoint,
)
from fixtures.synthetic_tokenizer import write_synthetic_tokenizer
from streamconv.cli.dtype_label import source_dtype_label
from streamconv.planning import slots


def convert(meta_dir: Path, out_dir: Path, **options: object) -> streamconv.Report:
    opts = streamconv.ConvertOptions(max_ram_bytes=int(in_process_budget()), tokenizer=False,
                                     **options)  # type: ignore[arg-type]
    return streamconv.convert(meta_dir, out_dir, opts)


def converted_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensors[name] = f.get_tensor(name)
    return tensors


def expected_tensors(spec: Llama4Spec) -> dict[str, torch.Tensor]:
    dtype = getattr(torch, spec.dtype)
    state = {name: t.to(dtype) for name, t in merged_state(spec).items()}
    params = params_json(spec)
    return hf_state_dict(state, params.get("model", params))


def assert_same_tensors(folder: Path, spec: Llama4Spec) -> None:
    got = converted_tensors(folder)
    want = expected_tensors(spec)
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert got[name].dtype == getattr(torch, spec.dtype), name
        assert torch.equal(got[name].float(), tensor), name


SPECS = {
    "scout-mp8-vision": scout_like(vision=VisionSpec(), n_ranks=8, extra_state=True),
    "maverick-mp8-nested": maverick_like(vision=VisionSpec(), n_ranks=8, nest_under_model=True),
    "scout-mp1": scout_like(vision=VisionSpec()),
    "maverick-mp2-fp16": maverick_like(vision=VisionSpec(), n_ranks=2, dtype="float16"),
    # Llama Guard 4's shape: no experts, every layer dense, no chunked attention.
    "dense-mp8": scout_like(vision=VisionSpec(), n_ranks=8, num_experts=0,
                            attention_chunk_size=None),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_tensors_equal_the_mapping(name: str, tmp_path: Path) -> None:
    spec = SPECS[name]
    meta_dir = write_llama4_checkpoint(spec, tmp_path / "meta")
    convert(meta_dir, tmp_path / "hf")
    assert_same_tensors(tmp_path / "hf", spec)


def test_tensors_cut_into_single_rows_still_equal(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of one row: every expert, fused and stacked tensor is cut at every row, so each
    job's blocks start mid-expert, mid-rank and mid-part."""
    monkeypatch.setattr(slots, "MAX_PIECE_BYTES", 1)
    monkeypatch.setattr(slots, "GOOD_PIECE_BYTES", 1)
    spec = maverick_like(vision=VisionSpec(), n_ranks=8)
    meta_dir = write_llama4_checkpoint(spec, tmp_path / "meta")
    plan = streamconv.prepare(meta_dir, streamconv.ConvertOptions(
        max_ram_bytes=int(in_process_budget()), tokenizer=False)).plan
    convert(meta_dir, tmp_path / "hf")
    n_tensors = len(converted_tensors(tmp_path / "hf"))
    assert len(plan.jobs) > 10 * n_tensors
    assert_same_tensors(tmp_path / "hf", spec)


def test_config_follows_the_published_layout(tmp_path: Path) -> None:
    spec = scout_like(vision=VisionSpec(), n_ranks=8)
    meta_dir = write_llama4_checkpoint(spec, tmp_path / "Llama-4-Scout-Instruct")
    convert(meta_dir, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    text = config["text_config"]
    assert config["architectures"] == ["Llama4ForConditionalGeneration"]
    bos = spec.vocab_size - 2048
    assert (text["bos_token_id"], text["eos_token_id"], text["pad_token_id"]) == (
        bos, [bos + 1, bos + 7, bos + 8], bos + 18)
    assert config["image_token_index"] == bos + 92
    assert text["num_local_experts"] == spec.num_experts
    assert text["interleave_moe_layer_step"] == 1
    # Instruct with 16 experts would be Scout's 10M; 4 experts: the 1M of other Instruct models.
    assert text["max_position_embeddings"] == 1048576
    assert text["rope_scaling"]["factor"] == 16.0
    assert text["no_rope_layers"] == []  # interval 4: transformers derives it
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["do_sample"] is True and generation["eos_token_id"] == [
        bos + 1, bos + 7, bos + 8]
    transformers = pytest.importorskip("transformers")
    loaded = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
    text_config = loaded.text_config
    assert text_config.moe_layers == list(range(spec.n_layers))
    assert text_config.no_rope_layers == [int((i + 1) % 4 != 0) for i in range(spec.n_layers)]


def test_dense_config_is_the_converters_dense_branch(tmp_path: Path) -> None:
    meta_dir = write_llama4_checkpoint(SPECS["dense-mp8"], tmp_path / "Llama-Guard-4")
    convert(meta_dir, tmp_path / "hf")
    text = json.loads((tmp_path / "hf" / "config.json").read_text())["text_config"]
    assert (text["num_local_experts"], text["moe_layers"], text["cache_implementation"]) == (
        0, [], "static")
    assert text["attention_chunk_size"] is None
    assert text["max_position_embeddings"] == 8192  # dense Instruct (the converter's value)


def test_plan_names_llama4_and_refuses_a_version_flag(tmp_path: Path) -> None:
    meta_dir = write_llama4_checkpoint(maverick_like(vision=VisionSpec(), n_ranks=8),
                                       tmp_path / "meta")
    prepared = streamconv.prepare(meta_dir, streamconv.ConvertOptions(
        max_ram_bytes=int(in_process_budget()), tokenizer=False))
    assert prepared.spec.family.label == "Llama 4"
    assert prepared.spec.extra_layers["moe"] == [1, 3]
    with pytest.raises(streamconv.ParamsError, match="applies to LLaMA 1-3 only"):
        streamconv.prepare(meta_dir, streamconv.ConvertOptions(
            max_ram_bytes=int(in_process_budget()), tokenizer=False, llama_version="3"))


def test_command_line_writes_a_folder_transformers_loads(tmp_path: Path) -> None:
    """The whole product on a Llama-4-shaped Instruct folder: the command line, the tokenizer
    built from a Llama-4-style tiktoken file (ranks + 2,048 specials = the embedding's rows),
    and transformers loading model, config and tokenizer with no missing or unexpected key."""
    transformers = pytest.importorskip("transformers")
    n_ranks = 3000
    spec = scout_like(vision=VisionSpec(), n_ranks=8, vocab_size=n_ranks + 2048)
    meta_dir = write_llama4_checkpoint(spec, tmp_path / "Llama-4-Scout-17B-16E-Instruct")
    write_synthetic_tokenizer(meta_dir / "tokenizer.model", kind="tiktoken",
                              vocab_size=n_ranks, style="llama4")
    out = tmp_path / "hf"
    done = subprocess.run([sys.executable, "-m", "streamconv", str(meta_dir), str(out),
                           "--max-ram", "1G", "--quiet"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    for name in ("config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).is_file(), name
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == spec.vocab_size
    assert tokenizer.convert_tokens_to_ids("<|eot|>") == n_ranks + 8
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    model, info = transformers.Llama4ForConditionalGeneration.from_pretrained(
        out, output_loading_info=True)
    assert not any(info.values()), info
    assert model.config.text_config.max_position_embeddings == 1048576  # Instruct, 4 experts


def test_missing_rank_file_is_named(tmp_path: Path) -> None:
    meta_dir = write_llama4_checkpoint(scout_like(vision=VisionSpec(), n_ranks=8),
                                       tmp_path / "meta")
    (meta_dir / "consolidated.07.pth").unlink()
    done = subprocess.run([sys.executable, "-m", "streamconv", str(meta_dir),
                           str(tmp_path / "hf"), "--no-tokenizer"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 1
    assert "consolidated.07.pth" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "hf" / "config.json").exists()


def _fp8_experts(meta_dir: Path, spec: Llama4Spec, bf16_dir: Path) -> None:
    """Meta's FP8 Maverick from a bf16 folder, as llama-models' llama4/quantization/loader.py
    reads it: the routed experts of the MoE layers but the first and last layer as float8, each
    expert quantized transposed, row by row (max |w| / 448, fbgemm's per-row e4m3 scale), the
    fp32 scales in fp8_scales_N.pt under `layers.N.feed_forward.experts.{w1,w3,w2}`. bf16_dir
    receives the same ranks dequantized (Meta's formula) in bf16: the model the FP8 folder holds.
    """
    bf16_dir.mkdir()
    (bf16_dir / "params.json").write_bytes((meta_dir / "params.json").read_bytes())
    experts = spec.num_experts
    quantized = [i for i in range(1, spec.n_layers - 1) if spec.is_moe_layer(i)]
    assert quantized
    for rank in range(spec.n_ranks):
        path = meta_dir / f"consolidated.{rank:02d}.pth"
        state = torch.load(path, weights_only=True)
        plain = dict(state)
        scales = {}
        for layer in quantized:
            p = f"layers.{layer}.feed_forward.experts."
            for stored, key in (("moe_w_in_eD_F", "w1"), ("moe_w_swiglu_eD_F", "w3"),
                                ("moe_w_out_eF_D", "w2")):
                weight = state[p + stored]
                # The loader's param: w1 / w3 (E, D, F/ranks), w2 (E, F/ranks, D).
                param = weight.view(experts, weight.shape[0] // experts, weight.shape[1])
                rowwise = param.transpose(1, 2).float()  # what it quantizes, row by row
                scale = rowwise.abs().amax(dim=-1).clamp(min=1e-12) / 448.0
                q = (rowwise / scale[..., None]).to(torch.float8_e4m3fn)
                back = q.transpose(1, 2)
                deq = (q.float() * scale[..., None]).transpose(1, 2)
                state[p + stored] = back.reshape(weight.shape).contiguous()
                plain[p + stored] = deq.reshape(weight.shape).to(weight.dtype).contiguous()
                scales[p + key] = scale.contiguous()
        torch.save(state, path)
        torch.save(scales, meta_dir / f"fp8_scales_{rank}.pt")
        torch.save(plain, bf16_dir / f"consolidated.{rank:02d}.pth")


@pytest.mark.parametrize("dst", ["auto", "fp32"])
def test_fp8_release_dequantizes_like_metas_loader(tmp_path: Path, dst: str) -> None:
    """The FP8 folder converts to what the same model dequantized in bf16 converts to, bit for
    bit, with one-row jobs too (blocks that start and end inside an expert)."""
    spec = maverick_like(vision=VisionSpec(), n_ranks=2, n_layers=6)
    meta_dir = write_llama4_checkpoint(spec, tmp_path / "meta")
    _fp8_experts(meta_dir, spec, tmp_path / "bf16")
    prepared = streamconv.prepare(meta_dir, streamconv.ConvertOptions(
        max_ram_bytes=int(in_process_budget()), tokenizer=False))
    assert "float8_e4m3fn (feed-forward of layers 1, 3)" in source_dtype_label(prepared.plan)
    convert(meta_dir, tmp_path / "hf", dtype=dst)
    convert(tmp_path / "bf16", tmp_path / "hf-bf16", dtype=dst)
    got, want = converted_tensors(tmp_path / "hf"), converted_tensors(tmp_path / "hf-bf16")
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        if dst == "fp32" and any(f".layers.{i}.feed_forward.experts." in name for i in (1, 3)):
            # fp32 output keeps the unrounded products; bf16 rounding is the only difference.
            assert not torch.equal(got[name], tensor), name
            assert torch.equal(got[name].to(torch.bfloat16).float(), tensor), name
        else:
            assert torch.equal(got[name], tensor), name


def test_fp8_release_in_one_row_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slots, "MAX_PIECE_BYTES", 1)
    monkeypatch.setattr(slots, "GOOD_PIECE_BYTES", 1)
    spec = maverick_like(vision=VisionSpec(), n_ranks=2, n_layers=4)
    meta_dir = write_llama4_checkpoint(spec, tmp_path / "meta")
    _fp8_experts(meta_dir, spec, tmp_path / "bf16")
    convert(meta_dir, tmp_path / "hf")
    convert(tmp_path / "bf16", tmp_path / "hf-bf16")
    got, want = converted_tensors(tmp_path / "hf"), converted_tensors(tmp_path / "hf-bf16")
    assert all(torch.equal(got[name], tensor) for name, tensor in want.items())


def test_fp8_scale_file_missing_is_named(tmp_path: Path) -> None:
    spec = maverick_like(vision=VisionSpec(), n_ranks=2, n_layers=4)
    meta_dir = write_llama4_checkpoint(spec, tmp_path / "meta")
    _fp8_experts(meta_dir, spec, tmp_path / "bf16")
    scales = torch.load(meta_dir / "fp8_scales_1.pt", weights_only=True)
    del scales["layers.1.feed_forward.experts.w2"]
    torch.save(scales, meta_dir / "fp8_scales_1.pt")
    done = subprocess.run([sys.executable, "-m", "streamconv", str(meta_dir),
                           str(tmp_path / "hf"), "--no-tokenizer"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "fp8_scales_1.pt has no scale 'layers.1.feed_forward.experts.w2'" in done.stderr
