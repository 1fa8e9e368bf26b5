"""Issue 5: a catalogue of bad inputs, each run through the CLI in-process.

Every case copies a tiny generated checkpoint, damages the copy, and requires: exit 1 (2 for
usage errors), one `error: ...` sentence on stderr naming the problem and the file or value, no
traceback, and nothing in OUT that looks like a finished model. All of these are found before
the first write, so OUT must not exist or must be empty (or, when it existed, be unchanged).
"""

from __future__ import annotations

import importlib
import io
import json
import os
import random
import re
import shutil
import struct
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from rich.console import Console

from fixtures.synthetic import SyntheticSpec, tiny
from fixtures.synthetic_tokenizer import write_synthetic_tokenizer
from streamconv.cli.main import main
from streamconv.model.family import Family

# The conversion module, whose names the tests patch.
conversion_module = importlib.import_module("streamconv.pipeline.conversion")

MakeCkpt = Callable[[SyntheticSpec], Path]
# A word the message must contain, or a tuple of words of which it must contain one.
Word = str | tuple[str, ...]

BASE = tiny(Family.LLAMA2, n_ranks=2, with_tokenizer=False)  # float32, dim 64, 2 layers
WIDE = tiny(Family.LLAMA2, n_ranks=2, with_tokenizer=False, dim=128)  # another model's width
SHARD0, SHARD1 = "consolidated.00.pth", "consolidated.01.pth"
# Pinned so that no case depends on this machine's free memory.
RUN_ARGS = ("--quiet", "--max-ram", "2G")
COMPLETE_LOOKING = ("model.safetensors.index.json", "config.json", "model-*.safetensors")


@dataclass(frozen=True)
class Result:
    code: int | None  # None: an exception escaped main()
    out: str
    err: str


def run_cli(*argv: str | Path) -> Result:
    """main() with captured consoles; an escaping exception becomes the traceback Python
    would print, so the assertions below report it like any other wrong output."""
    out, err = io.StringIO(), io.StringIO()
    try:
        code: int | None = main([str(a) for a in argv],
                                console=Console(file=out, width=300),
                                err_console=Console(file=err, width=300))
    except Exception:
        code = None
        err.write(traceback.format_exc())
    return Result(code, out.getvalue(), err.getvalue())


def assert_one_error(result: Result, *words: Word) -> None:
    """Exit 1 with one `error:` sentence that contains every word (or one of each tuple)."""
    assert "Traceback" not in result.err, result.err
    assert result.code == 1, (result.code, result.err)
    assert "\x1b" not in result.err, f"terminal escape codes in the message: {result.err!r}"
    # rich wraps long lines at the console width; what matters is one message.
    message = " ".join(result.err.split())
    assert message.startswith("error: ") and message.count("error:") == 1, result.err
    body = message.removeprefix("error: ")
    assert not re.search(r"[.!?] [A-Z]", body), f"more than one sentence: {body}"
    for word in words:
        choices = (word,) if isinstance(word, str) else word
        assert any(c in body for c in choices), f"expected {choices} in: {body}"


def assert_not_complete(out: Path) -> None:
    """No file that would let transformers load OUT as a model."""
    if out.is_dir():
        for pattern in COMPLETE_LOOKING:
            assert not list(out.glob(pattern)), sorted(p.name for p in out.iterdir())


def assert_nothing_written(out: Path) -> None:
    assert_not_complete(out)
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def fresh_copy(make_checkpoint: MakeCkpt, tmp_path: Path, spec: SyntheticSpec = BASE) -> Path:
    """A private copy of the session-cached checkpoint, safe to damage."""
    return Path(shutil.copytree(make_checkpoint(spec), tmp_path / "in"))


# --- damage ---------------------------------------------------------------------------------

