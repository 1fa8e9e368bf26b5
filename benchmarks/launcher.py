"""A tiny parent for every measured command: spawn, wait4, write what the kernel says, exit.

Why a launcher: on Linux a child's ru_maxrss starts from its parent's RSS high-water mark at
fork/vfork (exec keeps the old mm's hiwater in signal->maxrss), so measuring a converter from
the benchmark process (torch imported, hundreds of MB) would inflate its peak. This file runs as
`python -S -I launcher.py OUT.json -- CMD...` and imports only os/json/sys/time: its own peak
is ~10 MB, which is then the floor of the figure it reports.

It also collects I/O bytes exactly: when a child is reaped its /proc io counters are added to
the parent's, so /proc/self/io after wait4, minus before, is the command's (and its reaped
descendants') read_bytes / write_bytes, with no sampling gap at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _proc_io() -> dict[str, int]:
    fields: dict[str, int] = {}
    with open("/proc/self/io") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key.strip()] = int(value)
    return fields


def _vmhwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return -1


def main(argv: list[str]) -> int:
    out_path, sep, cmd = argv[0], argv[1], argv[2:]
    if sep != "--" or not cmd:
        print("usage: launcher.py OUT.json -- CMD [ARGS...]", file=sys.stderr)
        return 2
    io_before = _proc_io()
    launcher_hwm = _vmhwm_bytes()
    start_wall = time.time()
    start = time.monotonic()
    pid = os.posix_spawnp(cmd[0], cmd, dict(os.environ))
    _, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - start
    io_after = _proc_io()
    result = {
        "argv": cmd,
        "pid": pid,
        "returncode": os.waitstatus_to_exitcode(status),
        "start_unix": start_wall,
        "wall_s": seconds,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "maxrss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "launcher_vmhwm_bytes": launcher_hwm,
        "major_faults": usage.ru_majflt,
        "voluntary_ctx_switches": usage.ru_nvcsw,
        "involuntary_ctx_switches": usage.ru_nivcsw,
        "io": {key: io_after[key] - io_before.get(key, 0) for key in io_after},
    }
    with open(out_path, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
