#!/usr/bin/env bash
# The one command for issue 4's benchmarks:
#   bash benchmarks/run.sh [options of python -m benchmarks.run]   (--help lists them)
#   bash benchmarks/run.sh --plan-maverick [--layers N] [--map-shared]   (plan_maverick.py)
# Sets up .venv if missing, adds matplotlib (benchmark-only), then runs the whole session; the
# peer venv (.venv-peer) is built by scripts/make_peer_env.sh from inside the session.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
[ -x .venv/bin/python ] || bash scripts/setup.sh
.venv/bin/python -c "import matplotlib" 2>/dev/null \
    || .venv/bin/python -m pip install --quiet -r benchmarks/requirements.txt
if [ "${1:-}" = "--plan-maverick" ]; then
    shift
    exec .venv/bin/python -m benchmarks.plan_maverick "$@"
fi
exec .venv/bin/python -m benchmarks.run "$@"
