"""Runs inside the gguf venv (tests/gguf_oracle.py): llama.cpp, through llama-cpp-python, on one
GGUF file. argv[1] is a JSON job; the answer is one JSON line on stdout (logits go to a .npy
file in the job's scratch folder, as JSON would be slow for 128k-wide rows).

Ops: "tokenize" (texts -> ids, vocab only), "logits" (ids -> every position's logits),
"greedy" (prompt ids -> n argmax continuations, one token at a time).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_GGML_TYPE_F32 = 0


def _model(path: str, *, vocab_only: bool, n_ctx: int = 512) -> Any:
    from llama_cpp import Llama

    # An f32 KV cache (llama.cpp's default is f16, which alone moves logits by ~1e-3): the
    # tests compare with transformers' f32 forward pass.
    return Llama(model_path=path, vocab_only=vocab_only, n_ctx=n_ctx, n_batch=n_ctx,
                 logits_all=not vocab_only, n_threads=1, seed=0, verbose=False,
                 type_k=_GGML_TYPE_F32, type_v=_GGML_TYPE_F32, flash_attn=False)


def main() -> None:
    import numpy as np

    job = json.loads(sys.argv[1])
    op = job["op"]
    if op == "tokenize":
        llm = _model(job["model"], vocab_only=True)
        answer: dict[str, Any] = {"tokens": [
            llm.tokenize(text.encode("utf-8"), add_bos=job["add_bos"], special=job["special"])
            for text in job["texts"]]}
    elif op == "logits":
        tokens = job["tokens"]
        llm = _model(job["model"], vocab_only=False, n_ctx=max(64, len(tokens)))
        llm.eval(tokens)
        logits = np.asarray(llm.scores[: len(tokens)], dtype=np.float32)
        path = os.path.join(job["scratch"], "logits.npy")
        np.save(path, logits)
        answer = {"logits_file": path}
    elif op == "greedy":
        prompt, n = job["tokens"], job["n"]
        llm = _model(job["model"], vocab_only=False, n_ctx=max(64, len(prompt) + n))
        llm.eval(prompt)
        out: list[int] = []
        for _ in range(n):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(token)
            llm.eval([token])
        answer = {"tokens": out}
    else:
        raise SystemExit(f"unknown op {op!r}")
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
