"""Checks on the output folder before anything is written there."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from streamconv.errors import OutputError
from streamconv.pipeline.preparation import Prepared
from streamconv.runtime.output_folder import STAGING_DIR, looks_finished
from streamconv.system.memory import format_size

_DISK_MARGIN_BYTES = 64 << 20


def check_output_dir(input_dir: Path, output_dir: Path, prepared: Prepared, *, force: bool,
                     resume: bool) -> None:
    src, dst = input_dir.resolve(), output_dir.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise OutputError(f"output folder {output_dir} and input folder {input_dir} overlap; "
                          "choose an output folder outside the input")
    if dst.exists() and not dst.is_dir():
        raise OutputError(f"output {output_dir} exists and is not a folder; choose another path")
    entries = sorted(dst.iterdir()) if dst.exists() else []
    if looks_finished(dst) and not force:
        raise OutputError(f"{output_dir} already holds a finished conversion; check it with "
                          "`streamconv verify`, or pass --force to convert again")
    leftovers = [p for p in entries if p.name != STAGING_DIR]
    # A run stopped while publishing has moved some files out of the staging folder already:
    # --resume republishes them (other files in OUT are kept, as with --force).
    publishing = resume and (dst / STAGING_DIR).exists()
    if leftovers and not (force or publishing):
        raise OutputError(f"output folder {output_dir} is not empty ({leftovers[0].name} and "
                          f"{len(leftovers) - 1} more); choose an empty folder or pass --force "
                          "to overwrite")
    staged = dst / STAGING_DIR
    if staged.exists() and not (force or resume):
        raise OutputError(f"{output_dir} holds an interrupted conversion; pass --resume to "
                          "continue it or --force to start over")
    _check_disk_space(dst, staged=staged if resume else None, pattern="*.safetensors",
                      prepared=prepared, what=f"{output_dir}: the output",
                      fix="choose another output folder")


def output_dir_error(e: OSError, output_dir: Path) -> OutputError:
    """What stops OUT from being created, in the user's terms."""
    if e.errno == errno.ENAMETOOLONG:
        why = "a name in its path is too long for the file system; choose a shorter name"
    elif os.path.islink(output_dir) and not os.path.exists(output_dir):
        why = "it is a symbolic link to a folder that does not exist; remove the link"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = (f"{e.filename or output_dir.parent} cannot be written ({e.strerror}); use a "
               "folder you can write to")
    elif e.errno == errno.ENOTDIR:
        why = "a part of its path is a file, not a folder; choose another path"
    else:
        why = f"{e.strerror or type(e).__name__}; choose another output folder"
    return OutputError(f"cannot create output folder {output_dir}: {why}")


def check_gguf_output(input_dir: Path, out_path: Path, prepared: Prepared, *, force: bool,
                      resume: bool) -> None:
    """The same checks for one OUT.gguf file and its staging folder (runtime/gguf_output.py)."""
    from streamconv.runtime.gguf_output import gguf_staging

    src, dst = input_dir.resolve(), out_path.resolve()
    if src in dst.parents or dst == src:
        raise OutputError(f"output {out_path} is inside the input folder {input_dir}; choose an "
                          "output path outside the input")
    if dst.is_dir():
        raise OutputError(f"output {out_path} is a folder; name a .gguf file, e.g. "
                          f"{out_path / 'model.gguf'}")
    if dst.exists() and not force:
        raise OutputError(f"{out_path} already exists; check it with `streamconv verify`, or "
                          "pass --force to convert again")
    staged = gguf_staging(dst)
    if staged.exists() and not (force or resume):
        raise OutputError(f"{staged} holds an interrupted conversion to {out_path}; pass "
                          "--resume to continue it or --force to start over")
    _check_disk_space(dst.parent, staged=staged if resume else None, pattern="*.gguf",
                      prepared=prepared, what=f"{out_path}: the file", fix="choose another place")


def _check_disk_space(target: Path, *, staged: Path | None, pattern: str, prepared: Prepared,
                      what: str, fix: str) -> None:
    """The plan's output bytes (less what a resumed run already staged) against the free space
    of the file system that will hold target (its nearest existing ancestor)."""
    probe = target
    while not probe.exists():
        probe = probe.parent
    already = sum(p.stat().st_size for p in staged.glob(pattern)) if staged is not None else 0
    needed = prepared.plan.output_bytes + _DISK_MARGIN_BYTES - already
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise OutputError(f"not enough disk space for {what} needs {format_size(needed)}, "
                          f"{format_size(free)} is free; free some space or {fix}")
