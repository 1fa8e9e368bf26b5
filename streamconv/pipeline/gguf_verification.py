"""`streamconv verify IN OUT.gguf`: recompute the GGUF file from the input and compare.

The file's own metadata says how it was made (general.file_type: the outtype; a chat template:
an instruct model; --model-name must be given again if convert had it); with those, prepare()
lays out the expected file exactly as convert did. Then the header (magic, metadata, tensor
infos with every name, type, shape and offset, the padding, the generated rope_freqs tensor)
must equal the expected bytes, the file must have the expected size, and every tensor's bytes
are recomputed by the same executor, within the same budget, and compared with the file's.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import gguf

from streamconv.errors import OutputError
from streamconv.model.gguf_metadata import GGUF_FILE_TYPES
from streamconv.pipeline.preparation import ConvertOptions, prepare
from streamconv.pipeline.verification import VerifyResult
from streamconv.planning.jobs import Job
from streamconv.runtime.executor import JobRunner, run_jobs
from streamconv.source.rank_reader import RankReader

_SCALAR_SIZES = {gguf.GGUFValueType.UINT8: 1, gguf.GGUFValueType.INT8: 1,
                 gguf.GGUFValueType.UINT16: 2, gguf.GGUFValueType.INT16: 2,
                 gguf.GGUFValueType.UINT32: 4, gguf.GGUFValueType.INT32: 4,
                 gguf.GGUFValueType.FLOAT32: 4, gguf.GGUFValueType.BOOL: 1,
                 gguf.GGUFValueType.UINT64: 8, gguf.GGUFValueType.INT64: 8,
                 gguf.GGUFValueType.FLOAT64: 8}
_CHUNK_BYTES = 4 << 20


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError("file ends inside its header")
    return data


def _skip_value(f: BinaryIO, value_type: int) -> object:
    """Read one value; strings and scalars are returned, arrays skipped (None)."""
    kind = gguf.GGUFValueType(value_type)
    if kind is gguf.GGUFValueType.STRING:
        (n,) = struct.unpack("<Q", _read(f, 8))
        return _read(f, n).decode("utf-8", errors="replace")
    if kind is gguf.GGUFValueType.ARRAY:
        sub, count = struct.unpack("<IQ", _read(f, 12))
        if gguf.GGUFValueType(sub) in _SCALAR_SIZES:
            f.seek(count * _SCALAR_SIZES[gguf.GGUFValueType(sub)], 1)
        else:
            for _ in range(count):
                _skip_value(f, sub)
        return None
    fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[_SCALAR_SIZES[kind]]
    value: int = struct.unpack(fmt, _read(f, _SCALAR_SIZES[kind]))[0]
    return value


def read_gguf_keys(path: Path) -> dict[str, object]:
    """Every metadata key of a GGUF file with its string or integer value (arrays: None)."""
    with open(path, "rb") as f:
        magic, version, _n_tensors, n_kv = struct.unpack("<IIQQ", _read(f, 24))
        if magic != gguf.GGUF_MAGIC or version != gguf.GGUF_VERSION:
            raise ValueError("not a GGUF v3 file")
        keys: dict[str, object] = {}
        for _ in range(n_kv):
            (n,) = struct.unpack("<Q", _read(f, 8))
            key = _read(f, n).decode("utf-8", errors="replace")
            (value_type,) = struct.unpack("<I", _read(f, 4))
            keys[key] = _skip_value(f, value_type)
        return keys


def _written_options(path: Path, options: ConvertOptions) -> ConvertOptions:
    try:
        keys = read_gguf_keys(path)
    except (OSError, ValueError, struct.error) as e:
        raise OutputError(f"{path} is not a readable GGUF file ({e}); convert again (with "
                          "--force)") from e
    by_type = {int(t): name for name, t in GGUF_FILE_TYPES.items()}
    outtype = options.outtype
    if outtype == "auto":
        file_type = keys.get("general.file_type")
        outtype = by_type.get(file_type, "auto") if isinstance(file_type, int) else "auto"
    instruct = options.instruct
    if instruct is None:
        instruct = "tokenizer.chat_template" in keys
    # general.name is not read back: the name convert derived (or was given with --model-name)
    # also shapes general.basename and friends, so verify derives it the same way.
    return replace(options, outtype=outtype, instruct=instruct, gguf_name=path.name)


def _header_problem(expected: bytes, actual: bytes, data_start: int) -> str:
    at = next((i for i, (a, b) in enumerate(zip(expected, actual, strict=False)) if a != b),
              min(len(expected), len(actual)))
    where = "generated tensors (rope_freqs)" if at >= data_start else "metadata or tensor infos"
    return (f"header differs from the input's conversion at byte {at} ({where}) of "
            f"{len(expected)}")


def verify_gguf(input_dir: Path, out_path: Path, options: ConvertOptions) -> VerifyResult:
    result = VerifyResult()
    if not out_path.is_file():
        raise OutputError(f"{out_path} does not exist; convert first")
    prepared = prepare(input_dir, _written_options(out_path, options))
    assert prepared.gguf is not None
    out_file = prepared.gguf.file
    size = out_path.stat().st_size
    if size != out_file.total_bytes:
        result.problems.append(f"{out_path.name}: {size} bytes, the input's conversion has "
                               f"{out_file.total_bytes}")
    with open(out_path, "rb") as f:
        actual_header = f.read(out_file.data_start)
    if actual_header != out_file.header:
        result.problems.append(_header_problem(out_file.header, actual_header,
                                               len(out_file.header)))
    mismatched: set[str] = set()
    lock = threading.Lock()
    with RankReader([out_path]) as ours, RankReader(prepared.checkpoint.read_paths) as reader:

        def compare(job: Job, data: memoryview) -> None:
            actual = bytearray(min(_CHUNK_BYTES, len(data)))
            for pos in range(0, len(data), len(actual)):
                n = min(len(actual), len(data) - pos)
                view = memoryview(actual)[:n]
                try:
                    ours.read_into(0, job.file_offset + pos, view)
                except (OSError, ValueError):
                    view[:] = bytes(n)  # a short file: reported by its size
                if view != data[pos:pos + n]:
                    with lock:
                        mismatched.add(job.hf_name)
                    return

        def on_done(job: Job, n_read: int) -> None:
            result.bytes_checked += job.out_bytes

        runner = JobRunner(prepared.plan, reader, compare)
        run_jobs(prepared.plan, prepared.plan.jobs, runner, on_done)
    names = {t.layout.hf_name: g.gguf_name
             for t, g in zip(out_file.tensors, prepared.gguf.tensors[-len(out_file.tensors):],
                             strict=True)}
    result.problems += [f"{names[hf_name]}: bytes differ from the input's conversion"
                        for hf_name in sorted(mismatched)]
    result.tensors_checked = len(prepared.gguf.tensors)
    return result
