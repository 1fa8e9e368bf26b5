"""llama.cpp as the oracle of the GGUF tests: its converter, its loader, a byte-level diff.

The gguf venv (scripts/make_gguf_env.sh, `make gguf-env`) holds llama-cpp-python built from its
sdist and the very llama.cpp sources it vendors, convert_hf_to_gguf.py among them. Everything
llama.cpp does runs there in a child process: the test process never imports llama_cpp (nor the
converter's transformers), it only reads GGUF files with gguf-py, a runtime dependency.
$STREAMCONV_GGUF_PYTHON names the venv's python (default <repo>/.venv-gguf/bin/python); without
it every helper here skips through conftest.oracle_unavailable (fails under
STREAMCONV_REQUIRE_ORACLES=1).
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import gguf
import numpy as np
from conftest import REPO, oracle_unavailable

GGUF_PYTHON_ENV = "STREAMCONV_GGUF_PYTHON"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # scripts/make_gguf_env.sh
RUNNER = Path(__file__).with_name("gguf_llama_runner.py")
_PROBE = "import gguf, llama_cpp, transformers, sentencepiece; print(llama_cpp.__version__)"


@functools.lru_cache(maxsize=1)
def _find_gguf_python() -> tuple[Path | None, Path | None, str]:
    configured = os.environ.get(GGUF_PYTHON_ENV)
    python = Path(configured) if configured else REPO / ".venv-gguf" / "bin" / "python"
    origin = f"${GGUF_PYTHON_ENV}" if configured else "<repo>/.venv-gguf"
    if not python.exists():
        return None, None, (f"no gguf venv python at {python} ({origin}); run `make gguf-env` "
                            f"or set {GGUF_PYTHON_ENV}")
    venv = python.parent.parent  # not resolved: bin/python is a link to the base interpreter
    converter = (venv / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor"
                 / "llama.cpp" / "convert_hf_to_gguf.py")
    if not converter.is_file():
        return None, None, f"{converter} is missing; rerun scripts/make_gguf_env.sh"
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True,
                           timeout=300, check=False)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return None, None, f"{python} cannot import llama_cpp/gguf/transformers: {last}"
    return python, converter, ""


def gguf_python() -> tuple[Path, Path]:
    """(the gguf venv's python, llama.cpp's convert_hf_to_gguf.py), or skip saying why."""
    python, converter, why_not = _find_gguf_python()
    if python is None or converter is None:
        oracle_unavailable(why_not)
    return python, converter


# Runs llama.cpp's converter, with get_vocab_base_pre falling back to a given pre-tokenizer
# name where llama.cpp raises "BPE pre-tokenizer was not recognized" (argv: name, converter
# path, converter arguments).
_CONVERT_WITH_PRE = """
import runpy, sys
name, converter = sys.argv[1], sys.argv[2]
root = converter.rsplit("/", 1)[0]
sys.path[:0] = [root, root + "/gguf-py"]
import conversion.base as base
known = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:
        return name
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = [converter, *sys.argv[3:]]
runpy.run_path(converter, run_name="__main__")
"""


def llama_cpp_convert(hf_dir: Path, out_path: Path, *, outtype: str,
                      unknown_pre_tokenizer: str | None = None) -> Path:
    """llama.cpp's own convert_hf_to_gguf.py on ``hf_dir``, writing ``out_path``. Without
    NO_LOCAL_GGUF the converter puts the gguf-py it ships with first on sys.path, so it runs with
    its own gguf-py whatever else is installed.

    llama.cpp names a BPE pre-tokenizer by hashing the ids of a fixed text and refuses a
    vocabulary whose hash it does not know (any synthetic one). ``unknown_pre_tokenizer`` names
    it instead in that one case (tests of Llama 4, whose real tokenizer is not in
    ../shared/data); everything else is llama.cpp's own code."""
    python, converter = gguf_python()
    args = [str(hf_dir), "--outfile", str(out_path), "--outtype", outtype]
    command = ([str(python), str(converter), *args] if unknown_pre_tokenizer is None else
               [str(python), "-c", _CONVERT_WITH_PRE, unknown_pre_tokenizer, str(converter),
                *args])
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=1800,
        env={**{k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"},
             "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise AssertionError(f"convert_hf_to_gguf.py failed on {hf_dir}:\n"
                             f"{result.stderr[-4000:]}")
    return out_path


# --- comparing two files -------------------------------------------------------------------

# GGUF value type -> struct format of one scalar (gguf-py's GGUFValueType numbering).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # as stored: fastest-varying dimension first
    ggml_type: int
    offset: int  # from the start of the file
    n_bytes: int


@dataclass(frozen=True)
class GGUFContents:
    metadata: list[tuple[str, tuple[int, ...], Any]]
    tensors: list[TensorInfo]


class _Cursor:
    """A position in the file's bytes. gguf-py's GGUFReader takes 20 s on a 128k vocabulary
    (a numpy view per string); this reads the same layout with struct in about a second."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        text = self.data[self.pos:self.pos + n].decode("utf-8")
        self.pos += n
        return text

    def value(self, value_type: int) -> tuple[tuple[int, ...], Any]:
        if value_type == _STRING:
            return (value_type,), self.string()
        if value_type != _ARRAY:
            return (value_type,), self.scalar(_SCALARS[value_type])
        sub_type, count = self.scalar("<I"), self.scalar("<Q")
        if sub_type == _STRING:
            return (value_type, sub_type), [self.string() for _ in range(count)]
        fmt = _SCALARS[sub_type]
        size = struct.calcsize(fmt)
        values = np.frombuffer(self.data, dtype=np.dtype(fmt), count=count,
                               offset=self.pos).tolist()
        self.pos += size * count
        return (value_type, sub_type), values


def read_gguf(path: Path) -> GGUFContents:
    """Metadata (key, value types, value) in file order and tensor infos of a GGUF v3 file."""
    data = path.read_bytes()
    cursor = _Cursor(data)
    if data[:4] != b"GGUF":
        raise AssertionError(f"{path} is not a GGUF file")
    cursor.pos = 4
    version, n_tensors, n_kv = cursor.scalar("<I"), cursor.scalar("<Q"), cursor.scalar("<Q")
    assert version == 3, f"{path}: GGUF version {version}"
    metadata = []
    for _ in range(n_kv):
        key = cursor.string()
        types, value = cursor.value(cursor.scalar("<I"))
        metadata.append((key, types, value))
    raw = []
    for _ in range(n_tensors):
        name = cursor.string()
        shape = tuple(cursor.scalar("<Q") for _ in range(cursor.scalar("<I")))
        raw.append((name, shape, cursor.scalar("<I"), cursor.scalar("<Q")))
    alignment = next((v for k, _, v in metadata if k == "general.alignment"), 32)
    start = -(-cursor.pos // alignment) * alignment
    tensors = []
    for name, shape, ggml_type, offset in raw:
        block, type_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
        n_bytes = math.prod(shape) // block * type_bytes
        tensors.append(TensorInfo(name, shape, ggml_type, start + offset, n_bytes))
    return GGUFContents(metadata, tensors)


def metadata_of(path: Path) -> list[tuple[str, tuple[int, ...], Any]]:
    """(key, value types, value) of every metadata entry in file order; value types are
    (GGUFValueType,) or (ARRAY, element type)."""
    return read_gguf(path).metadata


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _list_difference(key: str, ours: Sequence[Any], theirs: Sequence[Any]) -> str:
    if len(ours) != len(theirs):
        return f"{key}: {len(ours)} elements, llama.cpp has {len(theirs)}"
    first = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
    return (f"{key}: element {first} is {_describe(ours[first])}, "
            f"llama.cpp has {_describe(theirs[first])}")


def metadata_differences(ours: Iterable[tuple[str, tuple[int, ...], Any]],
                         theirs: Iterable[tuple[str, tuple[int, ...], Any]], *,
                         ignore_keys: Iterable[str] = ()) -> list[str]:
    """Key order, types and values; float values compared as the float32 both files hold."""
    ignored = set(ignore_keys)
    ours_list = [e for e in ours if e[0] not in ignored]
    theirs_list = [e for e in theirs if e[0] not in ignored]
    out: list[str] = []
    ours_keys, theirs_keys = [e[0] for e in ours_list], [e[0] for e in theirs_list]
    if set(ours_keys) != set(theirs_keys):
        out += [f"{k}: only in ours" for k in ours_keys if k not in theirs_keys]
        out += [f"{k}: only in llama.cpp's" for k in theirs_keys if k not in ours_keys]
    elif ours_keys != theirs_keys:
        out.append(f"key order differs: ours {ours_keys}, llama.cpp's {theirs_keys}")
    theirs_by_key = {k: (t, v) for k, t, v in theirs_list}
    for key, types, value in ours_list:
        if key not in theirs_by_key:
            continue
        their_types, their_value = theirs_by_key[key]
        if types != their_types:
            out.append(f"{key}: type {types}, llama.cpp has {their_types}")
        elif value != their_value:
            if isinstance(value, list) and isinstance(their_value, list):
                out.append(_list_difference(key, value, their_value))
            else:
                out.append(f"{key}: {_describe(value)}, llama.cpp has {_describe(their_value)}")
    return out


def write_metadata_file(entries: Iterable[Any], path: Path) -> Path:
    """A GGUF file holding only ``entries`` (GGUFEntry-like: key, value, value_type, sub_type),
    written by gguf-py's own GGUFWriter: metadata_of() reads it back as the file stores it, so a
    comparison covers the serialized types and float32 values, not Python's."""
    items = list(entries)
    arch = next(str(e.value) for e in items if e.key == gguf.Keys.General.ARCHITECTURE)
    writer = gguf.GGUFWriter(path, arch=arch)  # writes general.architecture first
    for entry in items:
        if entry.key == gguf.Keys.General.ARCHITECTURE:
            continue
        writer.add_key_value(entry.key, entry.value, entry.value_type, entry.sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def gguf_differences(ours: Path, theirs: Path, *, ignore_keys: Iterable[str] = ()) -> list[str]:
    """Every difference between two GGUF files (empty: equal): each metadata key's presence,
    position, type and value, and each tensor's name, position, type, shape and bytes."""
    out = metadata_differences(metadata_of(ours), metadata_of(theirs), ignore_keys=ignore_keys)
    ours_tensors = {t.name: t for t in read_gguf(ours).tensors}
    theirs_tensors = {t.name: t for t in read_gguf(theirs).tensors}
    if list(ours_tensors) != list(theirs_tensors):
        out.append(f"tensor names/order differ: ours {list(ours_tensors)}, "
                   f"llama.cpp's {list(theirs_tensors)}")
    with ours.open("rb") as ours_file, theirs.open("rb") as theirs_file:
        for name, tensor in ours_tensors.items():
            other = theirs_tensors.get(name)
            if other is None:
                continue
            if tensor.ggml_type != other.ggml_type:
                out.append(f"tensor {name}: type {_type_name(tensor)}, llama.cpp has "
                           f"{_type_name(other)}")
            elif tensor.shape != other.shape:
                out.append(f"tensor {name}: shape {list(tensor.shape)}, llama.cpp has "
                           f"{list(other.shape)}")
            elif _tensor_bytes(ours_file, tensor) != _tensor_bytes(theirs_file, other):
                out.append(f"tensor {name}: bytes differ")
    return out


def _type_name(tensor: TensorInfo) -> str:
    return gguf.GGMLQuantizationType(tensor.ggml_type).name


def _tensor_bytes(file: BinaryIO, tensor: TensorInfo) -> bytes:
    file.seek(tensor.offset)
    return file.read(tensor.n_bytes)


# --- running llama.cpp on a file -----------------------------------------------------------

def _run(job: dict[str, Any]) -> dict[str, Any]:
    python, _ = gguf_python()
    with tempfile.TemporaryDirectory(prefix="gguf-oracle-") as scratch:
        job = {**job, "scratch": scratch}
        result = subprocess.run([str(python), str(RUNNER), json.dumps(job)],
                                capture_output=True, text=True, check=False, timeout=1800)
        if result.returncode != 0:
            raise AssertionError(f"llama.cpp runner failed on {job.get('model')}:\n"
                                 f"{result.stderr[-4000:]}")
        answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        if "logits_file" in answer:
            answer["logits"] = np.load(answer.pop("logits_file"))
        return answer


def llama_cpp_logits(model: Path, tokens: Sequence[int]) -> np.ndarray:
    """llama.cpp's logits (n_tokens x n_vocab, float32) for one sequence, all positions."""
    logits: np.ndarray = _run({"model": str(model), "op": "logits",
                               "tokens": list(tokens)})["logits"]
    return logits


def llama_cpp_greedy(model: Path, prompt: Sequence[int], *, n_new: int) -> list[int]:
    """The n_new tokens llama.cpp generates greedily (argmax) after ``prompt``."""
    answer = _run({"model": str(model), "op": "greedy", "tokens": list(prompt), "n": n_new})
    return [int(t) for t in answer["tokens"]]


def llama_cpp_tokenize(model: Path, texts: Sequence[str], *, add_bos: bool = False,
                       special: bool = False) -> list[list[int]]:
    """llama.cpp's tokenization of each text with the vocabulary in ``model``."""
    answer = _run({"model": str(model), "op": "tokenize", "texts": list(texts),
                   "add_bos": add_bos, "special": special})
    return [[int(t) for t in ids] for ids in answer["tokens"]]
