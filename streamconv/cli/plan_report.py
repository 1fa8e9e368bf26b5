"""`streamconv plan`: what was detected, where each value came from, and the memory schedule."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from streamconv.cli.dtype_label import source_dtype_label
from streamconv.model.families.registry import describe
from streamconv.model.spec import ModelSpec
from streamconv.pipeline.preparation import Prepared
from streamconv.system.memory import format_flag_size, format_size


def _table(title: str, headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> Table:
    table = Table(title=title, title_justify="left")
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*row)
    return table


def _family_rows(spec: ModelSpec, src: Callable[[str], str]) -> Sequence[tuple[str, str, str]]:
    """The family's own rows (its FFN widths; Llama 4's experts, layer kinds and vision tower),
    from its description."""
    rows = describe(spec.family).plan_rows
    return rows(spec, src) if rows is not None else [("ffn_dim", str(spec.ffn_dim), src("ffn_dim"))]


def print_plan(console: Console, prepared: Prepared) -> None:
    spec, plan = prepared.spec, prepared.plan

    def src(key: str) -> str:
        return spec.sources.get(key, "params.json")

    detected = [
        ("family", spec.label, src("family")),
        ("variant", "instruct / chat" if spec.instruct else "base", src("instruct")),
        ("size", f"{spec.size_label} parameters", "from the shapes below"),
        ("rank files", str(spec.n_ranks), "consolidated.NN.pth files found"),
        ("dtype", source_dtype_label(plan), "tensor dtypes" + (", fp8_scales_N.pt files"
                                                     if prepared.checkpoint.scales else "")),
        ("dim", str(spec.dim), "params.json"),
        ("n_layers", str(spec.n_layers), "params.json"),
        ("n_heads", str(spec.n_heads), "params.json"),
        ("n_kv_heads", str(spec.n_kv_heads), src("n_kv_heads")),
        ("vocab_size", str(spec.vocab_size), src("vocab_size")),
        *_family_rows(spec, src),
        ("norm_eps", str(spec.norm_eps), "params.json"),
        ("rope_theta", str(spec.rope_theta), src("rope_theta")),
        ("rope_scaling", str(spec.rope_scaling), "use_scaled_rope in params.json"),
        ("max_position_embeddings", str(spec.max_position_embeddings),
         src("max_position_embeddings")),
        ("tie_word_embeddings", str(spec.tie_word_embeddings), src("tie_word_embeddings")),
        ("tokenizer", f"{prepared.tokenizer_kind} ({escape(str(prepared.tokenizer_path))})"
         if prepared.tokenizer_path else "none", "tokenizer.model"),
    ]
    console.print(_table(f"Input: {escape(str(prepared.input_dir))}", ("value", "", "source"),
                         detected))
    jobs_per_file = Counter(job.file_idx for job in plan.jobs)
    files = [(f.name, str(len(f.tensors)), format_size(f.total_bytes), str(jobs_per_file[i]))
             for i, f in enumerate(plan.files)]
    if prepared.gguf is None:
        files.append(("model.safetensors.index.json", "", "", "written last"))
        files.append(("config.json, generation_config.json, tokenizer files", "", "", ""))
        console.print(_table("Output layout", ("file", "tensors", "bytes", "jobs"), files))
    else:
        _print_gguf(console, prepared, files)
    split = sum(1 for name, n in Counter(j.hf_name for j in plan.jobs).items() if n > 1)
    schedule = [
        ("jobs", f"{len(plan.jobs)} ({split} tensors cut into row ranges to fit the budget)"),
        ("slots", f"{plan.depth} in flight, {format_size(plan.slot_bytes)} each"),
        ("read", format_size(plan.read_bytes)),
        ("write", format_size(plan.output_bytes)),
        ("dtype", f"{source_dtype_label(plan)} -> "
                  + (f"GGUF {prepared.gguf_outtype}" if prepared.gguf
                     else str(plan.dst_dtype).removeprefix('torch.'))
                  + (" (fp8 dequantized with its row scales)"
                     if any(job.dequantize for job in plan.jobs) else "")),
        ("baseline RSS", format_size(plan.baseline_bytes)),
        ("predicted peak RSS", format_size(plan.predicted_peak_bytes)),
        ("--max-ram", format_size(plan.budget_bytes)),
        ("smallest workable budget", f"{format_size(plan.min_budget_bytes)} "
                                     f"(--max-ram {format_flag_size(plan.min_budget_bytes)})"),
    ]
    console.print(_table("Schedule", ("", ""), schedule))
    for warning in prepared.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)


def _print_gguf(console: Console, prepared: Prepared,
                files: Sequence[tuple[str, ...]]) -> None:
    """The GGUF file, and its tensors by type (llama.cpp's rules: planning/gguf_file.py)."""
    assert prepared.gguf is not None
    layout = prepared.gguf
    name, n_tensors, size, jobs = files[0]
    n_tensors = str(len(layout.tensors))
    header = f"{format_size(layout.file.data_start)} header (metadata, tokenizer, tensor infos)"
    console.print(_table(f"Output: GGUF file (llama.cpp, --outtype {prepared.gguf_outtype})",
                         ("file", "tensors", "bytes", "jobs"),
                         [(name, n_tensors, size, jobs), (header, "", "", "")]))
    by_type: dict[str, list[int]] = {}
    for tensor in layout.tensors:
        count = by_type.setdefault(tensor.ggml_type.name, [0, 0])
        count[0] += 1
        count[1] += tensor.nbytes
    rows = [(kind, str(n), format_size(nbytes)) for kind, (n, nbytes) in by_type.items()]
    console.print(_table("GGUF tensor types", ("type", "tensors", "bytes"), rows))
