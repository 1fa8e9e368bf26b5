"""The command's process: Ctrl-C from its first instant, a few settings before the first import
of torch, and a fast exit.

All of it is for the `streamconv` command only (tests call cli.main.main in their own process):
- Ctrl-C: the handler is installed before the first heavy import (rich, then torch), and a
  KeyboardInterrupt raised while they load ends the process with one line and exit 130, never
  a traceback (a Ctrl-C in the first tens of milliseconds used to print one and die by SIGINT).
  A process started with SIGINT ignored (a background job of a non-interactive shell) keeps
  ignoring it, as Python itself does.
- numpy, which torch imports, starts OpenBLAS threads that spin for a while after start-up
  (0.07 s of CPU per run in `perf record` on the 2-CPU benchmark machine, taken from the
  conversion's own threads); the converter never multiplies matrices, so one thread is enough
  unless the user chose otherwise.
- Interpreter shutdown after a conversion took 0.5 s of CPU and wall time on the 7B benchmark
  (`perf record`: a full garbage collection over torch's objects, torch's operator tables being
  torn down), after the output had been fsynced and published. Nothing needs to run at exit,
  so the process flushes its streams and ends with os._exit.
"""

from __future__ import annotations

# Only modules the interpreter has loaded by now: this module is imported before the handler
# exists, so its own import must be instant (`signal` alone builds three enums: milliseconds).
import os
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from types import FrameType

EXIT_INTERRUPTED = 130


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def install_interrupt_handler() -> None:
    """Ctrl-C raises KeyboardInterrupt from now on, unless the process was started ignoring it."""
    import signal

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupt)


def run_command() -> NoReturn:
    """Entry point of `streamconv` and `python -m streamconv`."""
    try:
        install_interrupt_handler()
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        from streamconv.cli.main import main

        code = main()
    except KeyboardInterrupt:  # main() handles its own; this is one during the imports
        sys.stderr.write("interrupted while starting: nothing was read or written\n")
        code = EXIT_INTERRUPTED
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more to say
            code = code or 1
    os._exit(code)
