"""The GGUF output file's lifecycle: staging -> synced -> published, in that order only.

A GGUF output is one file, OUT.gguf, and the staging folder is its sibling
`.OUT.gguf.streamconv-partial/`, holding the file being filled (created at full size, the header
written first, jobs writing in place: file_writer.py) and the resume journal. publish() makes
the file durable (data and size: fsync), renames it to OUT.gguf, fsyncs the folder so the
rename itself survives a power loss, and only then removes the staging folder. Until that
rename there is no OUT.gguf: nothing half-written ever carries the final name, and a file
renamed before its own fsync could survive a crash with length zero (output_folder.py says
why). Calls out of order raise LifecycleError, as in output_folder.py, whose interface this
mirrors for pipeline/conversion.py.
"""

from __future__ import annotations

import enum
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from streamconv.errors import LifecycleError
from streamconv.planning.jobs import Job
from streamconv.planning.output_files import OutputFile
from streamconv.runtime.file_writer import ShardWriter, disk_error
from streamconv.system.platform_io import fsync_dir


class _State(enum.Enum):
    NEW = "new"
    STAGING = "staging"
    FILLED = "filled"
    SYNCED = "synced"
    PUBLISHED = "published"
    ABANDONED = "abandoned"


def gguf_staging(out_path: Path) -> Path:
    """The staging folder of OUT.gguf (next to it, hidden)."""
    return out_path.parent / f".{out_path.name}.streamconv-partial"


class GGUFOutput:
    """OUT.gguf and its staging folder, from the header to the published file."""

    def __init__(self, out_path: Path, out_file: OutputFile, *, resume: bool = False) -> None:
        self.out_path = out_path
        self.staging = gguf_staging(out_path)
        self.out_file = out_file
        self.writer = ShardWriter(self.staging, (out_file,), resume=resume)
        self.state = _State.NEW

    def _advance(self, step: str, *, expected: _State, to: _State) -> None:
        if self.state is not expected:
            raise LifecycleError(f"cannot {step} {self.out_path}: it is {self.state.value}, and "
                                 f"{step} needs it {expected.value}; this is a bug in the caller")
        self.state = to

    def __enter__(self) -> GGUFOutput:
        self._advance("stage", expected=_State.NEW, to=_State.STAGING)
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise disk_error(e, self.staging, 0) from e
        self.writer.__enter__()
        return self

    def write_job(self, job: Job, data: memoryview) -> None:
        if self.state is not _State.STAGING:
            raise LifecycleError(f"write into {self.out_path} while it is {self.state.value}")
        self.writer.write_job(job, data)

    def sync_shards(self) -> None:
        """Make the jobs written so far durable (the resume journal records only after this)."""
        self.writer.sync()

    def fill(self, extra_files: Mapping[str, bytes]) -> None:
        """Every job is written. A GGUF file carries its configs and tokenizer in its header,
        written when the file was created: there are no other files."""
        assert not extra_files, "a GGUF output has no files besides itself"
        self._advance("fill", expected=_State.STAGING, to=_State.FILLED)

    def sync(self) -> None:
        """fsync the file (data and metadata), then the staging folder's entries."""
        self._advance("sync", expected=_State.FILLED, to=_State.SYNCED)
        self.writer.finish()
        try:
            fsync_dir(self.staging)
        except OSError as e:
            raise disk_error(e, self.staging, 0) from e

    def publish(self) -> list[Path]:
        """Rename the durable file to OUT.gguf, make the rename durable, drop the staging."""
        self._advance("publish", expected=_State.SYNCED, to=_State.PUBLISHED)
        try:
            os.replace(self.staging / self.out_file.name, self.out_path)
            fsync_dir(self.out_path.parent)
        except OSError as e:
            self.state = _State.ABANDONED
            raise disk_error(e, self.out_path, 0) from e
        shutil.rmtree(self.staging, ignore_errors=True)
        return [self.out_path]

    def __exit__(self, *exc: object) -> None:
        self.writer.__exit__(*exc)
        if self.state is not _State.PUBLISHED:
            self.state = _State.ABANDONED
