"""`streamconv verify IN OUT`: recompute every output byte from the input and compare.

The expected bytes come from the same planner and executor as convert, within the same budget;
the actual bytes are located through OUT's own index and shard headers (so an output written by
another tool, with another shard size, is checked just as well). Besides tensor bytes it checks
the index, every shard header, config.json and generation_config.json against the values
detected from the input, and the tokenizer files against a fresh conversion of tokenizer.model.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from streamconv.errors import OutputError
from streamconv.pipeline.conversion import extra_files
from streamconv.pipeline.preparation import ConvertOptions, Prepared, prepare
from streamconv.planning.jobs import Job
from streamconv.planning.output_files import INDEX_NAME
from streamconv.planning.safetensors_format import HeaderProblem, SafetensorsHeader, read_header
from streamconv.runtime.executor import JobRunner, run_jobs
from streamconv.source.rank_reader import RankReader

_DTYPE_OPTION = {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}
_CHUNK_BYTES = 4 << 20


@dataclass(frozen=True)
class Located:
    """Where OUT keeps one tensor."""

    file_idx: int
    dtype: str
    shape: tuple[int, ...]
    data_offset: int  # absolute offset in the file


@dataclass
class VerifyResult:
    problems: list[str] = field(default_factory=list)
    tensors_checked: int = 0
    bytes_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_header(path: Path, problems: list[str]) -> SafetensorsHeader | None:
    try:
        header = read_header(path)
    except OSError as e:
        problems.append(f"{path.name}: cannot be read ({e.strerror})")
        return None
    except HeaderProblem as e:
        problems.append(f"{path.name}: malformed safetensors header: {e}")
        return None
    if header.metadata.get("format") != "pt":
        problems.append(f"{path.name}: header lacks __metadata__ format 'pt' (transformers "
                        "refuses such files)")
    return header


def _read_weight_map(output_dir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    index_path = output_dir / INDEX_NAME
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OutputError(f"{index_path} is missing or unreadable ({e}); {output_dir} is not a "
                          "complete conversion") from e
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v == Path(v).name
            and v not in ("", ".", "..") for k, v in weight_map.items()):
        raise OutputError(f"{index_path}: weight_map is not a map of tensor names to file "
                          f"names in {output_dir}; {output_dir} is not a complete conversion")
    return index, weight_map


def _locate(output_dir: Path, result: VerifyResult) -> tuple[list[Path], dict[str, Located]]:
    index, weight_map = _read_weight_map(output_dir)
    files = sorted(set(weight_map.values()))
    located: dict[str, Located] = {}
    total = 0
    for file_idx, name in enumerate(files):
        header = _read_header(output_dir / name, result.problems)
        if header is None:
            continue
        spans = []
        for hf_name, entry in header.tensors.items():
            spans.append((entry.begin, entry.end))
            located[hf_name] = Located(file_idx, entry.dtype, entry.shape,
                                       header.data_start + entry.begin)
            if weight_map.get(hf_name) != name:
                result.problems.append(f"{name} holds {hf_name}, which the index puts in "
                                       f"{weight_map.get(hf_name)}")
            total += entry.end - entry.begin
        spans.sort()
        contiguous = bool(spans) and spans[0][0] == 0 and all(
            a[1] == b[0] for a, b in pairwise(spans))
        if not contiguous or header.file_bytes != header.data_start + spans[-1][1]:
            result.problems.append(f"{name}: tensor data is not contiguous or the file size "
                                   f"({header.file_bytes}) does not match its header")
    metadata = index.get("metadata") if isinstance(index, dict) else None
    total_size = metadata.get("total_size") if isinstance(metadata, dict) else None
    if total_size != total:
        result.problems.append(f"{INDEX_NAME}: total_size is {total_size}, the shards hold "
                               f"{total}")
    for hf_name in sorted(set(weight_map) - set(located)):
        result.problems.append(f"{INDEX_NAME} lists {hf_name}, which no shard header holds")
    return [output_dir / name for name in files], located


class _Comparer:
    """The executor's sink for verify: compares a job's rows with OUT's bytes."""

    def __init__(self, paths: list[Path], located: dict[str, Located], prepared: Prepared) -> None:
        self.reader = RankReader(paths)
        self.located = located
        self.mismatched: set[str] = set()
        self.lock = threading.Lock()
        self.skip: set[str] = set()
        dtype_name = prepared.plan.dst_dtype.safetensors
        for layout in prepared.layouts:
            where = located.get(layout.hf_name)
            if where is None or where.dtype != dtype_name or where.shape != layout.shape:
                self.skip.add(layout.hf_name)

    def __call__(self, job: Job, data: memoryview) -> None:
        if job.hf_name in self.skip:
            return
        where = self.located[job.hf_name]
        row_bytes = len(data) // (job.row_stop - job.row_start)
        offset = where.data_offset + job.row_start * row_bytes
        actual = bytearray(min(_CHUNK_BYTES, len(data)))
        for pos in range(0, len(data), len(actual)):
            n = min(len(actual), len(data) - pos)
            view = memoryview(actual)[:n]
            self.reader.read_into(where.file_idx, offset + pos, view)
            if view != data[pos:pos + n]:
                with self.lock:
                    self.mismatched.add(job.hf_name)
                return


