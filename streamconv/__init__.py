"""streamconv: Meta LLaMA checkpoints -> Hugging Face safetensors within a RAM budget."""

from __future__ import annotations

from .convert import ConvertOptions, Report, convert, prepare
from .errors import (
    BudgetError,
    CheckpointError,
    Interrupted,
    OutputError,
    ParamsError,
    StreamconvError,
    TokenizerError,
)

__all__ = [
    "BudgetError", "CheckpointError", "ConvertOptions", "Interrupted", "OutputError",
    "ParamsError", "Report", "StreamconvError", "TokenizerError", "convert", "prepare",
]
__version__ = "0.1.0"
