"""Ctrl-C held back while the output folder is published.

Once publishing starts, the model is a few renames and fsyncs from complete. A Ctrl-C there
used to abandon it half-moved and say "nothing was published; run again with --resume", while
OUT was in fact complete and --resume then refused it. So publishing always finishes: a Ctrl-C
in that window is noted, and the command exits 0 saying the interrupt came after the model was
complete (README, "When things go wrong").
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class DeferredInterrupt:
    """From start() to stop(), SIGINT is recorded in `received` instead of raised.

    Only the main thread can handle signals; elsewhere (a library caller's worker thread) and
    when SIGINT is ignored, nothing changes.
    """

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received = True

    def start(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN or previous is None or self._previous is not None:
            return
        self._previous = previous
        signal.signal(signal.SIGINT, self._note)

    def stop(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
