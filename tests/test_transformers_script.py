"""streamconv against transformers 4.47.1's convert_llama_weights_to_hf.py, an oracle nobody here
wrote.

That script is the conversion the Hub's LLaMA models came from, and 4.47.1 is its last release,
so it runs in its own venv (scripts/make_peer_env.sh builds <repo>/.venv-peer;
STREAMCONV_PEER_PYTHON points elsewhere). Without it every test here skips with the reason.

Three checks per tiny checkpoint:
- every tensor written with `--dtype bf16` is bit-identical to the script's (same names: the
  script drops lm_head when tied; same shapes, dtypes, values): both round to bf16 the same way,
  so nothing but equality is right;
- every config.json key the script writes is equal in ours, except transformers_version and
  torch_dtype (ours must say bfloat16, the dtype of the weights);
- tests/meta_reference.py gives the logits transformers gives on the script's output. This is
  what makes the reference trustworthy for tests/test_logits.py: the script's q/k permute and
  shard merge are independent of ours and of the reference's complex-number rotary.

The script's main() only adds the tokenizer conversion, whose one effect on these outputs is
vocab_size = len(tokenizer); write_model() is called directly with that number (the embedding's
rows), so no tokenizer.model and no network are needed. Its limits, and what is left out here:
no kv-head copies (405B in 16 shards: it views 0 heads per shard), no LLaMA 3.3 version (3.3 base
does not exist; the instruct model needs --instruct, which fetches a chat template from the Hub).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import oracle_unavailable
from meta_reference import forward, load_shards, merge_shards, read_params
from safetensors.torch import load_file

from fixtures.synthetic import SyntheticSpec, tiny, write_checkpoint
from streamconv.model.family import Family

REPO = Path(__file__).resolve().parents[1]
PEER_PYTHON_ENV = "STREAMCONV_PEER_PYTHON"
LLAMA3_VOCAB = 128256
ATOL = 1e-4
# Long enough for LLaMA 3.1's scaled frequencies to matter (see tests/test_logits.py).
SEQ_LEN = 128


@dataclass(frozen=True)
class Case:
    case_id: str
    spec: SyntheticSpec
    llama_version: str  # the script's --llama_version
    rope_scaling_factor: float = 8.0


def _spec(family: Family, **changes: Any) -> SyntheticSpec:
    return tiny(family, with_tokenizer=False, **changes)


CASES = [
    Case("llama1-fp16-2shards", _spec(Family.LLAMA1, n_ranks=2), "1"),
    Case("llama2-fp32-1shard", _spec(Family.LLAMA2), "2"),
    Case("gqa-2shards", _spec(Family.LLAMA2, n_kv_heads=2, ffn_dim_multiplier=1.3, n_ranks=2),
         "2"),
    Case("gqa-8shards", _spec(Family.LLAMA2, dim=128, n_heads=16, n_kv_heads=8,
                              ffn_dim_multiplier=1.3, n_ranks=8), "2"),
    # The script tells Code Llama apart by rope_theta > 10000 (max_position_embeddings 16384).
    Case("codellama-1shard", _spec(Family.CODE_LLAMA), "2"),
    # LLaMA 3.x as Meta ships it: bf16.
    Case("llama3-bf16-2shards", _spec(Family.LLAMA3, dtype="bfloat16", n_ranks=2), "3"),
    Case("llama3.1-bf16-1shard", _spec(Family.LLAMA3_1, dtype="bfloat16"), "3.1"),
    # The real vocabulary, so the script's hard-coded bos/eos ids are right (see _expected_config).
    Case("llama3.1-real-vocab", _spec(Family.LLAMA3_1, dtype="bfloat16", vocab_size=LLAMA3_VOCAB,
                                      params_vocab_size=LLAMA3_VOCAB), "3.1"),
    Case("llama3.2-tied-bf16-1shard", _spec(Family.LLAMA3_2, dtype="bfloat16"), "3.2",
         rope_scaling_factor=32.0),
]
CASE_IDS = [c.case_id for c in CASES]

# Runs in the peer venv: one process for all cases (importing transformers there takes seconds).
# A failing case leaves ERROR.txt in its output folder instead of stopping the others.
_PEER_CODE = """
import contextlib, io, json, sys, traceback
from pathlib import Path
from transformers.models.llama.convert_llama_weights_to_hf import write_model
for job in json.loads(sys.argv[1]):
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            write_model(model_path=job["dst"], input_base_path=job["src"],
                        llama_version=job["llama_version"], vocab_size=job["vocab_size"],
                        num_shards=job["n_ranks"])
    except Exception:
        Path(job["dst"]).mkdir(parents=True, exist_ok=True)
        (Path(job["dst"]) / "ERROR.txt").write_text(traceback.format_exc())
