"""benchmarks.report rebuilds the committed results from the git-ignored results/raw/: for each
model, every run of the newest session that measured it, byte for byte; nothing else stays."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.report import sync_committed


def _run(raw: Path, session: str, model: str, runner: str) -> Path:
    path = raw / session / f"{model}__{runner}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": f"{model}__{runner}", "model": model,
                                "session": session, "wall_s": len(session)}, indent=1) + "\n")
    return path


def test_each_models_newest_session_is_committed(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _run(raw, "20261201-100000", "7b", "floor-cp")
    _run(raw, "20261201-100000", "7b", "streamconv-2G")  # not run again later: not committed
    newest = [_run(raw, "20261202-090000", "7b", "floor-cp"),
              _run(raw, "20261202-090000", "7b", "streamconv-1G"),
              _run(raw, "20261201-100000", "13b", "floor-cp")]  # 13b's newest session
    (raw / "20261202-090000" / "round1").mkdir()
    (raw / "20261202-090000" / "round1" / "7b__floor-cp.json").write_text("{}")
    (tmp_path / "7b__peer.json").write_text("{}")  # a stale committed file
    written = sync_committed(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(p.name for p in newest)
    assert sorted(written) == sorted(tmp_path / p.name for p in newest)
    for source in newest:
        assert (tmp_path / source.name).read_bytes() == source.read_bytes()


def test_without_raw_the_committed_files_stay(tmp_path: Path) -> None:
    (tmp_path / "7b__floor-cp.json").write_text("{}")
    assert sync_committed(tmp_path) == []
    assert (tmp_path / "7b__floor-cp.json").read_text() == "{}"
