"""End to end on tiny generated checkpoints: bytes, layout, config, and the output folder rules.

The expected tensors are rebuilt here the slow, obvious way (load every shard whole, concatenate,
permute), independent of the planner's row ranges and copy blocks.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from conftest import in_process_budget
from safetensors import safe_open
from safetensors.torch import load_file

from fixtures.synthetic import SyntheticSpec, tiny
from streamconv.cli.main import main
from streamconv.model.family import Family
from streamconv.pipeline.conversion import ConvertOptions, prepare
from streamconv.runtime.file_writer import ShardWriter
from streamconv.system.direct_io import ALIGN, open_direct

prepare_module = importlib.import_module("streamconv.pipeline.preparation")

MakeCkpt = Callable[[SyntheticSpec], Path]


def expected_tensors(src: Path, spec: SyntheticSpec, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    shards = [torch.load(p, weights_only=True) for p in sorted(src.glob("consolidated.*.pth"))]
    n, hd, kv = len(shards), spec.head_dim, spec.kv_heads

    def cat(name: str, dim: int) -> torch.Tensor:
        return torch.cat([s[name] for s in shards], dim=dim)

    def permute(w: torch.Tensor, heads: int) -> torch.Tensor:
        rows, cols = w.shape
        return w.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)

    out = {"model.embed_tokens.weight": cat("tok_embeddings.weight",
                                            0 if spec.family.is_llama3 else 1),
           "model.norm.weight": shards[0]["norm.weight"]}
    if not spec.tied_output:
        out["lm_head.weight"] = cat("output.weight", 0)
    for i in range(spec.n_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        if n > kv:  # one copy of each kv head
            k = torch.cat([shards[s][p + "attention.wk.weight"] for s in range(0, n, n // kv)])
            v = torch.cat([shards[s][p + "attention.wv.weight"] for s in range(0, n, n // kv)])
        else:
            k, v = cat(p + "attention.wk.weight", 0), cat(p + "attention.wv.weight", 0)
        out |= {
            q + "self_attn.q_proj.weight": permute(cat(p + "attention.wq.weight", 0),
                                                   spec.n_heads),
            q + "self_attn.k_proj.weight": permute(k, kv),
            q + "self_attn.v_proj.weight": v,
            q + "self_attn.o_proj.weight": cat(p + "attention.wo.weight", 1),
            q + "mlp.gate_proj.weight": cat(p + "feed_forward.w1.weight", 0),
            q + "mlp.up_proj.weight": cat(p + "feed_forward.w3.weight", 0),
            q + "mlp.down_proj.weight": cat(p + "feed_forward.w2.weight", 1),
            q + "input_layernorm.weight": shards[0][p + "attention_norm.weight"],
            q + "post_attention_layernorm.weight": shards[0][p + "ffn_norm.weight"],
        }
    assert hd * spec.n_heads == spec.dim
    return {k: v.to(dtype) for k, v in out.items()}


def load_output(out: Path) -> dict[str, torch.Tensor]:
    index = json.loads((out / "model.safetensors.index.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(set(index["weight_map"].values())):
        tensors |= load_file(out / name)
    assert set(tensors) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                  for t in tensors.values())
    return tensors


def run(*argv: str | Path) -> int:
    return main([str(a) for a in argv])


# Every tensor a multiple of 4 KiB, like real models: the writer sends job bytes with O_DIRECT.
ALIGNED = tiny(Family.LLAMA2, dim=2048, n_heads=16, n_layers=1, n_ranks=2, dtype="bfloat16")

CASES = [
    ("llama1-fp16-2", tiny(Family.LLAMA1, n_ranks=2)),
    ("llama2-1", tiny(Family.LLAMA2)),
    ("gqa-8", tiny(Family.LLAMA2, dim=128, n_heads=16, n_kv_heads=8, ffn_dim_multiplier=1.3,
                   n_ranks=8, dtype="bfloat16")),
    ("code-4", tiny(Family.CODE_LLAMA, n_ranks=4)),
    ("llama3.1-2-shared", tiny(Family.LLAMA3_1, n_ranks=2, share_storage=True)),
    ("llama3.1-8-kv-copies", tiny(Family.LLAMA3_1, n_ranks=8)),
    ("llama3.2-tied", tiny(Family.LLAMA3_2, n_ranks=2)),
    ("aligned-direct-2", ALIGNED),
]


@pytest.mark.parametrize("spec", [c[1] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("max_ram", ["2G", "tight"])
def test_tensors_equal_plain_concat_and_permute(spec: SyntheticSpec, max_ram: str,
                                                make_checkpoint: MakeCkpt, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    spec = replace(spec, with_tokenizer=False)
    src = make_checkpoint(spec)
    if max_ram == "tight":
        # The smallest budget the planner accepts: one slot, tensors cut into many row ranges
        # (whole heads for q/k). The process's own RSS is pinned to 0 so the figure is exact.
        monkeypatch.setattr(prepare_module, "current_rss_bytes", lambda: 0)
        plan = prepare(src, ConvertOptions(tokenizer=False, max_ram_bytes=2 << 30)).plan
        max_ram = str(plan.min_budget_bytes)
        tight = prepare(src, ConvertOptions(tokenizer=False,
                                            max_ram_bytes=plan.min_budget_bytes)).plan
        assert tight.depth == 1 and len(tight.jobs) > 4 * len(plan.jobs)
    assert run(src, tmp_path / "out", "--no-tokenizer", "--quiet", "--max-ram", max_ram) == 0
    got = load_output(tmp_path / "out")
    want = expected_tensors(src, spec, getattr(torch, spec.dtype))
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                               ("fp32", torch.float32)])
def test_dtype_cast_matches_torch(dtype: str, torch_dtype: torch.dtype, make_checkpoint: MakeCkpt,
                                  tmp_path: Path) -> None:
    spec = tiny(Family.LLAMA2, n_ranks=2, with_tokenizer=False)  # float32 input
    src = make_checkpoint(spec)
    assert run(src, tmp_path, "--no-tokenizer", "--quiet", "--dtype", dtype, "--force") == 0
    got = load_output(tmp_path)
    for name, tensor in expected_tensors(src, spec, torch_dtype).items():
        assert torch.equal(got[name], tensor), name
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["torch_dtype"] == str(torch_dtype).removeprefix("torch.")


def test_config_values(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    spec = tiny(Family.CODE_LLAMA, n_ranks=2, with_tokenizer=False)
    assert run(make_checkpoint(spec), tmp_path, "--no-tokenizer", "--quiet", "--force") == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["vocab_size"]) == (64, 2, 8, 8, 528)
    assert config["intermediate_size"] == spec.ffn_dim
    assert config["rope_theta"] == 1e6 and config["max_position_embeddings"] == 16384
    assert config["torch_dtype"] == "float32" and config["tie_word_embeddings"] is False
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["bos_token_id"] == 1 and generation["eos_token_id"] == 2


def test_many_output_files_with_small_max_shard_size(make_checkpoint: MakeCkpt,
                                                     tmp_path: Path) -> None:
    spec = tiny(Family.LLAMA2, with_tokenizer=False)
    src = make_checkpoint(spec)
    assert run(src, tmp_path, "--no-tokenizer", "--quiet", "--max-shard-size", "40k",
               "--force") == 0
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 3
    for path in shards:
        with safe_open(str(path), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
    got = load_output(tmp_path)
    for name, tensor in expected_tensors(src, spec, torch.float32).items():
        assert torch.equal(got[name], tensor), name
    assert not (tmp_path / ".streamconv-partial").exists()


def test_refuses_non_empty_output_and_overlap(make_checkpoint: MakeCkpt, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    src = make_checkpoint(tiny(Family.LLAMA2, with_tokenizer=False))
    (tmp_path / "keep.txt").write_text("user data")
    assert run(src, tmp_path, "--no-tokenizer", "--quiet") == 1
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert run(src, src / "hf", "--no-tokenizer", "--quiet") == 1
    assert "overlap" in capsys.readouterr().err
    assert not (src / "hf").exists()
    assert run(src, tmp_path, "--no-tokenizer", "--quiet", "--force") == 0
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_archive_folder_name_is_not_assumed(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    """torch names the zip's inner folder after the file a checkpoint was first saved as."""
    spec = tiny(Family.LLAMA2, n_ranks=2, with_tokenizer=False)
    src = tmp_path / "in"
    shutil.copytree(make_checkpoint(spec), src)
    for path in sorted(src.glob("consolidated.*.pth")):
        state = torch.load(path, weights_only=True)
        renamed = tmp_path / f"rank_{path.name[13:15]}_final.pt"
        torch.save(state, renamed)
        shutil.move(renamed, path)
    with zipfile.ZipFile(src / "consolidated.01.pth") as archive:
        assert archive.namelist()[0].startswith("rank_01_final/")
    assert run(src, tmp_path / "out", "--no-tokenizer", "--quiet") == 0
    got = load_output(tmp_path / "out")
    for name, tensor in expected_tensors(src, spec, torch.float32).items():
        assert torch.equal(got[name], tensor), name


