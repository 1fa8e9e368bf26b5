"""Llama 3.2 Vision's tokenizer files against Meta's own tokenizer (issue 20, "the tokenizer
ids").

Oracle: llama-models 0.3.0's ``llama3.tokenizer.Tokenizer`` with the tokenizer.model it ships,
run in .venv-meta (the Vision releases carry the LLaMA 3 ranks file). Meta names 12 specials,
``<|image|>`` the 12th (128011), and its chat format replaces 128011 with 128256 before the
model sees the ids; transformers' converter appends ``<|image|>`` at 128256 and numbers the
reserved tokens from 2 at 128011 (docs/llama32_vision_facts.md section 6). So ids agree on
text and on the named specials; on ``<|image|>`` after Meta's own replacement; and the reserved
tokens carry names shifted by one.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from llama4_reference import meta_package_file, meta_python
from tokenizer_corpus import SAMPLES, fuzz_samples
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from streamconv.model.family import Family
from streamconv.tokenizer.files import tokenizer_vocab_size, write_tokenizer_files

META_PYTHON = meta_python()


MODEL = meta_package_file("llama_models/llama3/tokenizer.model")
pytestmark = pytest.mark.oracle(
    None if MODEL else "no llama_models/llama3/tokenizer.model in .venv-meta: run "
    "scripts/make_meta_env.sh (llama-models 0.3.0) or set STREAMCONV_META_PYTHON")

# The Instruct prompt with an image (docs/llama32_vision_facts.md section 5), after the bos
# both tokenizers add.
IMAGE_PROMPT = ("<|start_header_id|>user<|end_header_id|>\n\n<|image|>What does the image "
                "show?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
# Text and the specials both tokenizers name alike (ids 128000-128010).
TEXTS = [text for _, text in SAMPLES + fuzz_samples(200, seed=32)
         if "<|reserved_special_token_" not in text and "<|image|>" not in text]

_META_CODE = """
import json, sys
from pathlib import Path
from llama_models.llama3.tokenizer import Tokenizer
tok = Tokenizer(Path(sys.argv[1]))
texts = json.load(sys.stdin)
json.dump({"ids": [tok.encode(t, bos=True, eos=False, allowed_special="all") for t in texts],
           "specials": tok.special_tokens, "n_words": tok.n_words}, sys.stdout)
"""


@pytest.fixture(scope="module")
def meta() -> dict[str, Any]:
    assert META_PYTHON is not None and MODEL is not None
    done = subprocess.run([str(META_PYTHON), "-c", _META_CODE, str(MODEL)],
                          input=json.dumps([*TEXTS, IMAGE_PROMPT]), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


@pytest.fixture(scope="module", params=[False, True], ids=["base", "instruct"])
def ours(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[Path, bool]:
    assert MODEL is not None
    out = tmp_path_factory.mktemp("hf")
    write_tokenizer_files(MODEL, out, family=Family.LLAMA3_2_VISION, instruct=request.param,
                          model_max_length=131072)
    return out, request.param


def test_ids_match_metas_tokenizer(meta: dict[str, Any], ours: tuple[Path, bool]) -> None:
    out, _ = ours
    fast = Tokenizer.from_file(str(out / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(out)
    bad = [f"{text!r}: Meta {want}, ours {fast.encode(text).ids}"
           for text, want in zip(TEXTS, meta["ids"], strict=False)
           if fast.encode(text).ids != want or auto.encode(text) != want]
    assert not bad, f"{len(bad)} of {len(TEXTS)} differ:\n" + "\n".join(bad[:10])
    # The Instruct prompt with an image: Meta's chat format puts 128256 where its tokenizer
    # says 128011 (ChatFormat._model_input_from_tokens_images), which is our id for <|image|>.
    meta_prompt = [128256 if i == 128011 else i for i in meta["ids"][-1]]
    assert 128011 in meta["ids"][-1]
    assert fast.encode(IMAGE_PROMPT).ids == meta_prompt == auto.encode(IMAGE_PROMPT)


def test_specials_and_vocabulary(meta: dict[str, Any], ours: tuple[Path, bool]) -> None:
    out, instruct = ours
    auto = AutoTokenizer.from_pretrained(out)
    specials = meta["specials"]
    assert MODEL is not None
    assert meta["n_words"] == 128256 == tokenizer_vocab_size(MODEL,
                                                             family=Family.LLAMA3_2_VISION)
    assert len(auto) == 128257 and auto.convert_tokens_to_ids("<|image|>") == 128256
    assert specials["<|image|>"] == 128011
    by_id = {i: name for name, i in specials.items()}
    for i in range(128000, 128011):  # named alike
        assert auto.convert_ids_to_tokens(i) == by_id[i]
    for i in range(128012, 128256):  # Meta's reserved_k is ours reserved_(k+1), one id lower
        k = int(by_id[i].removeprefix("<|reserved_special_token_").removesuffix("|>"))
        assert auto.convert_ids_to_tokens(i - 1) == f"<|reserved_special_token_{k}|>"
    assert auto.convert_ids_to_tokens(128255) == "<|reserved_special_token_246|>"
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["pad_token"] == "<|finetune_right_pad_id|>"
    assert auto.eos_token == ("<|eot_id|>" if instruct else "<|end_of_text|>")
