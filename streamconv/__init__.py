"""streamconv: Meta LLaMA checkpoints -> Hugging Face safetensors within a RAM budget.

The public names load on first use (PEP 562): importing the package, or its command line, must
not import torch, which takes over a second; the command line starts reading the checkpoint
while torch loads (see prefetch.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamconv.errors import (
    BudgetError,
    CheckpointError,
    Interrupted,
    OutputError,
    ParamsError,
    StreamconvError,
    TokenizerError,
)

if TYPE_CHECKING:
    from streamconv.pipeline.conversion import ConvertOptions, Report, convert, prepare

__all__ = [
    "BudgetError", "CheckpointError", "ConvertOptions", "Interrupted", "OutputError",
    "ParamsError", "Report", "StreamconvError", "TokenizerError", "convert", "prepare",
]
__version__ = "0.1.0"  # the one place: pyproject.toml reads it (setuptools dynamic)
_FROM_CONVERT = ("ConvertOptions", "Report", "convert", "prepare")


def __getattr__(name: str) -> Any:
    if name not in _FROM_CONVERT:
        raise AttributeError(f"module 'streamconv' has no attribute {name!r}")
    from streamconv.pipeline import conversion

    return getattr(conversion, name)
