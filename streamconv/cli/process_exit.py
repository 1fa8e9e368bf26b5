"""The command's process: Ctrl-C from its first instant, a few settings before the first import
of torch, and a fast exit.

All of it is for the `streamconv` command only (tests call cli.main.main in their own process):
- Ctrl-C: the handler is installed before the first heavy import (rich, then torch); until
  the conversion's first write it ends the process with one line and exit 130, never a
  traceback (a Ctrl-C in the first tens of milliseconds used to print one and die by SIGINT).
  The phases after that are in system/interrupts.py.
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
# exists, so its own import must be instant.
import os
import sys
from typing import NoReturn


def run_command() -> NoReturn:
    """Entry point of `streamconv` and `python -m streamconv`."""
    try:
        from streamconv.system.interrupts import install_command_handler

        install_command_handler()
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        from streamconv.cli.main import main

        code = main()
    except KeyboardInterrupt:  # before the handler was in place
        sys.stderr.write("interrupted: nothing was written\n")
        code = 130
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more to say
            code = code or 1
    os._exit(code)
