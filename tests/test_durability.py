"""The output folder survives a crash at any point of publishing, and its lifecycle runs in order.

The crash model: a rename can reach the disk before the data of the file renamed (ext4's delayed
allocation), so after a power loss every file whose data was never fsynced may be there with
length zero; and renames made since the folder's last fsync may each survive or not, in any
combination. The tests record every fsync and rename the conversion makes (at the os level), and
after each rename build the worst folder such a crash could leave. None may look finished (hold
the index) unless every file in it is complete.
"""

from __future__ import annotations

import importlib
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import digests

from fixtures.synthetic import SyntheticSpec, tiny
from streamconv.cli.main import main
from streamconv.errors import LifecycleError
from streamconv.model.family import Family
from streamconv.pipeline.conversion import ConvertOptions, prepare
from streamconv.planning.output_files import INDEX_NAME
from streamconv.runtime.output_folder import STAGING_DIR, FolderState, OutputFolder, looks_finished

journal_module = importlib.import_module("streamconv.runtime.journal")

SPEC = tiny(Family.LLAMA2, n_ranks=2)  # with tokenizer: tokenizer files are published too
ARGS = ["--quiet", "--max-shard-size", "100k"]



@pytest.fixture(scope="module")
def source(make_checkpoint: Callable[[SyntheticSpec], Path]) -> Path:
    return make_checkpoint(SPEC)


