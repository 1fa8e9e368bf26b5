"""Meta's Llama 3.1 405B FP8 release (fixtures/fp8_checkpoint.py), converted with no flags, must
come out as bf16 equal to Meta's dequantization formula applied rank by rank, load in transformers
with the logits of Meta's architecture on the dequantized weights, verify, and fail with one
sentence when a scale file, a scale or the fp8 dtype is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from meta_reference import merge_shards, meta_logits, read_params
from safetensors.torch import load_file
from test_bad_inputs import assert_nothing_written, assert_one_error, run_cli

from fixtures.fp8_checkpoint import (
    dequantized_ranks,
    write_dequantized_checkpoint,
    write_fp8_checkpoint,
)
from fixtures.synthetic import SyntheticSpec, tiny
from streamconv.model.family import Family
from streamconv.pipeline.preparation import ConvertOptions, prepare
from streamconv.pipeline.verification import verify
from streamconv.system import dtypes

N_LAYERS = 4  # layers 1 and 2 are fp8, 0 and 3 stay bf16, as 1..124 of 126 in the 405B


def _spec(n_ranks: int, **changes: object) -> SyntheticSpec:
    return tiny(Family.LLAMA3_1, n_ranks=n_ranks, n_layers=N_LAYERS, dtype="bfloat16",
                **changes)


@pytest.fixture(scope="module")
def fp8_8shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fp8_checkpoint(_spec(8), tmp_path_factory.mktemp("fp8") / "meta")


# Meta name -> HF name, and which rows are permuted for HF's rotary (transformers' convert
# script: permute(w, n_heads) for wq, permute(w, n_kv_heads) for wk).
_HF_SUFFIX = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
              "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
              "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
              "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm",
              "ffn_norm": "post_attention_layernorm"}


def _permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def expected_hf_tensors(fp8_dir: Path, *,
                        dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """HF tensors in float32 holding exactly the values of dtype (fp8 dequantized to dtype)."""
    params = read_params(fp8_dir)
    merged = merge_shards(dequantized_ranks(fp8_dir, dtype=dtype), params)
    expected: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": merged.pop("tok_embeddings.weight"),
        "model.norm.weight": merged.pop("norm.weight"),
        "lm_head.weight": merged.pop("output.weight")}
    for meta_name, tensor in merged.items():
        _, layer_idx, rest = meta_name.removesuffix(".weight").split(".", 2)
        if rest == "attention.wq":
            tensor = _permute(tensor, params["n_heads"])
        elif rest == "attention.wk":
            tensor = _permute(tensor, params["n_kv_heads"])
        expected[f"model.layers.{layer_idx}.{_HF_SUFFIX[rest]}.weight"] = tensor
    return expected


def _output_tensors(dst: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in dst.glob("*.safetensors"):
        tensors.update(load_file(path))
    return tensors


@pytest.mark.parametrize("n_ranks,column_scales", [(8, False), (2, True)],
                         ids=["8ranks-scales-N", "2ranks-scales-Nx1"])
def test_output_equals_meta_dequantization(n_ranks: int, column_scales: bool,
                                           fp8_8shards: Path, tmp_path: Path) -> None:
    src = fp8_8shards if n_ranks == 8 and not column_scales else write_fp8_checkpoint(
        _spec(n_ranks), tmp_path / "meta", column_scales=column_scales)
    dst = tmp_path / "hf"
    result = run_cli("convert", src, dst)  # no flags: --dtype auto, with the tokenizer
    assert result.code == 0, result.err
    config = json.loads((dst / "config.json").read_text())
    assert config["torch_dtype" if "torch_dtype" in config else "dtype"] == "bfloat16"
    assert "quantization_config" not in config
    got, expected = _output_tensors(dst), expected_hf_tensors(src)
    assert set(got) == set(expected)
    for hf_name, tensor in got.items():
        assert tensor.dtype == torch.bfloat16, hf_name
        # bf16 -> fp32 is exact, so equality here is bit equality of the bf16 values.
        assert torch.equal(tensor.float(), expected[hf_name]), hf_name
    rank0 = torch.load(src / "consolidated.00.pth", weights_only=True, mmap=True)
    assert rank0["layers.2.feed_forward.w2.weight"].dtype == torch.float8_e4m3fn
    assert rank0["layers.3.feed_forward.w2.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize("dtype_flag,dtype", [("fp32", torch.float32), ("fp16", torch.float16),
                                              ("bf16", torch.bfloat16)])
def test_output_dtypes_and_chunked_dequantization(dtype_flag: str, dtype: torch.dtype,
                                                  fp8_8shards: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--dtype fp32 writes the exact fp32 products (dequantized in place, no bf16 rounding);
    fp16/bf16 round them once from fp32. A tiny scratch makes every block several chunks."""
    monkeypatch.setattr("streamconv.planning.slots.CHUNK_BYTES", 256)  # 1-2 rows of these widths
    dst = tmp_path / "hf"
    result = run_cli("convert", fp8_8shards, dst, "--no-tokenizer", "--dtype", dtype_flag)
    assert result.code == 0, result.err
    got, expected = _output_tensors(dst), expected_hf_tensors(fp8_8shards, dtype=dtype)
    assert set(got) == set(expected)
    for hf_name, tensor in got.items():
        assert tensor.dtype == dtype, hf_name
        assert torch.equal(tensor, expected[hf_name].to(dtype)), hf_name


