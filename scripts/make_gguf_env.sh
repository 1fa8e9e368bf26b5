#!/usr/bin/env bash
# Create <repo>/.venv-gguf: llama.cpp itself, the oracle of the GGUF tests. llama-cpp-python's
# sdist vendors llama.cpp (its converter convert_hf_to_gguf.py, its conversion/ package and
# gguf-py); it is built from source here with GGML_NATIVE=OFF, because -march=native binaries
# died with SIGILL on q8_0 models on this project's VMs. The unpacked sdist is kept in
# .venv-gguf/src so the tests run the very converter whose library they load.
#
# torch is installed first and pinned to the CPU wheel (a plain `torch` requirement would pull a
# multi-GB CUDA build); transformers is the version llama.cpp's converter requirements name.
#
# Idempotent: a venv that already loads llama_cpp and has the converter is left alone. Exits 0
# with a warning when the venv cannot be built (the tests that need it then skip and say why;
# under CI=true they fail instead).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv-gguf"
PY="$VENV/bin/python"
TORCH_VERSION="2.13.0"
LLAMA_CPP_PYTHON_VERSION="0.3.36"
TRANSFORMERS_VERSION="4.57.6"
SRC="$VENV/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"

is_complete() {
    [ -x "$PY" ] && [ -f "$SRC/vendor/llama.cpp/convert_hf_to_gguf.py" ] && "$PY" - <<'PYEOF' 2>/dev/null
import gguf  # noqa: F401
import llama_cpp  # noqa: F401
import sentencepiece  # noqa: F401
import transformers  # noqa: F401
PYEOF
}

warn() {
    echo "warning: $VENV could not be built ($1); the GGUF oracle tests will skip" >&2
    exit 0
}

if is_complete; then
    echo "gguf venv already complete: $VENV"
    exit 0
fi

start=$(date +%s)
[ -x "$PY" ] || python3 -m venv "$VENV" || warn "python3 -m venv failed"
"$PY" -m pip install --quiet --upgrade pip || warn "pip upgrade"
"$PY" -m pip install --quiet "torch==$TORCH_VERSION" || warn "torch==$TORCH_VERSION"
"$PY" -m pip install --quiet "torch==$TORCH_VERSION" "transformers==$TRANSFORMERS_VERSION" \
    sentencepiece "protobuf>=4.21,<5" tiktoken numpy scikit-build-core cmake ninja \
    || warn "converter requirements"
mkdir -p "$VENV/src"
if [ ! -d "$SRC" ]; then
    "$PY" -m pip download --quiet --no-deps --no-binary :all: \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$VENV/src" || warn "sdist download"
    tar xzf "$VENV/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$VENV/src" \
        || warn "sdist unpack"
fi
# gguf-py exactly as the vendored converter expects it (0.19.0).
"$PY" -m pip install --quiet "$SRC/vendor/llama.cpp/gguf-py" || warn "gguf-py"
# Built from the sdist archive rather than the unpacked folder: pip keeps a wheel built from a
# named archive in its wheel cache (never one built from a local folder), so a venv rebuilt at
# the same path installs in seconds instead of compiling llama.cpp again (~29 min on 2 busy
# cores). The cache does not key on CMAKE_ARGS: clear it (pip cache remove llama_cpp_python)
# after changing them.
SDIST="$VENV/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
[ -f "$SDIST" ] || SDIST="$SRC"
CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PY" -m pip install --quiet --no-build-isolation "$SDIST" || warn "llama-cpp-python build"

is_complete || warn "built, but it does not import llama_cpp, gguf and transformers"
echo "gguf venv ready: $VENV ($(( $(date +%s) - start )) s)"
