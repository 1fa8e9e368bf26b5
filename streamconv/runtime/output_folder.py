"""The output folder's lifecycle: staging -> filled -> synced -> published, in that order only.

Everything is written inside OUT/.streamconv-partial/ first (STAGING: jobs fill the shards in
place; the resume journal lives there too). fill() adds config.json, generation_config.json, the
tokenizer files and the index (FILLED). sync() makes every one of those files durable, data and
metadata, and then the staging folder's entries (SYNCED). publish() renames them into OUT, syncs
OUT, and only then renames the index and syncs OUT again (PUBLISHED).

Why this order: the index is what makes a folder look finished (transformers loads a sharded
model through it, and streamconv refuses to convert over it). A rename can reach the disk before
the data of the file renamed, so after a power loss a file that was renamed without an fsync of
its own may be there with length zero (ext4's delayed allocation does exactly this). Every file
is therefore fsynced before its rename, and the index is renamed only once the renames of all
the others are durable: if the index is there after a crash, every file it names is complete.
A call out of this order raises LifecycleError.
"""

from __future__ import annotations

import enum
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from streamconv.errors import LifecycleError
from streamconv.planning.jobs import Job
from streamconv.planning.output_files import INDEX_NAME, OutputFile, index_json
from streamconv.runtime.file_writer import ShardWriter, disk_error
from streamconv.system.platform_io import fsync_dir, fsync_path

STAGING_DIR = ".streamconv-partial"


class FolderState(enum.Enum):
    NEW = "new"
    STAGING = "staging"  # .streamconv-partial/ exists, jobs are filling the shards
    FILLED = "filled"  # every file to publish is written in the staging folder
    SYNCED = "synced"  # ... and durable, as are the staging folder's entries
    PUBLISHED = "published"  # moved into OUT, the index last; the staging folder is gone
    ABANDONED = "abandoned"  # left before publishing: the staging folder stays for --resume


def looks_finished(out_dir: Path) -> bool:
    """Whether OUT holds what a finished conversion leaves: the index, and no staging folder."""
    return (out_dir / INDEX_NAME).exists() and not (out_dir / STAGING_DIR).exists()


class OutputFolder:
    """OUT and its staging folder, from the first shard byte to the published model."""

    def __init__(self, out_dir: Path, files: tuple[OutputFile, ...], *,
                 resume: bool = False) -> None:
        self.out_dir = out_dir
        self.staging = out_dir / STAGING_DIR
        self.files = files
        self.shards = ShardWriter(self.staging, files, resume=resume)
        self.state = FolderState.NEW
        self._extra_names: list[str] = []

    def _require(self, step: str, expected: FolderState) -> None:
        if self.state is not expected:
            raise LifecycleError(f"cannot {step} {self.out_dir}: the output folder is "
                                 f"{self.state.value}, and {step} needs it {expected.value}; "
                                 "this is a bug in the caller")

    def _advance(self, step: str, *, expected: FolderState, to: FolderState) -> None:
        self._require(step, expected)
        self.state = to

    def __enter__(self) -> OutputFolder:
        self._advance("stage", expected=FolderState.NEW, to=FolderState.STAGING)
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise disk_error(e, self.staging, 0) from e
        self.shards.__enter__()
        return self

    def write_job(self, job: Job, data: memoryview) -> None:
        """A job's bytes, in place in its staged shard (from any thread)."""
        self._require("write a job into", FolderState.STAGING)
        self.shards.write_job(job, data)

    def sync_shards(self) -> None:
        """Make the jobs written so far durable (the resume journal records only after this)."""
        self._require("sync the shards of", FolderState.STAGING)
        self.shards.sync()

    def fill(self, extra_files: Mapping[str, bytes]) -> None:
        """Every job is written: add the other files (configs, tokenizer) and the index."""
        self._advance("fill", expected=FolderState.STAGING, to=FolderState.FILLED)
        reserved = {INDEX_NAME, *(f.name for f in self.files)}
        assert not reserved & set(extra_files), "extra files may not replace shards or the index"
        index = json.dumps(index_json(self.files), indent=2).encode() + b"\n"
        try:
            for name, content in [*extra_files.items(), (INDEX_NAME, index)]:
                (self.staging / name).write_bytes(content)
        except OSError as e:
            raise disk_error(e, self.staging, 0) from e
        self._extra_names = list(extra_files)

    def sync(self) -> None:
        """Make every staged file durable, then the staging folder's entries."""
        self._advance("sync", expected=FolderState.FILLED, to=FolderState.SYNCED)
        self.shards.finish()
        try:
            for name in [*self._extra_names, INDEX_NAME]:
                fsync_path(self.staging / name)
            fsync_dir(self.staging)
        except OSError as e:
            raise disk_error(e, self.staging, 0) from e

    def publish(self) -> list[Path]:
        """Move everything into OUT, the index last and only once the rest is durable there."""
        self._advance("publish", expected=FolderState.SYNCED, to=FolderState.PUBLISHED)
        names = [*self._extra_names, *(f.name for f in self.files)]
        try:
            for name in names:
                os.replace(self.staging / name, self.out_dir / name)
            fsync_dir(self.out_dir)
            os.replace(self.staging / INDEX_NAME, self.out_dir / INDEX_NAME)
            fsync_dir(self.out_dir)
        except OSError as e:
            self.state = FolderState.ABANDONED
            raise disk_error(e, self.out_dir, 0) from e
        shutil.rmtree(self.staging, ignore_errors=True)
        return [self.out_dir / name for name in [*names, INDEX_NAME]]

    def __exit__(self, *exc: object) -> None:
        self.shards.__exit__(*exc)
        if self.state is not FolderState.PUBLISHED:
            self.state = FolderState.ABANDONED
