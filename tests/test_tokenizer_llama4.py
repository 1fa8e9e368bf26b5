"""Llama 4's tiktoken tokenizer (200,000 ranks, O200K regex, 2,048 specials) converted to the
Hugging Face files.

Oracles: tiktoken in this venv, built from the same ranks with Meta's regex and specials, for a
synthetic Llama-4-style file (always runs) and for Meta's real file; and, for the real file,
llama-models 0.3.0's own ``llama4.tokenizer.Tokenizer`` run in .venv-meta
(scripts/make_meta_env.sh) in one subprocess. Meta's ``encode`` reads special-token text as
text unless ``allowed_special="all"``; a Hugging Face tokenizer always matches its added tokens,
so the oracles encode with ``allowed_special="all"`` and BOS first.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from llama4_reference import meta_package_file, meta_python
from test_tokenizer_tiktoken import _oracle
from tokenizer_corpus import SAMPLES, fuzz_samples
from tokenizers import Tokenizer
from transformers import AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase

from fixtures.synthetic_tokenizer import write_synthetic_tokenizer
from streamconv.model.families.registry import describe
from streamconv.model.family import Family
from streamconv.tokenizer.chat_templates import chat_template
from streamconv.tokenizer.files import tokenizer_vocab_size, write_tokenizer_files
from streamconv.tokenizer.tiktoken_specials import LLAMA4_SCHEME, special_token_names

REPO = Path(__file__).resolve().parents[1]
META_PYTHON = meta_python()  # .venv-meta's, or $STREAMCONV_META_PYTHON


_FOUND = meta_package_file("llama_models/llama4/tokenizer.model")
LLAMA4_MODEL = _FOUND or REPO / ".venv-meta" / "llama_models" / "llama4" / "tokenizer.model"
# Both Meta's tokenizer file and its Tokenizer class come from .venv-meta: oracle tests, which
# skip locally and fail under CI when it is missing (conftest.oracle_unavailable).
needs_real = needs_meta = pytest.mark.oracle(
    None if _FOUND else "no llama_models/llama4/tokenizer.model in .venv-meta: run "
    "scripts/make_meta_env.sh (llama-models 0.3.0) or set STREAMCONV_META_PYTHON")

# Where Llama 4 differs from LLaMA 3: its specials in text, names one generation or one
# converter has and the other lacks, and what the O200K regex splits otherwise.
LLAMA4_SAMPLES: list[tuple[str, str]] = [
    ("llama4-turns", "<|begin_of_text|><|header_start|>user<|header_end|>\n\nHi<|eot|>"
                     "<|header_start|>assistant<|header_end|>\n\n<|python_start|>x<|python_end|>"
                     "<|eom|>"),
    ("llama4-reasoning", "a<|reasoning_thinking_start|>hmm<|reasoning_thinking_end|>b "
                         "<|reasoning_reserved_special_token_7|>"),
    ("llama4-block-edges", "<|fim_suffix|><|text_post_train_reserved_special_token_68|>"
                           "<|image_start|><|patch|><|vision_reserved_special_token_1047|>"
                           "<|reserved_special_token_0|> <|reserved_special_token_903|>"),
    ("llama4-lookalikes", "<|finetune_right_pad_id|> <|finetune_right_pad|> <|eot_id|> "
                          "<|reserved_special_token_904|> <|header_start| >"),
    ("o200k-contractions", "It's THEY'RE we'LL Don'T o'clock rock'n'roll 's"),
    ("o200k-slash", "a/b ../path// http://x.y/z?q=1 ;/\n/ <//> ///"),
    ("o200k-case-and-marks", "CamelCaseWord HTTPServer ǅungla ÉCOLE naïve e\u0301e\u0301 "
                             "ΑθήναΑθήνα"),
]
CORPUS = SAMPLES + LLAMA4_SAMPLES + fuzz_samples(300, seed=12)


@dataclass(frozen=True)
class Converted:
    model_path: Path
    out_dir: Path
    instruct: bool
    enc: tiktoken.Encoding
    bos_id: int
    fast: Tokenizer
    auto: PreTrainedTokenizerBase


def _synthetic(tmp: Path) -> Path:
    path = tmp / "tokenizer.model"
    write_synthetic_tokenizer(path, kind="tiktoken", vocab_size=3000, seed=4, style="llama4")
    return path


MODELS: dict[str, tuple[Callable[[Path], Path], bool]] = {
    "synthetic-3000": (_synthetic, False),
    "synthetic-3000-instruct": (_synthetic, True),
    "real": (lambda tmp: LLAMA4_MODEL, False),
    "real-instruct": (lambda tmp: LLAMA4_MODEL, True),
}


def _params(names: list[str]) -> list[Any]:
    return [pytest.param(n, marks=needs_real if n.startswith("real") else ()) for n in names]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Converted]]:
    cache: dict[str, Converted] = {}

    def get(name: str) -> Converted:
        if name not in cache:
            make, instruct = MODELS[name]
            tmp = tmp_path_factory.mktemp(name)
            path, out = make(tmp), tmp / "hf"
            out.mkdir()
            write_tokenizer_files(path, out, family=Family.LLAMA4, instruct=instruct,
                                  model_max_length=262144)
            enc, bos_id = _oracle(path, Family.LLAMA4)
            cache[name] = Converted(path, out, instruct, enc, bos_id,
                                    Tokenizer.from_file(str(out / "tokenizer.json")),
                                    AutoTokenizer.from_pretrained(out))
        return cache[name]

    yield get


@pytest.mark.parametrize("name", _params(list(MODELS)))
def test_ids_match_tiktoken(converted: Callable[[str], Converted], name: str) -> None:
    conv = converted(name)
    bad = []
    for sample, text in CORPUS:
        want = [conv.bos_id, *conv.enc.encode(text, allowed_special="all")]
        fast, auto = conv.fast.encode(text).ids, conv.auto.encode(text)
        if fast != want or auto != want:
            bad.append(f"{sample} {text!r}: tiktoken {want}, tokenizers {fast}, auto {auto}")
    assert not bad, f"{len(bad)} of {len(CORPUS)} samples differ:\n" + "\n".join(bad[:10])


@pytest.mark.parametrize("name", _params(["synthetic-3000", "real"]))
def test_decode_round_trips(converted: Callable[[str], Converted], name: str) -> None:
    conv = converted(name)
    bad = []
    for sample, text in CORPUS:
        ids = conv.enc.encode(text, allowed_special="all")
        fast = conv.fast.decode(ids, skip_special_tokens=False)
        auto = conv.auto.decode(ids, skip_special_tokens=False)
        if not fast == auto == text:
            bad.append(f"{sample}: {text!r} -> tokenizers {fast!r}, auto {auto!r}")
    assert not bad, "\n".join(bad[:10])


def test_special_ids_follow_the_ranks(converted: Callable[[str], Converted]) -> None:
    # A 3000-rank file: BOS at 3000, the 2,048 specials up to 5047, as Meta's code numbers them.
    conv = converted("synthetic-3000")
    assert tokenizer_vocab_size(conv.model_path, family=Family.LLAMA4) == 3000 + 2048
    assert conv.bos_id == 3000 and len(conv.auto) == 5048
    assert conv.fast.id_to_token(3000 + 18) == "<|finetune_right_pad|>"
    assert conv.fast.id_to_token(5047) == "<|reserved_special_token_903|>"
    assert conv.auto.pad_token_id == 3018


def test_special_token_names() -> None:
    # llama-models 0.3.0 llama4/tokenizer.py, ids as docs/llama4_facts.md section 5 lists them.
    names = special_token_names(Family.LLAMA4)
    assert len(names) == len(set(names)) == 2048
    by_id = {200000 + i: name for i, name in enumerate(names)}
    assert by_id[200000] == "<|begin_of_text|>" and by_id[200001] == "<|end_of_text|>"
    assert [by_id[i] for i in (200005, 200006, 200007, 200008, 200018)] == [
        "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|finetune_right_pad|>"]
    assert (by_id[200080], by_id[200090], by_id[200092]) == (
        "<|image_start|>", "<|image|>", "<|patch|>")
    assert by_id[201133] == "<|vision_reserved_special_token_1047|>"
    assert by_id[201142] == "<|reasoning_thinking_start|>"
    assert by_id[201144] == "<|reserved_special_token_0|>"
    assert by_id[202047] == "<|reserved_special_token_903|>"


def test_config_base_vs_instruct(converted: Callable[[str], Converted]) -> None:
    cases = (("synthetic-3000", "<|end_of_text|>"), ("synthetic-3000-instruct", "<|eot|>"))
    for name, eos in cases:
        conv = converted(name)
        config = json.loads((conv.out_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        special = json.loads((conv.out_dir / "special_tokens_map.json").read_text(encoding="utf-8"))
        assert (config["bos_token"], config["eos_token"]) == ("<|begin_of_text|>", eos)
        assert config["pad_token"] == "<|finetune_right_pad|>"
        assert {k: v["content"] for k, v in special.items()} == {
            "bos_token": "<|begin_of_text|>", "eos_token": eos,
            "pad_token": "<|finetune_right_pad|>"}
        assert config["model_max_length"] == 262144
        assert ("chat_template" in config) == conv.instruct
        assert conv.auto.eos_token == eos and conv.auto.pad_token == "<|finetune_right_pad|>"


def test_chat_template_is_transformers_text() -> None:
    # The copy in streamconv equals the text transformers ships (Llama4Processor's default, the
    # template its Llama 4 converter writes).
    from transformers.models.llama4 import processing_llama4

    assert processing_llama4.chat_template == chat_template(Family.LLAMA4, instruct=True)


def _meta_prompt(messages: list[dict[str, str]]) -> str:
    """llama-models llama4/chat_format.py ``encode_dialog_prompt`` as text: BOS, then per message
    ``<|header_start|>{role}<|header_end|>\\n\\n{content}<|eot|>`` (content as given), then the
    assistant header. Its module needs torchvision, which .venv-meta lacks, so the rule is
    restated here and the ids checked against Meta's Tokenizer on this text."""
    turns = "".join(f"<|header_start|>{m['role']}<|header_end|>\n\n{m['content']}<|eot|>"
                    for m in messages)
    return f"<|begin_of_text|>{turns}<|header_start|>assistant<|header_end|>\n\n"


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! It's 4/4."},
    {"role": "user", "content": "What is 2+2?\n"},
]


