"""Command line: arguments, progress, plan and verify reports.

`main` loads on first use (PEP 562): the `streamconv` command imports this package before its
Ctrl-C handler is in place (process_exit.py), so importing it must cost nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamconv.cli.main import main

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    if name != "main":
        raise AttributeError(f"module 'streamconv.cli' has no attribute {name!r}")
    from streamconv.cli.main import main

    return main
