"""One error hierarchy: every failure a user can cause is a StreamconvError.

The CLI prints a StreamconvError as one line and exits 1; anything else is a bug and gets a
traceback. Messages say what is wrong, the exact value or path, and what to do about it.
"""

from __future__ import annotations


class StreamconvError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""


class CheckpointError(StreamconvError):
    """A consolidated.NN.pth file is missing, unreadable, unsafe or inconsistent."""


class ParamsError(StreamconvError):
    """params.json is missing, malformed or disagrees with the tensor shapes."""


class BudgetError(StreamconvError):
    """--max-ram is too small for the smallest unit of work."""


class TokenizerError(StreamconvError):
    """tokenizer.model is missing or cannot be read."""


class OutputError(StreamconvError):
    """The output folder cannot be written (exists, not empty, disk full, nested in the input)."""


class Interrupted(StreamconvError):
    """The user pressed Ctrl-C; the CLI exits 130."""


class LifecycleError(StreamconvError):
    """A step of the output folder's lifecycle was called out of order: a bug in the caller."""
