"""GGUF conversion end to end, without llama.cpp: the file read back with gguf-py's GGUFReader
holds the Hugging Face conversion's tensors with llama.cpp's own transform applied (its
LlamaModel.permute undoing the rotary permute, gguf-py's quantize); verify, resume after a
kill, the memory budget in a child process, and bad input as one sentence."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, in_process_budget
from rich.console import Console
from safetensors import safe_open

from fixtures.synthetic import SyntheticSpec, tiny
from streamconv.cli.main import main
from streamconv.model.family import Family
from streamconv.runtime.gguf_output import gguf_staging

T = gguf.GGMLQuantizationType


def run(*argv: str) -> tuple[int, str]:
    """main(argv) -> (exit code, what it printed on stderr)."""
    err = io.StringIO()
    code = main([*argv], console=Console(file=io.StringIO()),
                err_console=Console(file=err, width=300))
    return code, err.getvalue()


def llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """conversion/llama.py LlamaModel.permute: Hugging Face's halves back to Meta's pairs."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


@pytest.fixture(scope="module")
def llama3(make_checkpoint: Callable[[SyntheticSpec], Path]) -> Path:
    return make_checkpoint(tiny(Family.LLAMA3_1, dtype="bfloat16"))


@pytest.fixture(scope="module")
def hf_dir(llama3: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "hf"
    assert main([str(llama3), str(out), "--quiet", "--max-ram", in_process_budget()]) == 0
    return out


@pytest.mark.parametrize("outtype", ["bf16", "f16", "f32", "q8_0"])
def test_tensors_are_the_hf_tensors_as_llama_cpp_converts_them(
        outtype: str, llama3: Path, hf_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    code, err = run(str(llama3), str(out), "--quiet", "--outtype", outtype,
                    "--max-ram", in_process_budget())
    assert code == 0, err
    reader = gguf.GGUFReader(out)
    tensors = {t.name: t for t in reader.tensors}
    config = json.loads((hf_dir / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    seen = 0
    with safe_open(hf_dir / "model-00001-of-00001.safetensors", "pt") as f:
        for hf_name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            data = f.get_tensor(hf_name)
            if hf_name.endswith("q_proj.weight"):
                data = llama_cpp_permute(data, heads)
            elif hf_name.endswith("k_proj.weight"):
                data = llama_cpp_permute(data, kv_heads)
            values = data.float().numpy()
            tensor = tensors[table.get_name(hf_name, try_suffixes=(".weight",))]
            kind = T.F32 if values.ndim == 1 else {"bf16": T.BF16, "f16": T.F16, "f32": T.F32,
                                                   "q8_0": T.Q8_0}[outtype]
            assert tensor.tensor_type is kind, hf_name
            expected = gguf.quants.quantize(values, kind)
            assert np.asarray(tensor.data).tobytes() == expected.tobytes(), hf_name
            seen += 1
    assert seen == len(tensors) - 1  # + rope_freqs, LLaMA 3.1's scaling factors
    assert reader.tensors[0].name == "rope_freqs.weight"
    assert int(reader.fields["general.file_type"].contents()) == {
        "bf16": 32, "f16": 1, "f32": 0, "q8_0": 7}[outtype]
    assert not gguf_staging(out).exists()


def test_verify_accepts_the_file_and_names_a_changed_tensor(llama3: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    budget = in_process_budget()
    assert run(str(llama3), str(out), "--quiet", "--outtype", "q8_0", "--max-ram", budget)[0] == 0
    assert run("verify", str(llama3), str(out), "--max-ram", budget) == (0, "")
    reader = gguf.GGUFReader(out)
    target = next(t for t in reader.tensors if t.name == "blk.1.ffn_down.weight")
    with open(out, "r+b") as f:
        f.seek(target.data_offset + 100)
        byte = f.read(1)
        f.seek(target.data_offset + 100)
        f.write(bytes([byte[0] ^ 1]))
    code, err = run("verify", str(llama3), str(out), "--max-ram", budget)
    assert code == 1 and "does not match" in err
    with open(out, "r+b") as f:  # the header: one metadata byte
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 1]))
    assert run("verify", str(llama3), str(out), "--max-ram", budget)[0] == 1


@pytest.mark.parametrize("argv,message", [
    (["--dtype", "fp16"], "--dtype is for Hugging Face output"),
    (["--format", "safetensors"], "--format safetensors writes a Hugging Face folder"),
])
def test_contradicting_options_are_a_usage_error(argv: list[str], message: str, llama3: Path,
                                                 tmp_path: Path) -> None:
    code, err = run(str(llama3), str(tmp_path / "m.gguf"), *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_bad_outputs_are_one_sentence(llama3: Path, tmp_path: Path) -> None:
    budget = in_process_budget()
    out = tmp_path / "m.gguf"
    out.write_bytes(b"not mine")
    code, err = run(str(llama3), str(out), "--max-ram", budget)
    assert code == 1 and "already exists" in err and "--force" in err
    assert out.read_bytes() == b"not mine"
    code, err = run(str(llama3), str(tmp_path / "x.gguf"), "--no-tokenizer", "--max-ram", budget)
    assert code == 1 and "needs the tokenizer" in err
    code, err = run(str(llama3), str(llama3 / "in.gguf"), "--max-ram", budget)
    assert code == 1 and "inside the input folder" in err
    code, err = run("verify", str(llama3), str(tmp_path / "missing.gguf"), "--max-ram", budget)
    assert code == 1 and "does not exist" in err
    assert err.count("\n") == 1


# --- a bigger model: resume after SIGKILL, and the budget measured in a child process --------

# ~1.6 GB of bf16 (test_memory's and test_resume's shapes) with LLaMA 2's real tokenizer, or a
# synthetic one when ../shared/data is absent.
MID = SyntheticSpec(Family.LLAMA2, 2048, 13, 16, None, 32000, with_tokenizer=False)


@pytest.fixture(scope="module")
def mid(make_checkpoint: Callable[[SyntheticSpec], Path],
        tmp_path_factory: pytest.TempPathFactory) -> Path:
    weights = make_checkpoint(MID)
    folder = tmp_path_factory.mktemp("mid") / "llama-2-mid"
    folder.mkdir()
    for path in weights.iterdir():
        (folder / path.name).symlink_to(path)
    tokenizer = SHARED_DATA / "llama2_tokenizer.model"
    if not tokenizer.is_file():
        pytest.skip(f"{tokenizer} not available")
    shutil.copyfile(tokenizer, folder / "tokenizer.model")
    return folder


_CHILD = """
import sys
from streamconv.cli.main import main
code = main(sys.argv[2:])
with open("/proc/self/status") as status:
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
open(sys.argv[1], "w").write(str(hwm * 1024))
sys.exit(code)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
@pytest.mark.parametrize("outtype", ["bf16", "q8_0"])
def test_peak_rss_within_1g(outtype: str, mid: Path, tmp_path: Path) -> None:
    hwm = tmp_path / "hwm"
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(hwm), str(mid),
                           str(tmp_path / "m.gguf"), "--quiet", "--max-ram", "1G", "--outtype",
                           outtype, "--report", str(tmp_path / "r.json")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    peak = int(hwm.read_text())
    assert peak <= 1 << 30, f"peak RSS {peak >> 20} MiB over --max-ram 1G"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["predicted_peak_bytes"] <= 1 << 30
    weights = sum(p.stat().st_size for p in mid.glob("*.pth"))
    assert report["bytes_written"] > weights * (0.5 if outtype == "q8_0" else 0.99)


def test_sigkill_then_resume_is_byte_identical(mid: Path, tmp_path: Path) -> None:
    budget = in_process_budget()
    reference = tmp_path / "ref.gguf"
    assert run(str(mid), str(reference), "--quiet", "--max-ram", budget)[0] == 0
    out = tmp_path / "m.gguf"
    journal = gguf_staging(out) / "journal.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "streamconv", str(mid), str(out), "--quiet",
                             "--max-ram", "1G"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not journal.exists() or len(journal.read_text().splitlines()) < 2:
        assert proc.poll() is None, "the conversion finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.kill()
    proc.communicate()
    assert not out.exists()  # nothing half-written carries the final name
    report = tmp_path / "r.json"
    code, err = run(str(mid), str(out), "--quiet", "--resume", "--max-ram", budget,
                    "--report", str(report))
    assert code == 0, err
    assert json.loads(report.read_text())["resumed_bytes"] > 0
    assert out.read_bytes() == reference.read_bytes()
    assert not gguf_staging(out).exists()


def test_llama4_gguf_verifies_and_names_a_changed_expert(tmp_path: Path) -> None:
    """Llama 4's experts are band-transposed on the way (layout.py _band_blocks); verify runs
    the same jobs and finds a flipped byte in a transposed expert. (The bytes themselves are
    llama.cpp's: tests/test_gguf_llama_cpp.py.)"""
    from fixtures.llama4_checkpoint import write_llama4_checkpoint
    from fixtures.llama4_layout import VisionSpec, maverick_like
    from fixtures.synthetic_tokenizer import write_synthetic_tokenizer

    checkpoint = write_llama4_checkpoint(
        maverick_like(n_ranks=2, vision=VisionSpec(), vocab_size=3000 + 2048), tmp_path / "mav")
    write_synthetic_tokenizer(checkpoint / "tokenizer.model", kind="tiktoken", vocab_size=3000,
                              style="llama4")
    out = tmp_path / "mav.gguf"
    budget = in_process_budget()
    assert run(str(checkpoint), str(out), "--quiet", "--outtype", "q8_0", "--max-ram",
               budget)[0] == 0
    assert run("verify", str(checkpoint), str(out), "--max-ram", budget) == (0, "")
    reader = gguf.GGUFReader(out)
    names = [t.name for t in reader.tensors]
    assert "blk.1.ffn_gate_exps.weight" in names
    assert not any(n.startswith(("v.", "mm.")) for n in names)  # the vision tower: mmproj
    target = next(t for t in reader.tensors if t.name == "blk.1.ffn_down_exps.weight")
    with open(out, "r+b") as f:
        f.seek(target.data_offset + target.n_bytes - 3)
        byte = f.read(1)
        f.seek(target.data_offset + target.n_bytes - 3)
        f.write(bytes([byte[0] ^ 1]))
    code, err = run("verify", str(checkpoint), str(out), "--max-ram", budget)
    assert code == 1 and "does not match" in err and "Traceback" not in err


def test_plan_with_a_gguf_output_plans_that_file_and_writes_nothing(llama3: Path,
                                                                   tmp_path: Path) -> None:
    out = io.StringIO()
    target = tmp_path / "mine-q8.gguf"
    code = main(["plan", str(llama3), str(target), "--outtype", "q8_0"],
                console=Console(file=out, width=200), err_console=Console(file=io.StringIO()))
    text = out.getvalue()
    assert code == 0
    assert "GGUF file" in text and "mine-q8.gguf" in text and "Q8_0" in text
    assert "predicted peak RSS" in text
    assert list(tmp_path.iterdir()) == []  # plan writes nothing, not even the staging folder


def test_llama4_real_expert_shape_plans_whole_experts_within_1g(tmp_path: Path) -> None:
    """Scout's real layer (8 rank files, sparse: no data): a down-projection job holds whole
    experts (its rank bands are column bands), gate/up jobs whole rank bands, and the plan runs
    fewer slots rather than predict a peak over --max-ram."""
    from fixtures.llama4_layout import scout
    from fixtures.llama4_synthetic import write_llama4_sparse
    from fixtures.synthetic_tokenizer import write_synthetic_tokenizer
    from streamconv.model.tensor_table import OutputFormat
    from streamconv.pipeline.preparation import ConvertOptions, prepare

    spec = scout(n_layers=1)
    checkpoint = write_llama4_sparse(spec, tmp_path / "scout")
    write_synthetic_tokenizer(checkpoint / "tokenizer.model", kind="tiktoken",
                              vocab_size=spec.vocab_size - 2048, style="llama4")
    for outtype in ("bf16", "q8_0"):
        prepared = prepare(checkpoint, ConvertOptions(
            max_ram_bytes=1 << 30, output_format=OutputFormat.GGUF, outtype=outtype,
            gguf_name="scout.gguf"))
        plan = prepared.plan
        assert plan.predicted_peak_bytes <= 1 << 30
        down = [j for j in plan.jobs if j.hf_name.endswith("experts.down_proj.weight")]
        gate = [j for j in plan.jobs if j.hf_name.endswith("experts.gate_proj.weight")]
        assert down and gate
        assert all(j.row_start % spec.dim == 0 and j.row_stop % spec.dim == 0 for j in down)
        assert all(b.transpose for j in down + gate for b in j.blocks)
        assert prepared.gguf is not None
        gguf_gate = next(t for t in prepared.gguf.tensors
                         if t.gguf_name == "blk.0.ffn_gate_exps.weight")
        moe_ffn = gguf_gate.shape[1]
        assert gate[0].blocks[0].n_rows * 8 == moe_ffn  # one rank's band of an expert
        assert all((j.row_stop - j.row_start) % (moe_ffn // 8) == 0 for j in gate)