def edit_params(src: Path, **changes: Any) -> None:
    params = json.loads((src / "params.json").read_text())
    for key, value in changes.items():
        if value is None:
            del params[key]
        else:
            params[key] = value
    (src / "params.json").write_text(json.dumps(params))


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(path, weights_only=True)
    return state


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def central_directory(path: Path) -> tuple[int, int]:
    """(offset, size) of the zip central directory, from the end-of-central-directory record."""
    data = path.read_bytes()
    eocd = data.rfind(b"PK\x05\x06")
    size, offset = struct.unpack_from("<LL", data, eocd + 12)
    assert offset + size <= eocd, "zip64 offsets: this helper reads only the classic record"
    return offset, size


def no_params(src: Path, make_checkpoint: MakeCkpt) -> None:
    (src / "params.json").unlink()


def invalid_json(src: Path, make_checkpoint: MakeCkpt) -> None:
    (src / "params.json").write_text('{"dim": 64, "n_layers": 2,')


def no_n_layers(src: Path, make_checkpoint: MakeCkpt) -> None:
    edit_params(src, n_layers=None)


def too_many_layers(src: Path, make_checkpoint: MakeCkpt) -> None:
    edit_params(src, n_layers=3)


def vocab_disagrees(src: Path, make_checkpoint: MakeCkpt) -> None:
    edit_params(src, vocab_size=1024)


def last_shard_missing(src: Path, make_checkpoint: MakeCkpt) -> None:
    (src / SHARD1).unlink()


def shard_gap(src: Path, make_checkpoint: MakeCkpt) -> None:
    (src / SHARD1).rename(src / "consolidated.02.pth")