def test_chunks_fit_the_scratch_when_a_rank_block_is_narrower_than_the_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """w2 of 2 ranks: output rows of 192 columns, rank blocks of 96. A chunk of 300 fp32 values
    is 1 output row but 3 block rows; the scratch the planner gives must hold what the executor
    puts in it (found converting an 8-rank checkpoint with 896-wide blocks)."""
    monkeypatch.setattr("streamconv.planning.slots.CHUNK_BYTES", 1200)
    src = write_fp8_checkpoint(_spec(2), tmp_path / "fp8")
    dst = tmp_path / "hf"
    result = run_cli("convert", src, dst, "--no-tokenizer")
    assert result.code == 0, result.err
    got, expected = _output_tensors(dst), expected_hf_tensors(src, dtype=torch.bfloat16)
    for hf_name, tensor in got.items():
        assert torch.equal(tensor, expected[hf_name]), hf_name


def test_logits_match_meta_reference_on_dequantized_weights(fp8_8shards: Path,
                                                             tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    dst = tmp_path / "hf"
    assert run_cli("convert", fp8_8shards, dst, "--no-tokenizer").code == 0
    reference_dir = write_dequantized_checkpoint(fp8_8shards, tmp_path / "dequantized")
    tokens = torch.randint(0, 1280, (2, 256), generator=torch.Generator().manual_seed(0))
    model = LlamaForCausalLM.from_pretrained(dst, dtype=torch.float32)
    with torch.no_grad():
        hf = model(tokens).logits
    ref = meta_logits(reference_dir, tokens, rope_scaling_factor=8.0)
    diff = (hf - ref).abs().max().item()
    print(f"fp8 8 ranks: max abs logit diff {diff:.3e}")
    assert diff <= 1e-4


def test_verify_recomputes_fp8_output(fp8_8shards: Path, tmp_path: Path) -> None:
    dst = tmp_path / "hf"
    assert run_cli("convert", fp8_8shards, dst, "--no-tokenizer").code == 0
    options = ConvertOptions(max_ram_bytes=2 << 30, tokenizer=False)
    result = verify(fp8_8shards, dst, options)
    assert result.ok, result.problems
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    down = dst / index["weight_map"]["model.layers.1.mlp.down_proj.weight"]
    # Flip one byte of a dequantized tensor: verify must see it.
    header_len = int.from_bytes(down.read_bytes()[:8], "little")
    header = json.loads(down.read_bytes()[8:8 + header_len])
    start, _ = header["model.layers.1.mlp.down_proj.weight"]["data_offsets"]
    with open(down, "r+b") as f:
        f.seek(8 + header_len + start + 1)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x40]))
    result = verify(fp8_8shards, dst, options)
    assert "model.layers.1.mlp.down_proj.weight: bytes differ from the input's conversion" in (
        result.problems)


