"""`streamconv verify` passes a correct conversion and catches damage anywhere in it."""

from __future__ import annotations

import json
import random
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fixtures.synthetic import SyntheticSpec, tiny
from streamconv.cli.main import main
from streamconv.model.family import Family

SPEC = tiny(Family.LLAMA2, n_ranks=2, with_tokenizer=False, dtype="bfloat16")
ARGS = ["--no-tokenizer"]


@pytest.fixture(scope="module")
def converted(make_checkpoint: Callable[[SyntheticSpec], Path],
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    src = make_checkpoint(SPEC)
    out = tmp_path_factory.mktemp("verify") / "out"
    assert main([str(src), str(out), *ARGS, "--quiet", "--max-shard-size", "100k"]) == 0
    assert len(list(out.glob("model-*.safetensors"))) >= 3
    return src, out


@pytest.fixture
def damaged(converted: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    src, out = converted
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return src, copy


def verify(src: Path, out: Path) -> int:
    return main(["verify", str(src), str(out), *ARGS, "--max-ram", "2G"])


def test_clean_output_verifies(converted: tuple[Path, Path],
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert verify(*converted) == 0
    assert "verified" in capsys.readouterr().out


@pytest.mark.parametrize("seed", range(6))
def test_one_flipped_byte_in_any_shard_is_caught(seed: int, damaged: tuple[Path, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    src, out = damaged
    rng = random.Random(seed)
    shard = rng.choice(sorted(out.glob("model-*.safetensors")))
    data = bytearray(shard.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    position = rng.randrange(8 + header_len, len(data))
    data[position] ^= 1 << rng.randrange(8)
    shard.write_bytes(bytes(data))
    assert verify(src, out) == 1
    captured = capsys.readouterr()
    assert "bytes differ" in captured.out and "problem" in captured.err


def test_swapped_tensors_are_caught(damaged: tuple[Path, Path],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    src, out = damaged
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shard = out / index["weight_map"]["model.layers.0.self_attn.q_proj.weight"]
    assert index["weight_map"]["model.layers.0.self_attn.o_proj.weight"] == shard.name
    data = shard.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    q = header["model.layers.0.self_attn.q_proj.weight"]
    o = header["model.layers.0.self_attn.o_proj.weight"]
    q["data_offsets"], o["data_offsets"] = o["data_offsets"], q["data_offsets"]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))
    assert len(text) == n
    shard.write_bytes(data[:8] + text + data[8 + n:])
    assert verify(src, out) == 1
    report = capsys.readouterr().out
    assert "q_proj.weight: bytes differ" in report and "o_proj.weight: bytes differ" in report


@pytest.mark.parametrize("key,value", [("rms_norm_eps", 1e-6), ("num_key_value_heads", 4),
                                       ("rope_theta", 500000.0)])
def test_wrong_config_value_is_caught(key: str, value: object, damaged: tuple[Path, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    src, out = damaged
    config = json.loads((out / "config.json").read_text())
    config[key] = value
    (out / "config.json").write_text(json.dumps(config))
    assert verify(src, out) == 1
    assert f"config.json: {key} is" in capsys.readouterr().out


def test_missing_index_is_an_error(damaged: tuple[Path, Path],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    src, out = damaged
    (out / "model.safetensors.index.json").unlink()
    assert verify(src, out) == 1
    assert "not a complete conversion" in capsys.readouterr().err


def rewrite_header(shard: Path, change: Callable[[dict[str, Any]], object]) -> None:
    """Replace a shard's JSON header by change(header), padded to the same length."""
    data = shard.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    new = change(json.loads(data[8:8 + n]))
    raw = new if isinstance(new, bytes) else json.dumps(new).encode()
    assert len(raw) <= n
    shard.write_bytes(data[:8] + raw.ljust(n) + data[8 + n:])


def first_tensor(header: dict[str, Any]) -> dict[str, Any]:
    return next(v for k, v in header.items() if k != "__metadata__")


def set_field(key: str, value: object) -> Callable[[dict[str, Any]], object]:
    def change(header: dict[str, Any]) -> object:
        first_tensor(header)[key] = value
        return header
    return change


def overlap(header: dict[str, Any]) -> object:
    entries = [v for k, v in header.items() if k != "__metadata__"]
    a, b = sorted(entries, key=lambda e: e["data_offsets"][0])[:2]
    shift = a["data_offsets"][1] - a["data_offsets"][0]
    if b["data_offsets"][1] - b["data_offsets"][0] == shift:  # same size: move b onto a
        b["data_offsets"] = list(a["data_offsets"])
    else:
        a["data_offsets"] = [b["data_offsets"][0] - 1, b["data_offsets"][0] - 1 + shift]
    return header


MALFORMED: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
    ("list", lambda h: list(h), "is a JSON list, not an object"),
    ("not-json", lambda h: b"{not json", "is not valid JSON"),
    ("dtype", set_field("dtype", "Q7"), "unknown dtype 'Q7'"),
    ("negative-dim", set_field("shape", [-1, 64]), "is not a list of non-negative integers"),
    ("bool-dim", set_field("shape", [True]), "is not a list of non-negative integers"),
    ("string-dim", set_field("shape", "64"), "is not a list of non-negative integers"),
    ("offsets-shape", set_field("data_offsets", [0]), "is not two non-negative integers"),
    ("offsets-past-end", set_field("data_offsets", [0, 1 << 40]), "lie outside the"),
    ("offsets-reversed", set_field("data_offsets", [8, 0]), "lie outside the"),
    ("size-mismatch", set_field("shape", [3]), "needs 6"),
    ("overlap", overlap, "overlap in the file"),
    ("entry-not-object", lambda h: {**h, "x.weight": 5}, "entry is not an object"),
    ("metadata-not-str", lambda h: {**h, "__metadata__": {"format": 1}},
     "__metadata__ is not a map of strings to strings"),
    ("metadata-list", lambda h: {**h, "__metadata__": ["pt"]},
     "__metadata__ is not a map of strings to strings"),
]


@pytest.mark.parametrize("change,expected", [(c, e) for _, c, e in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_header_is_a_listed_problem(change: Callable[[dict[str, Any]], object],
                                              expected: str, damaged: tuple[Path, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    src, out = damaged
    shard = sorted(out.glob("model-*.safetensors"))[1]
    rewrite_header(shard, change)
    assert verify(src, out) == 1
    captured = capsys.readouterr()
    printed = " ".join(captured.out.split())
    assert f"{shard.name}: malformed safetensors header" in printed
    assert expected in printed and "problem" in captured.err


def test_header_length_past_the_end_is_a_listed_problem(damaged: tuple[Path, Path],
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    src, out = damaged
    shard = sorted(out.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(struct.pack("<Q", len(data)) + data[8:])
    assert verify(src, out) == 1
    assert "does not fit the file" in " ".join(capsys.readouterr().out.split())


def test_index_naming_a_path_outside_the_folder_is_refused(damaged: tuple[Path, Path],
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    src, out = damaged
    index_path = out / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../elsewhere.safetensors"
    index_path.write_text(json.dumps(index))
    assert verify(src, out) == 1
    assert "weight_map is not a map of tensor names to file names" in capsys.readouterr().err
