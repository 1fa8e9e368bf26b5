"""Everything that happens before the first write: read, detect, check, plan.

`streamconv plan` prints the result of prepare(); convert runs it. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from streamconv.errors import OutputError, ParamsError, TokenizerError
from streamconv.model.detect import detect_model
from streamconv.model.families.registry import describe
from streamconv.model.family_rules import instruct_from_folder
from streamconv.model.hf_config import config_dict, generation_config_dict, to_json_bytes
from streamconv.model.spec import ModelSpec
from streamconv.model.tensor_table import OutputFormat, Split
from streamconv.planning.encoding import Encoding
from streamconv.planning.gguf_file import GGUFLayout, layout_gguf_file
from streamconv.planning.jobs import Plan, plan_conversion
from streamconv.planning.layout import Piece, TensorLayout, hf_layouts, replica_ranks
from streamconv.planning.output_files import OutputFile
from streamconv.planning.source_ranges import locate_reads
from streamconv.source.params import read_params
from streamconv.source.rank_files import resolve_input_dir
from streamconv.source.rank_reader import RankReader
from streamconv.source.tensor_index import Checkpoint, open_checkpoint
from streamconv.system import dtypes
from streamconv.system.dtypes import DType
from streamconv.system.memory import current_rss_bytes, default_max_ram_bytes

DTYPES = {"bf16": dtypes.BFLOAT16, "fp16": dtypes.FLOAT16, "fp32": dtypes.FLOAT32}
DEFAULT_MAX_SHARD_BYTES = 5 << 30
# Replicated tensors compared across rank files: whole norms, and this much of each kv-head copy.
_REPLICA_SAMPLE_BYTES = 1 << 16
# Replicated copies are compared this many bytes at a time (a multiple of every itemsize).
_REPLICA_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ConvertOptions:
    max_ram_bytes: int | None = None  # None: memory.default_max_ram_bytes()
    dtype: str = "auto"
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    llama_version: str = "auto"
    force: bool = False
    resume: bool = False
    instruct: bool | None = None  # None: from the folder's name (family_rules.py)
    tokenizer: bool = True
    output_format: OutputFormat = OutputFormat.SAFETENSORS
    outtype: str = "auto"  # GGUF: f32, f16, bf16, q8_0 or auto (llama.cpp's --outtype)
    gguf_name: str = "model.gguf"  # GGUF: the output file's name
    model_name: str | None = None  # GGUF: general.name (None: family and size, gguf_metadata)


@dataclass(frozen=True)
class Prepared:
    input_dir: Path
    checkpoint: Checkpoint
    spec: ModelSpec
    layouts: list[TensorLayout]
    plan: Plan
    tokenizer_path: Path | None
    tokenizer_kind: str | None
    warnings: list[str] = field(default_factory=list)
    gguf: GGUFLayout | None = None  # the GGUF file's layout, when that is the output
    gguf_outtype: str | None = None  # resolved from auto


def find_tokenizer(input_dir: Path) -> Path | None:
    """tokenizer.model next to params.json, or one folder up, where Meta's LLaMA 2 download
    keeps the one tokenizer shared by all sizes."""
    for candidate in (input_dir / "tokenizer.model", input_dir.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    return None


def _check_tokenizer_vocab(path: Path, spec: ModelSpec) -> None:
    from streamconv.tokenizer.files import tokenizer_vocab_size

    n_tokens = tokenizer_vocab_size(path, family=spec.family)
    if n_tokens != spec.vocab_size:
        raise TokenizerError(f"{path} has {n_tokens} tokens but the model's embedding has "
                             f"{spec.vocab_size} rows; use the tokenizer.model that came with "
                             "this checkpoint")


def replica_warnings(checkpoint: Checkpoint, spec: ModelSpec,
                     layouts: list[TensorLayout]) -> list[str]:
    """Copies of one tensor on several ranks should agree; small differences are reported,
    not fatal (some Meta 3.x checkpoints have norms that differ slightly across rank files)."""
    warnings: list[str] = []
    if spec.n_ranks == 1:
        return warnings
    with RankReader(checkpoint.rank_paths) as reader:
        for layout in layouts:
            for piece in layout.pieces:
                if piece.split is not Split.COLS:
                    warnings += _replica_differences(checkpoint, reader, piece,
                                                     replica_ranks(piece, layout, spec),
                                                     n_kv_heads=spec.n_kv_heads)
    return warnings


def _replica_differences(checkpoint: Checkpoint, reader: RankReader, piece: Piece,
                         groups: list[list[int]], *, n_kv_heads: int) -> list[str]:
    """Compared in pieces of _REPLICA_CHUNK_BYTES, one per copy at a time: a large replicated
    tensor (Llama 3.2 Vision's 62.5 MiB gated position embedding, on 8 ranks) must not hold
    all its copies in memory at once, which --max-ram does not count."""
    warnings = []
    for group in groups:
        if len(group) < 2:
            continue
        first = checkpoint.tensors[group[0]][piece.meta_name]
        n = first.nbytes if piece.split is Split.REPLICATED else min(
            first.nbytes, _REPLICA_SAMPLE_BYTES)
        differs, max_diff = False, 0.0
        for start in range(0, n, _REPLICA_CHUNK_BYTES):
            size = min(_REPLICA_CHUNK_BYTES, n - start)
            copies = []
            for rank_idx in group:
                ref = checkpoint.tensors[rank_idx][piece.meta_name]
                buf = bytearray(size)
                reader.read_into(rank_idx, ref.offset_bytes + start, memoryview(buf))
                copies.append(bytes(buf))
            if all(c == copies[0] for c in copies[1:]):
                continue
            if piece.split is Split.ROWS:
                # Rows of a split tensor held by several ranks are copies of one kv head (fewer
                # kv heads than ranks): copies that differ are different heads, so n_kv_heads
                # is wrong, and keeping one copy would silently drop heads.
                paths = ", ".join(checkpoint.rank_paths[i].name for i in group)
                raise ParamsError(f"params.json says n_kv_heads={n_kv_heads}, "
                                  f"so {paths} should hold copies of the same {piece.meta_name} "
                                  "rows, but they differ: n_kv_heads in params.json is wrong "
                                  "for these rank files; use the checkpoint's own params.json")
            differs = True
            max_diff = max(max_diff, _max_difference(copies, first.dtype))
        if differs:
            warnings.append(
                f"{piece.meta_name} differs across ranks {group} (max abs difference "
                f"{max_diff:.3g}); using the copy in rank {group[0]}")
    return warnings


def _max_difference(copies: list[bytes], dtype: DType) -> float:
    """Only when copies differ (rare): the arithmetic needs torch."""
    import torch

    values = [torch.frombuffer(bytearray(c), dtype=dtype.torch).float() for c in copies]
    return max(float((v - values[0]).abs().max()) for v in values[1:])


def hf_files(spec: ModelSpec, *, dtype: DType, tokenizer_path: Path | None) -> dict[str, bytes]:
    """config, generation config and tokenizer files of the Hugging Face folder, as bytes."""
    files = {
        "config.json": to_json_bytes(config_dict(spec, dtype=dtype)),
        "generation_config.json": to_json_bytes(generation_config_dict(spec)),
    }
    more = describe(spec.family).extra_files
    if more is not None:
        files.update({name: to_json_bytes(dict(content)) for name, content in more(spec).items()})
    if tokenizer_path is not None:
        from streamconv.tokenizer.files import tokenizer_files

        files.update(tokenizer_files(tokenizer_path, family=spec.family,
                                     instruct=spec.instruct,
                                     model_max_length=spec.max_position_embeddings))
    return files


def _gguf_layout(spec: ModelSpec, layouts: list[TensorLayout], options: ConvertOptions,
                 tokenizer_path: Path | None) -> tuple[GGUFLayout, str]:
    """The GGUF file's layout; its header holds the tokenizer, so that is built first (2-3 s)."""
    from streamconv.model.gguf_metadata import auto_outtype, gguf_metadata

    refusal = describe(spec.family).gguf_refusal
    if refusal is not None and (why := refusal(spec)) is not None:
        raise OutputError(why)
    if tokenizer_path is None:
        raise TokenizerError("a GGUF file needs the tokenizer (llama.cpp reads it from the "
                             "file); copy Meta's tokenizer.model next to params.json instead "
                             "of passing --no-tokenizer")
    outtype = auto_outtype(spec.dtype) if options.outtype == "auto" else options.outtype
    entries = gguf_metadata(spec, hf_files=hf_files(spec, dtype=spec.dtype,
                                                    tokenizer_path=tokenizer_path),
                            outtype=outtype, model_name=options.model_name)
    layout = layout_gguf_file(spec, layouts, file_name=options.gguf_name, entries=entries,
                              outtype=outtype, hf_shard_bytes=DEFAULT_MAX_SHARD_BYTES)
    return layout, outtype


def _instruct(input_dir: Path, options: ConvertOptions) -> tuple[bool, str]:
    if options.instruct is not None:
        return options.instruct, "--instruct" if options.instruct else "--base"
    return instruct_from_folder(input_dir)


def prepare(input_dir: Path, options: ConvertOptions) -> Prepared:
    """Read and check everything and decide the plan."""
    given_dir = input_dir
    input_dir = resolve_input_dir(input_dir)  # a wrong folder is the likeliest error: first
    params = read_params(input_dir)
    checkpoint = open_checkpoint(input_dir)
    tokenizer_path = find_tokenizer(input_dir) if options.tokenizer else None
    if options.tokenizer and tokenizer_path is None:
        raise TokenizerError(f"no tokenizer.model in {input_dir} or its parent folder; copy "
                             "Meta's tokenizer.model next to params.json, or pass --no-tokenizer "
                             "to convert the weights only")
    kind = None
    if tokenizer_path is not None:
        from streamconv.tokenizer.files import detect_tokenizer_kind

        kind = detect_tokenizer_kind(tokenizer_path)
    override = None if options.llama_version == "auto" else options.llama_version
    spec = detect_model(params, checkpoint, family_override=override, tokenizer_kind=kind,
                        instruct=_instruct(given_dir, options))
    if tokenizer_path is not None:
        _check_tokenizer_vocab(tokenizer_path, spec)
    layouts = hf_layouts(spec, output_format=options.output_format)
    dst_dtype = spec.dtype if options.dtype == "auto" else DTYPES[options.dtype]
    encodings = {layout.hf_name: Encoding(dst_dtype) for layout in layouts}
    files: list[OutputFile] | None = None
    gguf, outtype = None, None
    if options.output_format is OutputFormat.GGUF:
        gguf, outtype = _gguf_layout(spec, layouts, options, tokenizer_path)
        encodings, files = gguf.encodings, [gguf.file]
    budget = options.max_ram_bytes or default_max_ram_bytes()
    if any(layout.src_dtype != encodings[layout.hf_name].values
           or encodings[layout.hf_name].two_stage for layout in layouts):
        # Casts, quantization and FP8 dequantization are arithmetic, done by torch
        # (runtime/executor.py): imported now, so that the baseline the plan is measured on
        # holds it.
        import torch  # noqa: F401
    plan = plan_conversion(spec, layouts, dst_dtype=dst_dtype, budget_bytes=budget,
                           baseline_bytes=current_rss_bytes(),
                           max_shard_bytes=options.max_shard_bytes, encodings=encodings,
                           files=files)
    plan = locate_reads(plan, checkpoint)  # every block's byte ranges (source_ranges.py)
    warnings = [f"params.json has keys streamconv does not use: {', '.join(params.unknown_keys)}"
                ] if params.unknown_keys else []
    warnings += spec.doubts
    if input_dir != given_dir:
        warnings.append(f"reading Meta's files from {input_dir}")
    warnings += replica_warnings(checkpoint, spec, layouts)
    return Prepared(input_dir, checkpoint, spec, layouts, plan, tokenizer_path, kind, warnings,
                    gguf, outtype)