def test_plan_shows_fp8_input_and_read_bytes(fp8_8shards: Path) -> None:
    result = run_cli("plan", fp8_8shards)
    assert result.code == 0, result.err
    text = " ".join(result.out.split())
    assert "float8_e4m3fn (feed-forward of layers 1-2) + bfloat16" in text
    prepared = prepare(fp8_8shards, ConvertOptions(max_ram_bytes=2 << 30))
    spec, plan = prepared.spec, prepared.plan
    assert spec.dtype == plan.dst_dtype == dtypes.BFLOAT16
    # Read once: every bf16 element at 2 bytes, the kv heads once (2 of 8 ranks), every fp8
    # element at 1 byte plus one fp32 scale per row of each rank's fp8 tensor.
    ffn, dim, vocab, kv = spec.ffn_dim, spec.dim, spec.vocab_size, spec.n_kv_heads * spec.head_dim
    per_layer_bf16 = 2 * (dim * dim * 2 + kv * dim * 2 + 2 * dim)
    fp8_layer = 3 * ffn * dim + 4 * (ffn + ffn + 8 * dim)
    bf16_layer = 2 * 3 * ffn * dim
    expected = (N_LAYERS * per_layer_bf16 + 2 * fp8_layer + 2 * bf16_layer
                + 2 * (2 * vocab * dim + dim))
    assert plan.read_bytes == expected


def _damage(src: Path, rank: int, edit: str) -> None:
    path = src / f"fp8_scales_{rank}.pt"
    scales = torch.load(path, weights_only=True)
    if edit == "drop key":
        del scales[f"2_feed_forward.w2_{rank}"]
    elif edit == "short":
        scales[f"1_feed_forward.w1_{rank}"] = scales[f"1_feed_forward.w1_{rank}"][:-1].clone()
    elif edit == "fp16":
        scales[f"1_feed_forward.w3_{rank}"] = scales[f"1_feed_forward.w3_{rank}"].half()
    torch.save(scales, path)


@pytest.mark.parametrize("damage,words", [
    ("missing file", ("fp8_scales_1.pt", "missing", "download")),
    ("no scale files", ("float8_e4m3fn", "no fp8_scales_N.pt")),
    ("drop key", ("fp8_scales_1.pt", "2_feed_forward.w2_1", "layers.2.feed_forward.w2.weight")),
    ("short", ("1_feed_forward.w1_1", "one value per row (24)", "shape 23")),
    ("fp16", ("1_feed_forward.w3_1", "float16", "float32")),
    ("e5m2", ("layers.1.feed_forward.w1.weight", "float8_e5m2", "float8_e4m3fn")),
])
def test_bad_fp8_inputs_fail_with_one_sentence(damage: str, words: tuple[str, ...],
                                               tmp_path: Path) -> None:
    src = write_fp8_checkpoint(_spec(8, with_tokenizer=False), tmp_path / "meta")
    if damage == "missing file":
        (src / "fp8_scales_1.pt").unlink()
    elif damage == "no scale files":
        for path in src.glob("fp8_scales_*.pt"):
            path.unlink()
    elif damage == "e5m2":
        path = src / "consolidated.01.pth"
        state = torch.load(path, weights_only=True)
        name = "layers.1.feed_forward.w1.weight"
        state[name] = state[name].float().to(torch.float8_e5m2)
        torch.save(state, path)
    else:
        _damage(src, 1, damage)
    out = tmp_path / "out"
    result = run_cli("convert", src, out, "--quiet", "--no-tokenizer", "--max-ram", "2G")
    assert_one_error(result, *words)
    assert_nothing_written(out)
