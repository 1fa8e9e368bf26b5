"""The command's process: a few settings before the first import of torch, and a fast exit.

Both are for the `streamconv` command only (tests call cli.main.main in their own process):
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

import os
import sys
from typing import NoReturn


def run_command() -> NoReturn:
    """Entry point of `streamconv` and `python -m streamconv`."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from streamconv.cli.main import main

    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more to say
            code = code or 1
    os._exit(code)