@pytest.fixture(scope="module")
def reference(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main([str(source), str(out), *ARGS]) == 0
    found = digests(out)
    assert len([n for n in found if n.endswith(".safetensors")]) >= 3
    assert "tokenizer.json" in found and "config.json" in found
    return found


@dataclass
class DiskModel:
    """What a power loss could undo, from the fsyncs and renames seen so far."""

    out: Path
    synced_inodes: set[int] = field(default_factory=set)
    unsynced_renames: list[str] = field(default_factory=list)  # into OUT since its last fsync
    crash_states: list[Path] = field(default_factory=list)

    def fsynced(self, fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            if info.st_ino == self.out.stat().st_ino:
                self.unsynced_renames.clear()
        else:
            self.synced_inodes.add(info.st_ino)

    def renamed(self, dst: Path) -> None:
        if dst.parent == self.out:
            self.unsynced_renames.append(dst.name)

    def snapshot(self, where: Path) -> None:
        """The worst folder a power loss right now could leave: never-fsynced files empty,
        and every rename not yet made durable lost, except the index's."""
        where.mkdir(parents=True)
        for path in self.out.iterdir():
            lost = path.name in self.unsynced_renames and path.name != INDEX_NAME
            if not path.is_file() or lost:
                continue
            shutil.copyfile(path, where / path.name)
            if path.stat().st_ino not in self.synced_inodes:
                os.truncate(where / path.name, 0)
        self.crash_states.append(where)


@pytest.fixture
def disk_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DiskModel:
    model = DiskModel(tmp_path / "out")
    real_fsync, real_fdatasync, real_replace = os.fsync, os.fdatasync, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        model.fsynced(fd)

    def fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        model.fsynced(fd)

    def rename(src: str | Path, dst: str | Path) -> None:
        real_replace(src, dst)
        model.renamed(Path(dst))
        model.snapshot(tmp_path / f"crash-{len(model.crash_states)}")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "replace", rename)
    return model


def test_no_crash_while_publishing_leaves_a_folder_that_looks_finished_but_is_not(
        source: Path, reference: dict[str, str], disk_model: DiskModel) -> None:
    assert main([str(source), str(disk_model.out), *ARGS]) == 0
    assert digests(disk_model.out) == reference
    # one crash state after each rename: every published file, the index last
    assert len(disk_model.crash_states) == len(reference)
    finished = [state for state in disk_model.crash_states if (state / INDEX_NAME).exists()]
    assert finished == disk_model.crash_states[-1:]
    for state in disk_model.crash_states:
        if (state / INDEX_NAME).exists():
            assert digests(state) == reference, f"{state.name} looks finished but is not"
        else:
            assert not looks_finished(state)


@pytest.mark.parametrize("crash_at", ["config.json", "model-00002-of", INDEX_NAME])
def test_crash_between_write_and_rename_then_resume(crash_at: str, source: Path,
                                                    reference: dict[str, str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A real crash (the rename raises): nothing looks finished, and --resume completes it."""
    out = tmp_path / "out"
    real_replace = os.replace

    def crashing_rename(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name.startswith(crash_at):
            raise SystemExit("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_rename)
    with pytest.raises(SystemExit):
        main([str(source), str(out), *ARGS])
    monkeypatch.undo()
    assert not looks_finished(out) and not (out / INDEX_NAME).exists()
    assert (out / STAGING_DIR).is_dir()
    assert main([str(source), str(out), *ARGS]) == 1  # without --resume: refused
    assert main([str(source), str(out), *ARGS, "--resume"]) == 0
    assert digests(out) == reference


def test_lifecycle_refuses_steps_out_of_order(source: Path, tmp_path: Path) -> None:
    plan = prepare(source, ConvertOptions(tokenizer=False, max_shard_bytes=100_000)).plan
    job = plan.jobs[0]
    data = memoryview(bytearray(job.out_bytes))
    folder = OutputFolder(tmp_path, plan.files)
    with pytest.raises(LifecycleError, match="is new, and publish needs it synced"):
        folder.publish()
    with folder:
        assert folder.state is FolderState.STAGING and (tmp_path / STAGING_DIR).is_dir()
        folder.write_job(job, data)
        with pytest.raises(LifecycleError, match="is staging, and sync needs it filled"):
            folder.sync()
        with pytest.raises(LifecycleError, match="is staging, and publish needs it synced"):
            folder.publish()
        folder.fill({"config.json": b"{}\n"})
        assert folder.state is FolderState.FILLED
        with pytest.raises(LifecycleError, match="write a job into"):
            folder.write_job(job, data)
        with pytest.raises(LifecycleError, match="is filled, and fill needs it staging"):
            folder.fill({})
        assert not (tmp_path / INDEX_NAME).exists()
        folder.sync()
        assert not (tmp_path / INDEX_NAME).exists()
        published = folder.publish()
        assert folder.state is FolderState.PUBLISHED
        with pytest.raises(LifecycleError, match="is published"):
            folder.publish()
    assert published[-1].name == INDEX_NAME and looks_finished(tmp_path)
    assert {p.name for p in published} == {INDEX_NAME, "config.json",
                                           *(f.name for f in plan.files)}


def test_leaving_before_publish_abandons_the_staging_folder(source: Path, tmp_path: Path) -> None:
    plan = prepare(source, ConvertOptions(tokenizer=False)).plan
    with OutputFolder(tmp_path, plan.files) as folder:
        pass
    assert folder.state is FolderState.ABANDONED
    assert (tmp_path / STAGING_DIR).is_dir() and not looks_finished(tmp_path)


# -- the staging folder of a run killed before its journal's first line ------------------------

def stage_without_journal(out: Path, journal: bytes | None) -> None:
    staging = out / STAGING_DIR
    staging.mkdir(parents=True)
    (staging / "model-00001-of-00003.safetensors").write_bytes(b"\0" * 1000)
    if journal is not None:
        (staging / "journal.jsonl").write_bytes(journal)


@pytest.mark.parametrize("journal", [None, b"", b'{"fingerprint": "3f2a'],
                         ids=["no-journal", "empty", "torn-first-line"])
def test_resume_starts_over_when_nothing_was_recorded(journal: bytes | None, source: Path,
                                                      reference: dict[str, str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    stage_without_journal(out, journal)
    assert main([str(source), str(out), *ARGS]) == 1
    assert "pass --resume" in capsys.readouterr().err
    args = [a for a in ARGS if a != "--quiet"]
    assert main([str(source), str(out), *args, "--resume"]) == 0
    assert "records nothing as durable" in " ".join(capsys.readouterr().out.split())
    assert digests(out) == reference


def test_killed_before_the_journal_first_line_then_resume(source: Path,
                                                          reference: dict[str, str],
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted for real at that point: the shards are created, the journal is not."""
    out = tmp_path / "out"

    def interrupted(self: object, record: dict[str, object]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(journal_module.Journal, "_append", interrupted)
    assert main([str(source), str(out), *ARGS]) == 130
    monkeypatch.undo()
    staged = out / STAGING_DIR
    assert list(staged.glob("model-*.safetensors")) and not (staged / "journal.jsonl").exists()
    assert main([str(source), str(out), *ARGS, "--resume"]) == 0
    assert digests(out) == reference


def test_resume_still_refuses_another_conversions_journal(source: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    out = tmp_path / "out"
    stage_without_journal(out, b'{"fingerprint": "other", "version": 1}\n')
    assert main([str(source), str(out), *ARGS, "--resume"]) == 1
    assert "different input" in capsys.readouterr().err

