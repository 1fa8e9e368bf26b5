"""python -m streamconv."""

from __future__ import annotations

try:
    from streamconv.cli.process_exit import run_command
except KeyboardInterrupt:  # Ctrl-C in the few milliseconds before its handler exists
    raise SystemExit(130) from None

run_command()
