#!/usr/bin/env bash
# Create .venv with streamconv and its test extras. torch is installed first and pinned to the
# CPU build this machine keeps on disk: an unpinned `torch` would pull a multi-GB CUDA build.
# Idempotent: an up-to-date .venv is left alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STAMP=.venv/.streamconv-installed
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
    exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
touch "$STAMP"