def test_chat_template_renders_metas_prompt(converted: Callable[[str], Converted]) -> None:
    conv = converted("synthetic-3000-instruct")
    text = conv.auto.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert text == _meta_prompt(CONVERSATION)
    encoded = conv.auto.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True)
    ids = encoded["input_ids"] if isinstance(encoded, BatchEncoding) else encoded
    assert ids == conv.enc.encode(_meta_prompt(CONVERSATION), allowed_special="all")
    # The template trims the system message only, as Meta's prompt guide shows it.
    padded = [{"role": "system", "content": "  Be brief. "}, *CONVERSATION[1:]]
    assert conv.auto.apply_chat_template(padded, tokenize=False,
                                         add_generation_prompt=True) == text


# Runs in .venv-meta: Meta's Tokenizer on every text given on stdin, and its special tokens.
_META_CODE = """
import json, sys
from pathlib import Path
from llama_models.llama4.tokenizer import Tokenizer
tok = Tokenizer(Path(sys.argv[1]))
texts = json.load(sys.stdin)
json.dump({"ids": [tok.encode(t, bos=True, eos=False, allowed_special="all") for t in texts],
           "plain": [tok.encode(t, bos=True, eos=False) for t in texts],
           "specials": tok.special_tokens, "stop": tok.stop_tokens, "pad": tok.pad_id,
           "bos": tok.bos_id, "eos": tok.eos_id, "eot": tok.eot_id, "n_words": tok.n_words,
           "decoded": [tok.decode(tok.encode(t, bos=False, eos=False, allowed_special="all"))
                       for t in texts]},
          sys.stdout)
"""