def _check_json(output_dir: Path, expected: dict[str, bytes], result: VerifyResult) -> None:
    for name, content in expected.items():
        path = output_dir / name
        if not path.is_file():
            result.problems.append(f"{name} is missing")
        elif name.endswith("config.json") and name != "tokenizer_config.json":
            want = json.loads(content)
            try:
                got = json.loads(path.read_text())
            except ValueError:
                result.problems.append(f"{name} is not valid JSON")
                continue
            for key, value in want.items():
                if got.get(key) != value:
                    result.problems.append(f"{name}: {key} is {got.get(key)!r}, expected "
                                           f"{value!r}")
        elif path.read_bytes() != content:
            result.problems.append(f"{name} differs from what tokenizer.model converts to")


def verify(input_dir: Path, output_dir: Path, options: ConvertOptions) -> VerifyResult:
    result = VerifyResult()
    paths, located = _locate(output_dir, result)
    dtypes = {where.dtype for where in located.values()}
    if len(dtypes) == 1 and next(iter(dtypes)) in _DTYPE_OPTION:
        options = replace(options, dtype=_DTYPE_OPTION[next(iter(dtypes))])
    instruct = (options.instruct if options.instruct is not None
                else _written_as_instruct(output_dir))
    prepared = prepare(input_dir, replace(options, instruct=instruct))
    expected_names = {layout.hf_name for layout in prepared.layouts}
    for hf_name in sorted(expected_names - set(located)):
        result.problems.append(f"{hf_name} is missing from the output")
    for hf_name in sorted(set(located) - expected_names):
        result.problems.append(f"{hf_name} is in the output but not expected")
    comparer = _Comparer(paths, located, prepared)
    for hf_name in sorted(comparer.skip & set(located)):
        where = located[hf_name]
        result.problems.append(f"{hf_name} has dtype {where.dtype} shape {list(where.shape)}, "
                               "not what the input gives")
    with RankReader(prepared.checkpoint.read_paths) as reader, comparer.reader:
        runner = JobRunner(prepared.plan, reader, comparer)

        def on_done(job: Job, n_read: int) -> None:
            result.bytes_checked += job.out_bytes

        run_jobs(prepared.plan, prepared.plan.jobs, runner, on_done)
    result.problems += [f"{name}: bytes differ from the input's conversion"
                        for name in sorted(comparer.mismatched)]
    result.tensors_checked = len(expected_names & set(located))
    _check_json(output_dir, extra_files(prepared), result)
    return result


def _written_as_instruct(output_dir: Path) -> bool:
    """A chat model's conversion is recognisable by its list of eos ids (LLaMA 3.x) or its chat
    template."""
    try:
        generation = json.loads((output_dir / "generation_config.json").read_text())
    except (OSError, ValueError):
        generation = {}
    try:
        tokenizer_config = json.loads((output_dir / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        tokenizer_config = {}
    return (isinstance(generation, dict) and isinstance(generation.get("eos_token_id"), list)
            or isinstance(tokenizer_config, dict) and "chat_template" in tokenizer_config)