def test_norms_differing_across_shards_warn_and_use_shard_0(make_checkpoint: MakeCkpt,
                                                            tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    spec = tiny(Family.LLAMA3_1, n_ranks=2, with_tokenizer=False)
    src = tmp_path / "in"
    shutil.copytree(make_checkpoint(spec), src)
    shard1 = src / "consolidated.01.pth"
    state = torch.load(shard1, weights_only=True)
    state["layers.1.ffn_norm.weight"] = state["layers.1.ffn_norm.weight"] + 1e-3
    torch.save(state, shard1)
    out = tmp_path / "out"
    assert main([str(src), str(out), "--no-tokenizer", "--max-ram", "2G"]) == 0
    printed = capsys.readouterr().out
    assert "layers.1.ffn_norm.weight differs across ranks [0, 1]" in " ".join(printed.split())
    got = load_output(out)
    rank0 = torch.load(src / "consolidated.00.pth", weights_only=True)
    assert torch.equal(got["model.layers.1.post_attention_layernorm.weight"],
                       rank0["layers.1.ffn_norm.weight"])


@dataclass(frozen=True)
class DirectWrite:
    went_direct: bool
    n_bytes: int
    offset: int


@pytest.fixture
def direct_writes(monkeypatch: pytest.MonkeyPatch) -> list[DirectWrite]:
    """Every call the writer makes to ShardWriter._write_direct, and whether it went direct."""
    calls: list[DirectWrite] = []
    write_direct = ShardWriter._write_direct

    def spy(self: ShardWriter, file_idx: int, data: memoryview, offset: int) -> bool:
        went_direct = write_direct(self, file_idx, data, offset)
        calls.append(DirectWrite(went_direct, data.nbytes, offset))
        return went_direct

    monkeypatch.setattr(ShardWriter, "_write_direct", spy)
    return calls


def has_direct(folder: Path) -> bool:
    probe = folder / "probe"
    probe.write_bytes(b"")
    fd = open_direct(probe, os.O_WRONLY)
    if fd is None:
        return False
    os.close(fd)
    return True


def test_aligned_jobs_bypass_the_page_cache(make_checkpoint: MakeCkpt, tmp_path: Path,
                                            direct_writes: list[DirectWrite]) -> None:
    if not has_direct(tmp_path):
        pytest.skip(f"{tmp_path} has no O_DIRECT")
    spec = replace(ALIGNED, with_tokenizer=False)
    src = make_checkpoint(spec)
    assert run(src, tmp_path / "out", "--no-tokenizer", "--quiet", "--max-ram",
               in_process_budget()) == 0
    total = sum(w.n_bytes for w in direct_writes)
    assert direct_writes and all(w.went_direct for w in direct_writes)
    got = load_output(tmp_path / "out")
    assert total == sum(t.numel() * t.element_size() for t in got.values())
    for name, tensor in expected_tensors(src, spec, torch.bfloat16).items():
        assert torch.equal(got[name], tensor), name


def test_direct_and_page_cache_writes_mix_in_one_file(make_checkpoint: MakeCkpt, tmp_path: Path,
                                                      direct_writes: list[DirectWrite]) -> None:
    """A 64-wide fp32 model: the embedding (512 x 256 B) is block-aligned, the norms (256 B)
    are not, so one file gets both kinds of write; its bytes must still be exact."""
    spec = replace(tiny(Family.LLAMA2), with_tokenizer=False)
    src = make_checkpoint(spec)
    assert run(src, tmp_path / "out", "--no-tokenizer", "--quiet", "--max-shard-size", "100G") == 0
    assert len(list((tmp_path / "out").glob("*.safetensors"))) == 1
    if has_direct(tmp_path):
        total = sum(p.stat().st_size for p in (tmp_path / "out").glob("*.safetensors"))
        assert 0 < sum(w.n_bytes for w in direct_writes if w.went_direct) < total
    got = load_output(tmp_path / "out")
    for name, tensor in expected_tensors(src, spec, torch.float32).items():
        assert torch.equal(got[name], tensor), name


def test_tensors_that_start_mid_block_still_bypass_the_page_cache(
        make_checkpoint: MakeCkpt, tmp_path: Path, direct_writes: list[DirectWrite]) -> None:
    """dim 640 in bf16: each norm is 1280 B, so every tensor after one starts inside a disk
    block (LLaMA-2 13B's norms do the same), and the down projection's rows (1728 columns) are
    not whole blocks either. All but the part blocks at a job's two ends must still go past
    the page cache, and every byte must be exact."""
    if not has_direct(tmp_path):
        pytest.skip(f"{tmp_path} has no O_DIRECT")
    spec = tiny(Family.LLAMA2, dim=640, n_heads=10, n_layers=2, n_ranks=2, dtype="bfloat16",
                with_tokenizer=False)
    src = make_checkpoint(spec)
    assert run(src, tmp_path / "out", "--no-tokenizer", "--quiet", "--max-ram", "1G") == 0
    got = load_output(tmp_path / "out")
    payload = sum(t.numel() * t.element_size() for t in got.values())
    norms = sum(t.numel() * t.element_size() for n, t in got.items() if "norm" in n)
    n_big = len(got) - sum("norm" in n for n in got)
    assert all(w.offset % ALIGN == 0 and w.n_bytes % ALIGN == 0 for w in direct_writes)
    # at most one part block at each end of each large tensor (one job each at 1G)
    assert sum(w.n_bytes for w in direct_writes if w.went_direct) >= (
        payload - norms - 2 * ALIGN * n_big)
    for name, tensor in expected_tensors(src, spec, torch.bfloat16).items():
        assert torch.equal(got[name], tensor), name


@pytest.mark.parametrize(("max_ram", "overlapped"), [("4G", True), ("min", False)])
def test_tokenizer_files_are_built_while_tensors_stream_when_the_budget_allows(
        make_checkpoint: MakeCkpt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        max_ram: str, overlapped: bool) -> None:
    conversion = importlib.import_module("streamconv.pipeline.conversion")
    src = make_checkpoint(tiny(Family.LLAMA3_1, n_ranks=2))
    if max_ram == "min":  # the smallest workable budget leaves no room beside the slots
        minimum = prepare(src, ConvertOptions(max_ram_bytes=4 << 30)).plan.min_budget_bytes
        max_ram = str(minimum + (64 << 20))  # room for the slots, not for the tokenizer
    threads: list[str] = []
    real = conversion.extra_files

    def spy(*args: object) -> dict[str, bytes]:
        import threading

        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(conversion, "extra_files", spy)
    assert main([str(src), str(tmp_path / "out"), "--quiet", "--max-ram", max_ram]) == 0
    assert threads == (["extra-files"] if overlapped else ["MainThread"])
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
