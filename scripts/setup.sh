#!/usr/bin/env bash
# Create .venv with streamconv and its test extras. torch is installed first and pinned
# (torch==2.13.0): an unpinned `torch` pulled in by a later install could resolve to a multi-GB
# CUDA build. Where pip's index serves CUDA wheels by default, point it at the CPU ones first
# (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
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
