"""The tokenizer files against the ones others publish, key by key.

LLaMA 3.x: transformers 4.47.1's conversion script (write_tokenizer, the TikTokenConverter path)
runs in the peer venv (scripts/make_peer_env.sh) on the same ranks file; its tokenizer.json must
equal ours as parsed JSON, merges included, and its tokenizer_config.json must equal ours except
for the keys listed in docs/tokenizers.md ("Differences from the published files"), each of which
has its own test. Without the peer venv these tests skip with the reason.

Also here: the LLaMA 3 instruct chat template as Meta published it, one parse per conversion, and
the conversion time of the 128k-rank file.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import transformers
from conftest import oracle_unavailable
from test_tokenizer_tiktoken import LLAMA3_MODEL, _oracle, needs_llama3
from test_transformers_script import find_peer_python
from transformers import AutoTokenizer

from fixtures.synthetic_tokenizer import write_synthetic_tokenizer
from streamconv.model.family import Family
from streamconv.tokenizer import files as tokenizer
from streamconv.tokenizer import from_sentencepiece as tokenizer_spm
from streamconv.tokenizer.files import (
    detect_tokenizer_kind,
    tokenizer_vocab_size,
    write_tokenizer_files,
)

# Runs in the peer venv: one process for every job (importing transformers takes seconds).
_PEER_CODE = """
import contextlib, io, json, sys
from transformers.models.llama.convert_llama_weights_to_hf import (
    DEFAULT_LLAMA_SPECIAL_TOKENS, write_tokenizer)
for job in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        write_tokenizer(job["dst"], job["src"], llama_version=job["version"],
                        special_tokens=DEFAULT_LLAMA_SPECIAL_TOKENS[job["version"]],
                        instruct=False)
