"""The fallback paths (STREAMCONV_PORTABLE=1, and a Python without resource and fcntl) convert
to the same bytes as the fast path, and really avoid the Linux-only calls."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import in_process_budget
from test_convert import ALIGNED, expected_tensors, has_direct, load_output

from fixtures.synthetic import SyntheticSpec, tiny
from streamconv.cli.main import main
from streamconv.model.family import Family
from streamconv.source import prefetch
from streamconv.system import direct_io
from streamconv.system.platform_io import PORTABLE_ENV

MakeCkpt = Callable[[SyntheticSpec], Path]
REPO = Path(__file__).resolve().parents[1]
LINUX_CALLS = ("preadv", "pwrite", "posix_fallocate", "posix_fadvise")

CASES = [
    # block-aligned tensors, so the fast path writes and reads with O_DIRECT where it can
    ("llama2-2-aligned", replace(ALIGNED, with_tokenizer=True)),
    ("llama3.1-2", tiny(Family.LLAMA3_1, n_ranks=2, dtype="bfloat16")),
]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def count_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Calls to the Linux-only os functions, and opens with O_DIRECT, from now on."""
    counts: Counter[str] = Counter()
    for name in LINUX_CALLS:
        if hasattr(os, name):
            real = getattr(os, name)

            def spy(*args: object, _name: str = name, _real: object = real) -> object:
                counts[_name] += 1
                return _real(*args)  # type: ignore[operator]

            monkeypatch.setattr(os, name, spy)
    real_open = os.open

    def spy_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            counts["O_DIRECT"] += 1
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy_open)
    return counts


@pytest.mark.parametrize("spec", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_portable_path_is_byte_identical(spec: SyntheticSpec, make_checkpoint: MakeCkpt,
                                         tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_checkpoint(spec)
    outputs = {}
    for mode in ("fast", "portable"):
        with monkeypatch.context() as patch:
            if mode == "portable":
                patch.setenv(PORTABLE_ENV, "1")
            else:
                patch.delenv(PORTABLE_ENV, raising=False)
            counts = count_calls(patch)
            out = tmp_path / mode
            assert prefetch.start_prefetch(src) is None or mode == "fast"
            assert main([str(src), str(out), "--quiet", "--max-ram", in_process_budget()]) == 0
            outputs[mode] = digests(out)
            if mode == "fast":
                assert counts["preadv"] and counts["pwrite"] and counts["posix_fallocate"]
                assert counts["O_DIRECT"] or not has_direct(tmp_path)
            else:
                assert not counts, f"the portable path called {dict(counts)}"
                assert direct_io.huge_page_memory(1 << 20) is None
    assert outputs["fast"] == outputs["portable"]
    assert "tokenizer.json" in outputs["fast"] and len(outputs["fast"]) >= 6
    got = load_output(tmp_path / "portable")
    for name, tensor in expected_tensors(src, spec, getattr(torch, spec.dtype)).items():
        assert torch.equal(got[name], tensor), name


HIDDEN = textwrap.dedent("""
    import mmap, os, pkgutil, importlib, sys
    # The dependencies first: their Linux builds use resource (psutil's Linux backend does),
    # their Windows builds do not. What is tested is streamconv's own imports.
    import numpy, psutil, rich, safetensors, sentencepiece, torch
    sys.modules["resource"] = None  # what Windows lacks: imports of them raise ImportError
    sys.modules["fcntl"] = None
    for name in ("preadv", "pwrite", "posix_fallocate", "posix_fadvise", "O_DIRECT",
                 "fdatasync"):
        if hasattr(os, name):
            delattr(os, name)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        del mmap.MADV_HUGEPAGE
    import streamconv
    names = sorted(m.name for m in pkgutil.walk_packages(streamconv.__path__, "streamconv.")
                   if not m.name.endswith("__main__"))
    for name in names:
        importlib.import_module(name)
    assert "resource" not in sys.modules or sys.modules["resource"] is None
    from streamconv.cli.main import main
    from streamconv.system.memory import peak_rss_bytes
    assert peak_rss_bytes() > 0
    print(len(names), "modules")
    sys.exit(main(sys.argv[1:]))
""")


def test_imports_and_converts_without_unix_only_modules(make_checkpoint: MakeCkpt,
                                                        tmp_path: Path) -> None:
    spec = tiny(Family.LLAMA2, n_ranks=2)
    src = make_checkpoint(spec)
    assert main([str(src), str(tmp_path / "fast"), "--quiet"]) == 0
    env = {k: v for k, v in os.environ.items() if k != PORTABLE_ENV}
    done = subprocess.run([sys.executable, "-c", HIDDEN, str(src), str(tmp_path / "hidden"),
                           "--quiet"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    n_modules = int(done.stdout.split()[0])
    assert n_modules >= 30
    assert digests(tmp_path / "hidden") == digests(tmp_path / "fast")
