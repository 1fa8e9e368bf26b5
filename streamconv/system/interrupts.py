"""Ctrl-C in the streamconv command: an immediate exit before OUT is touched, a clean stop
while the jobs run, and no interrupt at all while a finished model is published.

- Before anything is written (start-up, imports, reading and checking the input, `plan`,
  `verify`) there is nothing to clean up, so the command's handler ends the process at once
  with one line and exit 130 (installed by cli/process_exit.py before its first heavy import).
  Raising KeyboardInterrupt there is not enough: one that lands in a callback of the import
  machinery is printed by Python as "Exception ignored ... Traceback" and then lost.
- From the first write (writing_begins(), called by the conversion) Ctrl-C raises
  KeyboardInterrupt, so the journal is flushed and --resume can continue.
- Once publishing starts, the model is a few renames and fsyncs from complete. A Ctrl-C there
  used to abandon it half-moved and say "nothing was published; run again with --resume",
  while OUT was in fact complete and --resume then refused it. So publishing always finishes:
  DeferredInterrupt notes the Ctrl-C, and the command exits 0 saying the interrupt came after
  the model was complete (README, "When things go wrong").

Library callers of convert() keep their own SIGINT handling: only the command's start-up
handler is ever replaced, and only in the main thread (the one signals are delivered to).
This module imports `signal` only inside functions: the command imports it before its handler
exists, so the import must be instant.
"""

from __future__ import annotations

import os
from types import FrameType
from typing import Any

EXIT_INTERRUPTED = 130
_BEFORE_WRITING = b"interrupted: nothing was written\n"


def exit_before_writing(signum: int, frame: FrameType | None) -> None:
    """The command's SIGINT handler until the first write: one line, exit 130, at once."""
    try:
        os.write(2, _BEFORE_WRITING)
    finally:
        os._exit(EXIT_INTERRUPTED)


def install_command_handler() -> None:
    """For the command only; a process started with SIGINT ignored keeps ignoring it, as Python
    itself does (a background job of a non-interactive shell)."""
    import signal

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, exit_before_writing)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def writing_begins() -> None:
    """Ctrl-C raises KeyboardInterrupt from now on, if the command's start-up handler is set."""
    import signal

    if _in_main_thread() and signal.getsignal(signal.SIGINT) is exit_before_writing:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class DeferredInterrupt:
    """From start() to stop(), SIGINT is recorded in `received` instead of acted on.

    Only the main thread can handle signals; elsewhere, and when SIGINT is ignored, nothing
    changes.
    """

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received = True

    def start(self) -> None:
        import signal

        if not _in_main_thread() or self._previous is not None:
            return
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN or previous is None:
            return
        self._previous = previous
        signal.signal(signal.SIGINT, self._note)

    def stop(self) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
