#!/usr/bin/env bash
# Create <repo>/.venv-meta: Meta's own Llama 4 reference code (llama-models 0.3.0 + fairscale
# 0.4.13) for tests/llama4_reference.py, the oracle that runs Meta's model on Meta's files.
# tests/test_llama4_reference.py skips when this venv is missing (or STREAMCONV_META_PYTHON
# points elsewhere).
#
# torch is installed FIRST and pinned: llama-models and fairscale require a plain `torch`, which
# could otherwise resolve to a multi-GB CUDA build; torch==2.13.0 is the same CPU build as
# .venv's (see scripts/setup.sh for pointing pip at CPU wheels). The pin is repeated on every
# later install so the resolver cannot replace it.
#
# Llama 3.2 Vision (tests/vision_reference_runner.py) uses the same venv. Its
# llama3/multimodal/model.py imports torchvision, but only for the PIL image transform, which the
# oracle does not run (it feeds normalized tiles), so torchvision is deliberately NOT installed:
# the only torchvision 0.28.0 (the torch 2.13 pair) these indexes offer is PyPI's
# manylinux_2_28 wheel, whose _C.so links libtorch_cuda.so / libc10_cuda.so; beside the CPU torch
# `import torchvision` fails ("operator torchvision::nms does not exist"), and the CUDA torch it
# needs is what this script must never pull. The runner stubs the import instead (its docstring).
#
# Idempotent: a venv that already imports the pinned versions is left alone. Exits 0 with a
# warning when the venv cannot be built (the tests that need it then skip and say why).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv-meta"
PY="$VENV/bin/python"
TORCH_VERSION="2.13.0"
LLAMA_MODELS_VERSION="0.3.0"
FAIRSCALE_VERSION="0.4.13"

is_complete() {
    [ -x "$PY" ] && "$PY" - "$TORCH_VERSION" "$LLAMA_MODELS_VERSION" <<'PYEOF' 2>/dev/null
import importlib.metadata as md
import sys

import fairscale  # noqa: F401
import llama_models.llama4.model  # noqa: F401
import torch

torch_ok = torch.__version__.split("+")[0] == sys.argv[1]
sys.exit(0 if torch_ok and md.version("llama-models") == sys.argv[2] else 1)
PYEOF
}

warn() {
    echo "warning: $VENV could not be built ($1); the Llama 4 reference tests will skip" >&2
    exit 0
}

if is_complete; then
    echo "meta venv already complete: $VENV"
    exit 0
fi

start=$(date +%s)
[ -x "$PY" ] || python3 -m venv "$VENV" || warn "python3 -m venv failed"
"$PY" -m pip install --quiet "torch==$TORCH_VERSION" || warn "torch==$TORCH_VERSION"
"$PY" -m pip install --quiet "torch==$TORCH_VERSION" "fairscale==$FAIRSCALE_VERSION" \
    "llama-models==$LLAMA_MODELS_VERSION" || warn "llama-models / fairscale install failed"

is_complete || warn "built, but it does not import torch $TORCH_VERSION, fairscale and \
llama_models $LLAMA_MODELS_VERSION; delete it and run $0 again"
echo "meta venv ready: $VENV ($(( $(date +%s) - start )) s)"
