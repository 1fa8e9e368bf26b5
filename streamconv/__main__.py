"""python -m streamconv."""

from __future__ import annotations

from streamconv.cli.process_exit import run_command

run_command()
