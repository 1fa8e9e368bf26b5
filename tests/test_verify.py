"""`streamconv verify` passes a correct conversion and catches damage anywhere in it."""

from __future__ import annotations

import json
import random
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from streamconv.cli import main
from streamconv.family import Family
from streamconv.synthetic import SyntheticSpec, tiny

SPEC = tiny(Family.LLAMA2, n_shards=2, with_tokenizer=False, dtype="bfloat16")
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
