"""Chat templates of the instruct models, rendered by transformers on a converted folder.

Each family's template is the one Meta publishes (sources in
streamconv/tokenizer/templates/SOURCES.md and docs/tokenizers.md). Here
`AutoTokenizer.apply_chat_template` renders a two-turn conversation with a system message, and
the text must be the prompt Meta's own code builds for it:

* LLaMA 2 chat and Code Llama Instruct: `chat_completion` in Meta's llama and codellama
  repositories (llama/generation.py): the system message wrapped in
  `<<SYS>>\\n ... \\n<</SYS>>\\n\\n` and put before the first user message, then per exchange
  `encode(f"[INST] {user.strip()} [/INST] {answer.strip()} ", bos=True, eos=True)`, the last user
  message as `encode(f"[INST] {user.strip()} [/INST]", bos=True)`. The ids must be those too.
* LLaMA 3.x: Meta's llama-models ChatFormat (llama3/chat_format.py): BOS, then per message
  `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content stripped}<|eot_id|>`, then the
  assistant header. From 3.1 on the system message starts with the "Cutting Knowledge Date" and
  "Today Date" lines (the 3.1 model card's prompt format).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer, BatchEncoding

from fixtures.synthetic_tokenizer import write_synthetic_tokenizer
from streamconv.model.family import Family
from streamconv.tokenizer import from_tiktoken as tokenizer_tiktoken
from streamconv.tokenizer.files import chat_template, write_tokenizer_files
from streamconv.tokenizer.tiktoken_specials import tiktoken_scheme

SYSTEM, USER_1, ANSWER_1, USER_2 = "  Be brief. ", "Hi there", " Hello! ", "What is 2+2?\n"
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER_1},
    {"role": "assistant", "content": ANSWER_1},
    {"role": "user", "content": USER_2},
]


def _meta_llama2_prompt(bos: str, eos: str) -> str:
    """Meta's llama/generation.py chat_completion, as text (B_SYS, E_SYS, B_INST, E_INST)."""
    first = f"<<SYS>>\n{SYSTEM}\n<</SYS>>\n\n{USER_1}"
    return (f"{bos}[INST] {first.strip()} [/INST] {ANSWER_1.strip()} {eos}"
            f"{bos}[INST] {USER_2.strip()} [/INST]")


def _meta_llama3_prompt(system_prefix: str) -> str:
    """Meta's llama-models ChatFormat.encode_dialog_prompt, as text."""
    def turn(role: str, content: str) -> str:
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"

    return ("<|begin_of_text|>" + turn("system", system_prefix + SYSTEM.strip())
            + turn("user", USER_1.strip()) + turn("assistant", ANSWER_1.strip())
            + turn("user", USER_2.strip()) + "<|start_header_id|>assistant<|end_header_id|>\n\n")


DATE_LINES = "Cutting Knowledge Date: December 2023\nToday Date: {}\n\n"


def _convert(tmp_path: Path, family: Family, *, instruct: bool = True) -> Path:
    path = tmp_path / "tokenizer.model"
    if family.is_llama3:
        write_synthetic_tokenizer(path, kind="tiktoken", vocab_size=2000, seed=3)
    else:
        write_synthetic_tokenizer(path, kind="sentencepiece", vocab_size=600, seed=3)
    out = tmp_path / "hf"
    out.mkdir()
    write_tokenizer_files(path, out, family=family, instruct=instruct, model_max_length=4096)
    return out


def _ids(encoded: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding, transformers 4 a list of ids.
    ids = encoded["input_ids"] if isinstance(encoded, BatchEncoding) else encoded
    assert isinstance(ids, list)
    return ids


@pytest.mark.parametrize("family", [Family.LLAMA2, Family.CODE_LLAMA])
def test_sentencepiece_chat_prompt_is_metas(tmp_path: Path, family: Family) -> None:
    out = _convert(tmp_path, family)
    auto = AutoTokenizer.from_pretrained(out)
    text = auto.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == _meta_llama2_prompt("<s>", "</s>")
    # The ids Meta's code feeds the model: each exchange encoded on its own, BOS and EOS as ids.
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    first = f"<<SYS>>\n{SYSTEM}\n<</SYS>>\n\n{USER_1}".strip()
    want = ([sp.bos_id(), *sp.encode(f"[INST] {first} [/INST] {ANSWER_1.strip()} "), sp.eos_id()]
            + [sp.bos_id(), *sp.encode(f"[INST] {USER_2.strip()} [/INST]")])
    assert _ids(auto.apply_chat_template(CONVERSATION, tokenize=True)) == want
    # Roles must alternate, as in Meta's code (it asserts the same).
    with pytest.raises(Exception, match="alternate"):
        auto.apply_chat_template(CONVERSATION[1:2] * 2, tokenize=False)


@pytest.mark.parametrize(("family", "prefix"), [
    (Family.LLAMA3, ""),
    (Family.LLAMA3_1, DATE_LINES.format("26 Jul 2024")),
    (Family.LLAMA3_2, DATE_LINES.format("26 Jul 2024")),
    (Family.LLAMA3_3, DATE_LINES.format("26 Jul 2024")),
])
def test_llama3_chat_prompt_is_metas(tmp_path: Path, family: Family, prefix: str) -> None:
    out = _convert(tmp_path, family)
    auto = AutoTokenizer.from_pretrained(out)
    # 3.2's template takes today's date unless given one; 3.1's defaults to 26 Jul 2024.
    text = auto.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True,
                                    date_string="26 Jul 2024")
    assert text == _meta_llama3_prompt(prefix)
    ids = _ids(auto.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True,
                                        date_string="26 Jul 2024"))
    assert ids.count(auto.bos_token_id) == 1 and ids[0] == auto.bos_token_id
    assert auto.decode(ids) == text


