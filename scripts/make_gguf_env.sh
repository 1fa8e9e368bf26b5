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
# The build takes 10-30 minutes on 2 cores, so the wheel it makes is kept in a cache outside the
# repository (STREAMCONV_WHEEL_CACHE, default ~/.cache/streamconv/wheels, one folder per build
# flags) and a fresh clone on the same machine installs it in seconds. Only the llama library is
# built (LLAVA_BUILD=OFF): the tests need no multimodal projector, and llama_cpp loads libmtmd
# lazily.
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
BUILD_FLAGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
WHEELS="${STREAMCONV_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamconv/wheels}/native-off-nollava"

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
wheel() { ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl 2>/dev/null | head -1; }
if [ -z "$(wheel)" ]; then
    mkdir -p "$WHEELS" || warn "cannot create $WHEELS"
    echo "building llama.cpp (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION) into $WHEELS; this takes minutes"
    CMAKE_ARGS="$BUILD_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$PY" -m pip wheel --quiet --no-deps --no-build-isolation "$SRC" -w "$WHEELS" \
        || warn "llama-cpp-python build"
fi
"$PY" -m pip install --quiet "$(wheel)" "torch==$TORCH_VERSION" || warn "llama-cpp-python install"

is_complete || warn "built, but it does not import llama_cpp, gguf and transformers"
echo "gguf venv ready: $VENV ($(( $(date +%s) - start )) s)"