@pytest.fixture(scope="module")
def meta_tokenizer() -> dict[str, Any]:
    """llama-models' answers for CORPUS plus the chat prompt, in one process (~5 s)."""
    texts = [text for _, text in CORPUS] + [_meta_prompt(CONVERSATION)]
    done = subprocess.run([str(META_PYTHON), "-c", _META_CODE, str(LLAMA4_MODEL)],
                          input=json.dumps(texts), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


@needs_meta
def test_ids_match_llama_models(converted: Callable[[str], Converted],
                                meta_tokenizer: dict[str, Any]) -> None:
    conv = converted("real-instruct")
    texts = [text for _, text in CORPUS] + [_meta_prompt(CONVERSATION)]
    bad = []
    for text, want, decoded in zip(texts, meta_tokenizer["ids"], meta_tokenizer["decoded"],
                                   strict=True):
        got = conv.fast.encode(text).ids
        if got != want or conv.auto.encode(text) != want or decoded != text:
            bad.append(f"{text!r}: llama-models {want}, ours {got}")
        if conv.fast.decode(want[1:], skip_special_tokens=False) != text:
            bad.append(f"{text!r} decodes otherwise")
    assert not bad, f"{len(bad)} differ:\n" + "\n".join(bad[:10])
    # Without allowed_special, Meta reads special-token text as plain text (ours never does):
    # the samples with specials are the ones that differ, and only they.
    differ = {t for t, a, b in zip(texts, meta_tokenizer["ids"], meta_tokenizer["plain"],
                                   strict=True) if a != b}
    assert differ == {t for t in texts if any(s in t for s in meta_tokenizer["specials"])}


@needs_meta
def test_specials_are_llama_models(meta_tokenizer: dict[str, Any]) -> None:
    want = meta_tokenizer["specials"]
    assert list(want) == list(LLAMA4_SCHEME.special_names)
    assert list(want.values()) == list(range(200000, 202048))
    assert meta_tokenizer["n_words"] == 202048
    # bos / eos / pad / end of turn and the Instruct stop list, with the published configs' ids
    # (docs/llama4_facts.md section 4) and streamconv's family facts.
    assert (meta_tokenizer["bos"], meta_tokenizer["eos"], meta_tokenizer["pad"]) == (
        200000, 200001, 200018)
    assert meta_tokenizer["eot"] == 200008
    assert meta_tokenizer["stop"] == [200001, 200007, 200008] == list(
        describe(Family.LLAMA4).facts.instruct_eos or ())


@needs_real
def test_real_file_facts(converted: Callable[[str], Converted]) -> None:
    base, inst = converted("real"), converted("real-instruct")
    assert tokenizer_vocab_size(LLAMA4_MODEL, family=Family.LLAMA4) == 202048
    assert base.fast.encode("Hello world").ids == [200000, 19873, 3817]  # llama4_facts.md §5
    assert len(base.auto) == 202048
    assert (base.auto.bos_token_id, base.auto.eos_token_id, base.auto.pad_token_id) == (
        200000, 200001, 200018)
    assert inst.auto.eos_token_id == 200008
    assert base.fast.encode("<|patch|>", add_special_tokens=False).ids == [200092]