def test_llama3_1_and_3_2_dates(tmp_path: Path) -> None:
    # 3.1's template has a fixed default date; 3.2's asks transformers for today's.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    llama31 = AutoTokenizer.from_pretrained(_convert(tmp_path / "a", Family.LLAMA3_1))
    llama32 = AutoTokenizer.from_pretrained(_convert(tmp_path / "b", Family.LLAMA3_2))
    user = [{"role": "user", "content": "Hi"}]
    assert "Today Date: 26 Jul 2024\n" in llama31.apply_chat_template(user, tokenize=False)
    before = datetime.now().strftime("%d %b %Y")
    text = llama32.apply_chat_template(user, tokenize=False)
    after = datetime.now().strftime("%d %b %Y")
    assert f"Today Date: {before}\n" in text or f"Today Date: {after}\n" in text


def test_llama3_1_tools_follow_the_published_template(tmp_path: Path) -> None:
    auto = AutoTokenizer.from_pretrained(_convert(tmp_path, Family.LLAMA3_1))
    tool = {"type": "function", "function": {"name": "add", "description": "Add two numbers",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}
    text = auto.apply_chat_template(CONVERSATION[1:2], tools=[tool], tokenize=False,
                                    add_generation_prompt=True)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                           "Environment: ipython\nCutting Knowledge Date: December 2023\n")
    # Tools go into the first user message (tools_in_user_message defaults to true).
    assert ('<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please '
            "respond with a JSON for a function call") in text
    assert json.dumps(tool, indent=4) + "\n\n" + USER_1 + "<|eot_id|>" in text


@pytest.mark.parametrize("family", [Family.LLAMA1, Family.LLAMA2, Family.CODE_LLAMA,
                                    Family.LLAMA3, Family.LLAMA3_1])
def test_base_models_and_llama1_get_no_template(tmp_path: Path, family: Family) -> None:
    config = json.loads((_convert(tmp_path, family, instruct=False)
                         / "tokenizer_config.json").read_text())
    assert "chat_template" not in config
    assert chat_template(Family.LLAMA1, instruct=True) is None  # LLaMA 1 had no chat model


# meta-llama/Llama-3.1-8B-Instruct's tokenizer_config.json: its Git LFS pointer in the
# ModelScope mirror github.com/NoahIsARider/DoNotExpectTooMuchFromTheEndOfTheWorld,
# Meta-Llama-3.1-8B-Instruct/tokenizer_config.json (commit 3d5913f5).
PUBLISHED_3_1_CONFIG_SHA256 = "177c7b61e616fecb84c17ce0591acb92c6c4d60e9ac5ababfb940ff23bbcd424"
PUBLISHED_3_1_CONFIG_BYTES = 55351


def test_llama31_config_is_the_published_file() -> None:
    """Our tokenizer_config.json for LLaMA 3.1 Instruct, serialized as transformers'
    save_pretrained does (indent 2, sorted keys, a final newline) and with the one key we set
    otherwise on purpose put back, is Meta's file byte for byte: chat template included."""
    config = tokenizer_tiktoken.build_tokenizer_config(
        tiktoken_scheme(Family.LLAMA3_1), n_ranks=128000, instruct=True, model_max_length=131072,
        chat_template=chat_template(Family.LLAMA3_1, instruct=True))
    assert config["clean_up_tokenization_spaces"] is False  # docs/tokenizers.md says why
    config["clean_up_tokenization_spaces"] = True
    data = (json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    assert len(data) == PUBLISHED_3_1_CONFIG_BYTES
    assert hashlib.sha256(data).hexdigest() == PUBLISHED_3_1_CONFIG_SHA256
    assert chat_template(Family.LLAMA3_3, instruct=True) == config["chat_template"]


# SHA-256 of each published text as it was when the templates were Python strings (and of the
# files in streamconv/tokenizer/templates/ since): an editor that adds a final newline or
# re-indents a line changes the bytes every converted tokenizer_config.json carries.
TEMPLATE_SHA256 = {
    Family.LLAMA2: "e8d5b5a546d3f19df16a5320c614fab05bdc4edd50e850f1afd947b503ea41cf",
    Family.CODE_LLAMA: "ea2472f29dbd93c3eb696795f6403228fcc4b775518869c771f83fbae5c11dbf",
    Family.LLAMA3: "ba03a121d097859c7b5b9cd03af99aafe95275210d2876f642ad9929a150f122",
    Family.LLAMA3_1: "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65",
    Family.LLAMA3_2: "5816fce10444e03c2e9ee1ef8a4a1ea61ae7e69e438613f3b17b69d0426223a4",
    Family.LLAMA3_3: "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65",
    Family.LLAMA4: "95a231a15c8c976ac511e62c6fdf477ea9e3ca7a87cbb9974e0dd653eccb4563",
}


@pytest.mark.parametrize("family", list(Family), ids=lambda f: f.name)
def test_template_files_are_the_published_bytes(family: Family) -> None:
    text = chat_template(family, instruct=True)
    if family not in TEMPLATE_SHA256:
        assert text is None  # LLaMA 1 has no chat model
        return
    assert text is not None
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == TEMPLATE_SHA256[family]
    assert chat_template(family, instruct=False) is None