def truncated(src: Path, make_checkpoint: MakeCkpt) -> None:
    path = src / SHARD1
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def corrupt_central_directory(src: Path, make_checkpoint: MakeCkpt) -> None:
    offset, size = central_directory(src / SHARD1)
    overwrite(src / SHARD1, offset + size // 2 - 32, b"\xa5" * 64)


def corrupt_local_header(src: Path, make_checkpoint: MakeCkpt) -> None:
    with zipfile.ZipFile(src / SHARD1) as archive:
        member = next(i for i in archive.infolist() if re.search(r"/data/\d+$", i.filename))
    overwrite(src / SHARD1, member.header_offset, b"\xa5" * 30)


def random_bytes(src: Path, make_checkpoint: MakeCkpt) -> None:
    (src / SHARD1).write_bytes(random.Random(5).randbytes(64 << 10))


def legacy_format(src: Path, make_checkpoint: MakeCkpt) -> None:
    state = load_shard(src / SHARD1)
    with open(src / SHARD1, "wb") as f:
        torch.save(state, f, _use_new_zipfile_serialization=False)


def other_width_shard(src: Path, make_checkpoint: MakeCkpt) -> None:
    shutil.copyfile(make_checkpoint(WIDE) / SHARD1, src / SHARD1)


def unknown_tensor(src: Path, make_checkpoint: MakeCkpt) -> None:
    state = load_shard(src / SHARD1)
    state["extra_adapter.weight"] = torch.zeros(4, 4)
    torch.save(state, src / SHARD1)


def mixed_dtypes(src: Path, make_checkpoint: MakeCkpt) -> None:
    state = load_shard(src / SHARD1)
    torch.save({k: v.to(torch.bfloat16) for k, v in state.items()}, src / SHARD1)


def shard_is_folder(src: Path, make_checkpoint: MakeCkpt) -> None:
    (src / SHARD1).unlink()
    (src / SHARD1).mkdir()


def dangling_symlink(src: Path, make_checkpoint: MakeCkpt) -> None:
    (src / SHARD1).unlink()
    (src / SHARD1).symlink_to(src / "gone" / SHARD1)


def tokenizer_missing(src: Path, make_checkpoint: MakeCkpt) -> None:
    assert not (src / "tokenizer.model").exists() and not (src.parent / "tokenizer.model").exists()


def tokenizer_random_bytes(src: Path, make_checkpoint: MakeCkpt) -> None:
    (src / "tokenizer.model").write_bytes(random.Random(7).randbytes(4096))


def tokenizer_other_vocab(src: Path, make_checkpoint: MakeCkpt) -> None:
    write_synthetic_tokenizer(src / "tokenizer.model", kind="sentencepiece",
                                        vocab_size=448)


@dataclass(frozen=True)
class BadInput:
    damage: Callable[[Path, MakeCkpt], None]
    words: tuple[Word, ...]  # the message must name these
    args: tuple[str, ...] = ("--no-tokenizer",)


BAD_INPUTS: dict[str, BadInput] = {
    "params-missing": BadInput(no_params, ("params.json", "missing")),
    "params-invalid-json": BadInput(invalid_json, ("params.json", "not valid JSON")),
    "params-no-n_layers": BadInput(no_n_layers, ("params.json", "n_layers")),
    "params-n_layers-beyond-shards": BadInput(
        too_many_layers, (SHARD0, "layers.2.", "n_layers=3")),
    "params-vocab-disagrees": BadInput(vocab_disagrees, ("vocab_size=1024", "512")),
    "shard-last-missing": BadInput(last_shard_missing, (SHARD1, "missing")),
    "shard-gap": BadInput(shard_gap, (SHARD1, "missing")),
    "shard-truncated": BadInput(truncated, (SHARD1, "truncated")),
    "shard-corrupt-central-directory": BadInput(corrupt_central_directory, (SHARD1, "corrupt")),
    "shard-corrupt-local-header": BadInput(corrupt_local_header, (SHARD1, "corrupt")),
    "shard-random-bytes": BadInput(random_bytes, (SHARD1, "corrupt")),
    "shard-legacy-format": BadInput(legacy_format, (SHARD1, "legacy")),
    "shard-other-width": BadInput(other_width_shard, (SHARD1, "tok_embeddings", "shape")),
    "shard-unknown-tensor": BadInput(unknown_tensor, (SHARD1, "extra_adapter.weight")),
    "shards-mixed-dtypes": BadInput(mixed_dtypes, (SHARD1, "bfloat16", "float32")),
    "shard-is-a-folder": BadInput(shard_is_folder, (SHARD1, ("folder", "directory"))),
    "shard-dangling-symlink": BadInput(
        dangling_symlink, (SHARD1, ("does not exist", "broken", "dangling", "No such file"))),
    "tokenizer-missing": BadInput(tokenizer_missing, ("tokenizer.model", "--no-tokenizer"), ()),
    "tokenizer-random-bytes": BadInput(tokenizer_random_bytes, ("tokenizer.model",), ()),
    "tokenizer-other-vocab": BadInput(tokenizer_other_vocab, ("tokenizer.model", "448", "512"),
                                      ()),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_fails_with_one_sentence(case: BadInput, make_checkpoint: MakeCkpt,
                                           tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    case.damage(src, make_checkpoint)
    out = tmp_path / "out"
    result = run_cli(src, out, *RUN_ARGS, *case.args)
    assert_one_error(result, *case.words)
    assert_nothing_written(out)


def test_input_folder_does_not_exist(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "nowhere", tmp_path / "out", *RUN_ARGS, "--no-tokenizer")
    assert_one_error(result, "nowhere", "does not exist")
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("folder", ["llama [b]", "llama [/7b]"], ids=["style-tag", "closing-tag"])
def test_path_with_brackets_is_printed_verbatim(folder: str, make_checkpoint: MakeCkpt,
                                                tmp_path: Path) -> None:
    """Paths are data, not rich markup: `[b]` must not vanish, `[/7b]` must not crash."""
    src = Path(shutil.copytree(make_checkpoint(BASE), tmp_path / folder))
    (src / "params.json").unlink()
    result = run_cli(src, tmp_path / "out", *RUN_ARGS, "--no-tokenizer")
    assert_one_error(result, str(src / "params.json"), "missing")
    assert_nothing_written(tmp_path / "out")


# --- a .pth whose pickle would run code ----------------------------------------------------

class _TouchByShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _TouchByOpen:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("payload", [_TouchByShell, _TouchByOpen], ids=["os.system", "open"])
def test_hostile_pickle_is_refused_and_never_runs(payload: type, make_checkpoint: MakeCkpt,
                                                  tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    marker = tmp_path / "pwned"
    state: dict[str, Any] = dict(load_shard(src / SHARD1))
    state["layers.0.attention.wq.weight_extra"] = payload(marker)
    torch.save(state, src / SHARD1)
    assert not marker.exists()
    result = run_cli(src, tmp_path / "out", *RUN_ARGS, "--no-tokenizer")
    assert not marker.exists(), "unpickling ran the payload"
    assert_one_error(result, SHARD1, "safety")
    assert_nothing_written(tmp_path / "out")


# --- input that is already a Hugging Face folder -------------------------------------------

def test_hugging_face_folder_as_input(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    converted = run_cli(make_checkpoint(BASE), hf, *RUN_ARGS, "--no-tokenizer")
    assert converted.code == 0, converted.err
    assert (hf / "config.json").is_file() and list(hf.glob("model*.safetensors"))
    result = run_cli(hf, tmp_path / "out", *RUN_ARGS, "--no-tokenizer")
    assert_one_error(result, str(hf), ("Hugging Face", "already converted"))
    assert_nothing_written(tmp_path / "out")


# --- output folder ---------------------------------------------------------------------------

def test_output_inside_input(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    result = run_cli(src, src / "hf", *RUN_ARGS, "--no-tokenizer")
    assert_one_error(result, "overlap", str(src / "hf"))
    assert not (src / "hf").exists()


def test_output_equals_input(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    before = sorted(p.name for p in src.iterdir())
    result = run_cli(src, src, *RUN_ARGS, "--no-tokenizer", "--force")
    assert_one_error(result, "overlap", str(src))
    assert sorted(p.name for p in src.iterdir()) == before
    assert_not_complete(src)


def test_output_not_empty_without_force(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    result = run_cli(src, out, *RUN_ARGS, "--no-tokenizer")
    assert_one_error(result, str(out), "not empty", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "user data"


def test_output_is_a_file(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    out = tmp_path / "out"
    out.write_text("user data")
    result = run_cli(src, out, *RUN_ARGS, "--no-tokenizer", "--force")
    assert_one_error(result, str(out), "not a folder")
    assert out.read_text() == "user data"


# --- budget and disk -------------------------------------------------------------------------

def test_max_ram_below_minimum(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    result = run_cli(src, tmp_path / "out", "--quiet", "--no-tokenizer", "--max-ram", "64M")
    assert_one_error(result, "--max-ram", "too small")
    assert_nothing_written(tmp_path / "out")


class _DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


def test_disk_too_small(make_checkpoint: MakeCkpt, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    monkeypatch.setattr(conversion_module.shutil, "disk_usage",
                        lambda path: _DiskUsage(1 << 30, (1 << 30) - (1 << 20), 1 << 20))
    out = tmp_path / "out"
    result = run_cli(src, out, *RUN_ARGS, "--no-tokenizer")
    assert_one_error(result, "disk space", str(out))
    assert_nothing_written(out)


# --- usage and --debug -----------------------------------------------------------------------

@pytest.mark.parametrize("argv,word", [
    (("--dtype", "int4"), "int4"),
    (("--max-ram", "lots"), "lots"),
], ids=["dtype-int4", "max-ram-lots"])
def test_bad_usage_exits_2(argv: tuple[str, ...], word: str, make_checkpoint: MakeCkpt,
                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(make_checkpoint(BASE), tmp_path / "out", "--no-tokenizer", *argv)
    captured = capsys.readouterr()
    err = result.err + captured.err  # argparse writes to sys.stderr itself
    assert result.code == 2, err
    assert "Traceback" not in err and word in err, err
    assert not (tmp_path / "out").exists()


def test_debug_shows_traceback_and_still_exits_1(make_checkpoint: MakeCkpt,
                                                 tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    invalid_json(src, make_checkpoint)
    result = run_cli(src, tmp_path / "out", *RUN_ARGS, "--no-tokenizer", "--debug")
    assert result.code == 1, result.err
    assert "Traceback" in result.err and "JSONDecodeError" in result.err, result.err
    assert result.err.rstrip().splitlines()[-1].startswith("error: ")
    assert_nothing_written(tmp_path / "out")