"""

_PROBE_CODE = """
import transformers
import transformers.models.llama.convert_llama_weights_to_hf
print(transformers.__version__)
"""


def find_peer_python() -> tuple[Path | None, str]:
    """(interpreter, why not) from $STREAMCONV_PEER_PYTHON or <repo>/.venv-peer."""
    configured = os.environ.get(PEER_PYTHON_ENV)
    path = Path(configured) if configured else REPO / ".venv-peer" / "bin" / "python"
    origin = f"${PEER_PYTHON_ENV}" if configured else "<repo>/.venv-peer"
    if not path.exists():
        return None, (f"no peer Python at {path} ({origin}); run scripts/make_peer_env.sh or "
                      f"set {PEER_PYTHON_ENV}")
    probe = subprocess.run([str(path), "-c", _PROBE_CODE], capture_output=True, text=True,
                           timeout=300)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"{path} cannot import convert_llama_weights_to_hf: {last}"
    return path, ""


@dataclass(frozen=True)
class Converted:
    src: Path
    peer_dir: Path
    ours_dir: Path


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Converted]]:
    """Every case written once and converted once by the script; ours converts lazily."""
    peer_python, why_not = find_peer_python()
    if peer_python is None:
        oracle_unavailable(why_not)
    root = tmp_path_factory.mktemp("peer")
    result: dict[str, Converted] = {}
    jobs = []
    for case in CASES:
        src = write_checkpoint(case.spec, root / case.case_id / "meta")
        result[case.case_id] = Converted(src, root / case.case_id / "script",
                                         root / case.case_id / "streamconv")
        jobs.append({"src": str(src), "dst": str(result[case.case_id].peer_dir),
                     "llama_version": case.llama_version, "vocab_size": case.spec.vocab_size,
                     "n_ranks": case.spec.n_ranks})
    run = subprocess.run([str(peer_python), "-c", _PEER_CODE, json.dumps(jobs)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"peer script run failed:\n{run.stderr[-3000:]}"
    yield result


def _peer_output(conv: Converted) -> Path:
    error = conv.peer_dir / "ERROR.txt"
    if error.exists():
        pytest.fail(f"transformers' script failed on this input:\n{error.read_text()[-3000:]}")
    return conv.peer_dir


def _our_output(conv: Converted) -> Path:
    if not (conv.ours_dir / "config.json").exists():
        from streamconv.cli.main import main

        rc = main(["convert", str(conv.src), str(conv.ours_dir), "--dtype", "bf16",
                   "--max-ram", "2G", "--quiet", "--no-tokenizer", "--force"])
        assert rc == 0, f"streamconv convert exited {rc}"
    return conv.ours_dir


def _load_all(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(path))
    assert tensors, f"no .safetensors in {model_dir}"
    return tensors


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_tensors_bitwise_equal(case: Case, converted: dict[str, Converted]) -> None:
    conv = converted[case.case_id]
    theirs = _load_all(_peer_output(conv))
    ours = _load_all(_our_output(conv))
    assert set(ours) == set(theirs), (
        f"only in ours: {sorted(set(ours) - set(theirs))}; "
        f"only in the script's: {sorted(set(theirs) - set(ours))}")
    problems = []
    for hf_name, expected in sorted(theirs.items()):
        got = ours[hf_name]
        if got.shape != expected.shape or got.dtype != expected.dtype:
            problems.append(f"{hf_name}: {got.dtype}{list(got.shape)} != "
                            f"{expected.dtype}{list(expected.shape)}")
        elif not torch.equal(got, expected):
            diff = (got.float() - expected.float()).abs().max().item()
            problems.append(f"{hf_name}: values differ (max abs diff {diff:.3e})")
    assert not problems, f"{len(problems)} tensor(s) differ:\n" + "\n".join(problems[:20])


def _expected_config(case: Case, script_config: dict[str, Any]) -> dict[str, Any]:
    """The script's config.json, less the keys that are not facts about the model.

    The script writes bos 128000 / eos 128001 for every LLaMA 3 model, right only for the real
    128256-token vocabulary (the tiktoken specials follow the ranks). The tiny LLaMA 3 models
    here have 1024 ranks, so their <|begin_of_text|> is id vocab_size - 256; the
    llama3.1-real-vocab case checks the script's own values.
    """
    expected = {k: v for k, v in script_config.items()
                if k not in ("torch_dtype", "transformers_version")}
    if case.spec.family.is_llama3 and case.spec.vocab_size != LLAMA3_VOCAB:
        expected["bos_token_id"] = case.spec.vocab_size - 256
        expected["eos_token_id"] = case.spec.vocab_size - 255
    return expected


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_config_matches(case: Case, converted: dict[str, Converted]) -> None:
    conv = converted[case.case_id]
    theirs = json.loads((_peer_output(conv) / "config.json").read_text())
    ours = json.loads((_our_output(conv) / "config.json").read_text())
    missing = object()
    problems = [f"{key}: ours {ours.get(key, '<missing>')!r}, script {value!r}"
                for key, value in _expected_config(case, theirs).items()
                if ours.get(key, missing) != value]
    assert not problems, "config.json differs:\n" + "\n".join(problems)
    assert ours.get("torch_dtype") == "bfloat16", "weights are bf16, config must say so"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reference_matches_script_output(case: Case, converted: dict[str, Converted]) -> None:
    """The oracle for tests/meta_reference.py: the script's bf16 output run by transformers.

    The reference runs on the input rounded through bf16, as the script rounds it, so the two
    see identical weights and differ by float32 arithmetic only.
    """
    from transformers import LlamaForCausalLM

    conv = converted[case.case_id]
    model = LlamaForCausalLM.from_pretrained(_peer_output(conv), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, case.spec.vocab_size, (1, SEQ_LEN), generator=gen)
    params = read_params(conv.src)
    state = {meta_name: tensor.to(torch.bfloat16).float() for meta_name, tensor
             in merge_shards(load_shards(conv.src), params).items()}
    with torch.no_grad():
        hf = model(tokens).logits
        ref = forward(state, params, tokens, rope_scaling_factor=case.rope_scaling_factor)
    diff = (hf - ref).abs().max().item()
    print(f"{case.case_id}: reference vs script output, max abs logit diff {diff:.3e}")
    assert diff <= ATOL, f"{case.case_id}: max abs logit diff {diff:.3e} > {ATOL:g}"
