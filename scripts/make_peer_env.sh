#!/usr/bin/env bash
# Create <repo>/.venv-peer: transformers 4.47.1, the last release that ships
# transformers/models/llama/convert_llama_weights_to_hf.py. tests/test_transformers_script.py
# runs that script there and compares its output with streamconv's bit for bit; it skips when
# this venv is missing (or STREAMCONV_PEER_PYTHON points elsewhere).
#
# torch is installed first and pinned: a plain `torch` requirement pulled in by transformers or
# accelerate could resolve to a multi-GB CUDA build; torch==2.13.0 is the same CPU build as
# .venv's (see scripts/setup.sh for pointing pip at CPU wheels).
#
# Idempotent: a venv that already imports the pinned versions is left alone.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv-peer"
PY="$VENV/bin/python"
TORCH_VERSION="2.13.0"
TRANSFORMERS_VERSION="4.47.1"

is_complete() {
    [ -x "$PY" ] && "$PY" - "$TORCH_VERSION" "$TRANSFORMERS_VERSION" <<'EOF' 2>/dev/null
import sys

import accelerate, blobfile, google.protobuf, sentencepiece, tiktoken  # noqa: F401
import torch, transformers

torch_ok = torch.__version__.split("+")[0] == sys.argv[1]
sys.exit(0 if torch_ok and transformers.__version__ == sys.argv[2] else 1)
EOF
}

if is_complete; then
    echo "peer venv already complete: $VENV"
    exit 0
fi

[ -x "$PY" ] || python3 -m venv "$VENV"
"$PY" -m pip install --quiet "torch==$TORCH_VERSION"
"$PY" -m pip install --quiet "transformers==$TRANSFORMERS_VERSION" sentencepiece tiktoken \
    blobfile protobuf accelerate "torch==$TORCH_VERSION"

if ! is_complete; then
    echo "error: $VENV was built but does not import torch $TORCH_VERSION and" \
        "transformers $TRANSFORMERS_VERSION; delete it and run $0 again" >&2
    exit 1
fi
echo "peer venv ready: $VENV"
