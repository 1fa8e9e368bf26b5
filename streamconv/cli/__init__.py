"""Command line: arguments, progress, plan and verify reports."""

from __future__ import annotations

from streamconv.cli.main import main

__all__ = ["main"]