"""

# Keys of transformers 4.47.1's tokenizer_config.json that ours leaves out or sets otherwise on
# purpose; docs/tokenizers.md gives the reason and the test for each.
CONFIG_EXCEPTIONS = {"clean_up_tokenization_spaces", "extra_special_tokens"}

# (case, family, transformers' --llama_version); 3.3 has 3.1's tokenizer and no version there.
CASES = [
    ("llama3-real", Family.LLAMA3, "3"),
    ("llama3-real", Family.LLAMA3_1, "3.1"),
    ("llama3-real", Family.LLAMA3_2, "3.2"),
    ("synthetic-3000", Family.LLAMA3_1, "3.1"),
]


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(case: str, tmp: Path) -> Path:
    if case == "llama3-real":
        return LLAMA3_MODEL
    path = tmp / "tokenizer.model"
    if not path.exists():
        write_synthetic_tokenizer(path, kind="tiktoken", vocab_size=3000, seed=5)
    return path


@pytest.fixture(scope="module")
def peer_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], Path]]:
    """transformers 4.47.1's output folder for every case it can run."""
    peer_python, why_not = find_peer_python()
    if peer_python is None:
        oracle_unavailable(why_not)
    root = tmp_path_factory.mktemp("peer-tok")
    jobs, dirs = [], {}
    for case, _family, version in CASES:
        if case == "llama3-real" and not LLAMA3_MODEL.is_file():
            continue
        dst = root / f"{case}-{version}"
        jobs.append({"src": str(_source(case, root)), "dst": str(dst), "version": version})
        dirs[(case, version)] = dst
    done = subprocess.run([str(peer_python), "-c", _PEER_CODE, json.dumps(jobs)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    yield dirs


def _ours(case: str, family: Family, tmp: Path, *, instruct: bool = False) -> Path:
    out = tmp / "ours"
    out.mkdir()
    write_tokenizer_files(_source(case, tmp), out, family=family, instruct=instruct,
                          model_max_length=family_context(family))
    return out


def family_context(family: Family) -> int:
    # transformers 4.47.1's CONTEXT_LENGTH_FOR_VERSION, which is each family's context length.
    return 8192 if family is Family.LLAMA3 else 131072


@pytest.mark.parametrize(("case", "family", "version"), CASES,
                         ids=[f"{c}-{v}" for c, _, v in CASES])
def test_files_equal_transformers_conversion(peer_dirs: dict[tuple[str, str], Path],
                                             tmp_path: Path, case: str, family: Family,
                                             version: str) -> None:
    if (case, version) not in peer_dirs:
        pytest.skip(f"{LLAMA3_MODEL} not available (no ../shared/data)")
    peer = peer_dirs[(case, version)]
    ours = _ours(case, family, tmp_path)
    want, got = _load(peer / "tokenizer.json"), _load(ours / "tokenizer.json")
    assert len(got["model"]["merges"]) == len(want["model"]["merges"])
    for key in want:  # one key at a time, so a failure names the part that differs
        assert got[key] == want[key], key
    assert got == want
    want_config, got_config = _load(peer / "tokenizer_config.json"), _load(
        ours / "tokenizer_config.json")
    for key in set(want_config) | set(got_config):
        if key not in CONFIG_EXCEPTIONS:
            assert got_config.get(key) == want_config.get(key), key
    # special_tokens_map.json: the same tokens; ours writes each as the AddedToken dict that
    # Meta's published files carry, transformers 4.47.1 as a bare string.
    want_map, got_map = _load(peer / "special_tokens_map.json"), _load(
        ours / "special_tokens_map.json")
    assert {k: v["content"] for k, v in got_map.items()} == want_map


@needs_llama3
def test_merge_count_of_real_file(tmp_path: Path) -> None:
    # The figure llama.cpp's GGUF carried from transformers' conversion (issue 14).
    ours = _ours("llama3-real", Family.LLAMA3_1, tmp_path)
    assert len(_load(ours / "tokenizer.json")["model"]["merges"]) == 280147


def test_clean_up_tokenization_spaces_must_stay_off(tmp_path: Path) -> None:
    # The one config value where ours differs from transformers' and Meta's (true): with true,
    # transformers 4 decodes "a ." as "a." and tiktoken's text is lost.
    source = _source("synthetic", tmp_path)
    ours = _ours("synthetic", Family.LLAMA3_1, tmp_path)
    config = _load(ours / "tokenizer_config.json")
    assert config["clean_up_tokenization_spaces"] is False
    text = "a . b , c ! don 't"
    enc, _ = _oracle(source, Family.LLAMA3_1)
    ids = enc.encode(text)
    config["clean_up_tokenization_spaces"] = True
    flipped = tmp_path / "flipped"
    flipped.mkdir()
    for name in ("tokenizer.json", "special_tokens_map.json"):
        (flipped / name).write_bytes((ours / name).read_bytes())
    (flipped / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert AutoTokenizer.from_pretrained(ours).decode(ids) == text == enc.decode(ids)
    flipped_text = AutoTokenizer.from_pretrained(flipped).decode(ids)
    # transformers 4 cleans up (wrong text); transformers 5 ignores the flag with a warning.
    if int(transformers.__version__.split(".")[0]) < 5:
        assert flipped_text != text


PUBLISHED_3_0_PROMPT = (  # Meta-Llama-3-8B-Instruct's format, as its template renders it
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def test_llama3_instruct_gets_published_template(tmp_path: Path) -> None:
    ours = _ours("synthetic", Family.LLAMA3, tmp_path, instruct=True)
    config = _load(ours / "tokenizer_config.json")
    assert config["eos_token"] == "<|eot_id|>"
    assert config["chat_template"].startswith("{% set loop_messages = messages %}")
    auto = AutoTokenizer.from_pretrained(ours)
    messages = [{"role": "system", "content": "  Be brief. "},
                {"role": "user", "content": "Hi there"}]
    text = auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == PUBLISHED_3_0_PROMPT


def test_each_file_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # prepare() asks for the kind and the vocab size, extra_files() for the files: one parse.
    path = tmp_path / "tokenizer.model"
    write_synthetic_tokenizer(path, kind="sentencepiece", vocab_size=400, seed=1)
    calls = []
    real = tokenizer_spm.load_spm

    def counting(p: Path, data: bytes) -> tokenizer_spm.SpmModel:
        calls.append(p)
        return real(p, data)

    monkeypatch.setattr(tokenizer_spm, "load_spm", counting)
    tokenizer._parse_bytes.cache_clear()
    assert detect_tokenizer_kind(path) == "sentencepiece"
    assert tokenizer_vocab_size(path, family=Family.LLAMA2) == 400
    out = tmp_path / "out"
    out.mkdir()
    write_tokenizer_files(path, out, family=Family.LLAMA2, instruct=False, model_max_length=4096)
    assert calls == [path]
    # A changed file is parsed again, not served from the cache.
    write_synthetic_tokenizer(path, kind="sentencepiece", vocab_size=500, seed=2)
    assert tokenizer_vocab_size(path, family=Family.LLAMA2) == 500
    assert calls == [path, path]




LLAMA2_MODEL = LLAMA3_MODEL.parent / "llama2_tokenizer.model"


@pytest.mark.skipif(not LLAMA2_MODEL.is_file(), reason=f"{LLAMA2_MODEL} not available")
def test_llama2_equals_transformers_but_for_the_dummy_prefix(tmp_path: Path) -> None:
    peer_python, why_not = find_peer_python()
    if peer_python is None:
        oracle_unavailable(why_not)
    code = ("import sys\nfrom transformers.models.llama.convert_llama_weights_to_hf import "
            "write_tokenizer\nwrite_tokenizer(sys.argv[1], sys.argv[2], llama_version='2')")
    peer = tmp_path / "peer"
    done = subprocess.run([str(peer_python), "-c", code, str(peer), str(LLAMA2_MODEL)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = tmp_path / "ours"
    ours.mkdir()
    write_tokenizer_files(LLAMA2_MODEL, ours, family=Family.LLAMA2, instruct=False,
                          model_max_length=4096)
    want, got = _load(peer / "tokenizer.json"), _load(ours / "tokenizer.json")
    assert got["model"] == want["model"]  # vocab and all 61,249 merges, in the same order
    differing = {key for key in want if got[key] != want[key]}
    assert differing == {"normalizer", "decoder"}
    # Why: transformers 4.47.1's normalizer has no Prepend("▁"), so the dummy prefix is lost.
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(ours / "tokenizer.json")).encode("Hello world").ids == [
        1, 15043, 3186]  # sentencepiece's ids
    assert Tokenizer.from_file(str(peer / "tokenizer.json")).encode("Hello world").ids == [
        1, 10994, 3186]
