"""What a conversion shows while it runs: bytes against the plan, throughput, ETA, RSS against
the budget, the layer being written, and the one-line summary at the end."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from streamconv.system.memory import current_rss_bytes, format_size

if TYPE_CHECKING:  # the modules that import torch load only once a command runs
    from streamconv.pipeline.conversion import Prepared, Report
    from streamconv.planning.jobs import Job


def progress_label(hf_name: str, *, layer_prefix: str, n_layers: int) -> str:
    """"layer 4/32" for a decoder layer's tensor (its prefix comes from the family's table, so
    Llama 4's language_model.model.layers.N count too), else the module's name."""
    rest = hf_name.removeprefix(layer_prefix)
    head = rest.split(".")[0]
    if layer_prefix and rest != hf_name and head.isdigit():
        return f"layer {int(head) + 1}/{n_layers}"
    return hf_name.split(".")[-2]


def hf_layer_count(hf_names: list[str], *, layer_prefix: str) -> int:
    """How many decoder layers the output has, counted in Hugging Face's numbering: where a
    family interleaves layer sets (a layer map), that is more than params.json's n_layers."""
    indices = {int(head) for name in hf_names if layer_prefix and name.startswith(layer_prefix)
               for head in [name.removeprefix(layer_prefix).split(".")[0]] if head.isdigit()}
    return max(indices) + 1 if indices else 0


class RichProgress:
    """Bytes written against the plan, throughput, ETA, and current RSS against the budget."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
            TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[rss]}"),
            console=console, transient=False)
        self.task: TaskID | None = None
        self.budget = 0
        self.n_layers = 0
        self.layer_prefix = ""

    def started(self, prepared: Prepared, *, resumed_bytes: int) -> None:
        from streamconv.cli.dtype_label import source_dtype_label

        spec, plan = prepared.spec, prepared.plan
        for warning in prepared.warnings:
            self.console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
        self.console.print(
            f"{spec.label} {spec.size_label}, {spec.n_ranks} rank file(s), "
            f"{source_dtype_label(plan)} -> {_dtype_name(plan.dst_dtype)}; "
            f"{len(plan.files)} output file(s), {len(plan.jobs)} jobs in {plan.depth} slot(s) "
            f"of {format_size(plan.slot_bytes)}; --max-ram {format_size(plan.budget_bytes)}")
        self.console.print(f"  family: {spec.sources['family']}", style="dim")
        variant = "instruct / chat" if spec.instruct else "base"
        self.console.print(f"  {variant}: {spec.sources['instruct']}", style="dim")
        self.budget = plan.budget_bytes
        # The decoder layers' Hugging Face prefix, from the family's table ("model.layers." for
        # LLaMA 1-3, "language_model.model.layers." for Llama 4).
        self.layer_prefix = spec.tensors.entry("q").hf_name.split("{layer}")[0]
        self.n_layers = hf_layer_count([job.hf_name for job in plan.jobs],
                                       layer_prefix=self.layer_prefix) or spec.n_layers
        self.bar.start()
        if resumed_bytes:
            self.console.print(f"  resuming: {format_size(resumed_bytes)} already converted and "
                               "verified")
        self.task = self.bar.add_task("converting", total=plan.output_bytes,
                                      completed=resumed_bytes, rss=self._rss())

    def _rss(self) -> str:
        return f"RSS {format_size(current_rss_bytes())} / {format_size(self.budget)}"

    def job_done(self, job: Job, *, bytes_read: int) -> None:
        if self.task is not None:
            where = progress_label(job.hf_name, layer_prefix=self.layer_prefix,
                                   n_layers=self.n_layers)
            self.bar.update(self.task, advance=job.out_bytes, rss=self._rss(), description=where)

    def stop(self) -> None:
        self.bar.stop()


def _dtype_name(dtype: object) -> str:
    return str(dtype).removeprefix("torch.")


def print_summary(console: Console, report: Report) -> None:
    console.print(
        f"[green]done[/green] in {report.seconds:.1f} s: read {format_size(report.bytes_read)}, "
        f"wrote {format_size(report.bytes_written)} "
        f"({report.bytes_written / max(report.seconds, 1e-9) / (1 << 20):.0f} MiB/s); "
        f"peak RSS {format_size(report.peak_rss_bytes)} of {format_size(report.max_ram_bytes)}; "
        + (escape(report.output_dir) if report.output_dir.endswith(".gguf") else
           f"{len(report.files)} files in {escape(report.output_dir)}"))
