"""Command line: arguments, commands, errors -> one line and an exit code (progress and the
summary: cli/progress.py).

Exit codes: 0 success, 1 error (one sentence; --debug adds the traceback), 2 usage,
130 interrupted.

main() is the one choke point for errors: a StreamconvError is the user's to fix and says how;
any other exception (a bug, or a failure nothing foresaw) also becomes one sentence and exit 1,
never a traceback unless --debug asks for it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from streamconv.cli.progress import RichProgress, print_summary
from streamconv.cli.sizes import SIZE_UNITS_HELP, parse_size
from streamconv.errors import Interrupted, StreamconvError
from streamconv.model.families.registry import all_families
from streamconv.source.prefetch import start_prefetch
from streamconv.system.memory import default_max_ram_bytes, format_size

if TYPE_CHECKING:  # the modules that import torch load only once a command runs
    from streamconv.pipeline.conversion import ConvertOptions

COMMANDS = ("convert", "plan", "verify")


class UsageError(Exception):
    """Options that contradict each other: one line, exit 2."""
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_MIN_RAM_BYTES = 1 << 20


def _ram_size(text: str) -> int:
    """--max-ram: below 1 MiB is a mistake (0 and 0.5 used to mean the default silently)."""
    n_bytes = _size(text)
    if n_bytes < _MIN_RAM_BYTES:
        raise argparse.ArgumentTypeError(f"{text} is below 1 MiB, too little to convert "
                                         "anything; give the memory to use, e.g. 8G")
    return n_bytes


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.epilog = SIZE_UNITS_HELP
    parser.add_argument("input_dir", type=Path, metavar="INPUT_DIR",
                        help="Meta checkpoint folder: params.json, consolidated.NN.pth, "
                             "tokenizer.model")
    parser.add_argument("--max-ram", type=_ram_size, default=None, metavar="SIZE",
                        help="peak resident memory allowed, e.g. 8G (8 GiB), 512M (512 MiB) "
                             "(default: half of the "
                             f"memory available now, at least 1G; here "
                             f"{format_size(default_max_ram_bytes())})")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                        help="dtype of the written weights (default auto: the checkpoint's own)")
    gguf = parser.add_argument_group("GGUF output (llama.cpp; docs/gguf.md)")
    gguf.add_argument("--format", choices=("safetensors", "gguf"), default=None,
                      help="output format (default: gguf when OUTPUT ends in .gguf or "
                           "--outtype is given, else a Hugging Face safetensors folder)")
    gguf.add_argument("--outtype", choices=("auto", "f32", "f16", "bf16", "q8_0"), default=None,
                      help="GGUF tensor type, as llama.cpp's convert_hf_to_gguf.py --outtype "
                           "(default auto: bf16 for a bf16 checkpoint, else f16)")
    gguf.add_argument("--model-name", default=None, metavar="NAME",
                      help="GGUF general.name (default: family and size, e.g. LLaMA-2-6.7B)")
    parser.add_argument("--max-shard-size", type=_size, default=parse_size("5G"), metavar="SIZE",
                        help="largest output .safetensors file, e.g. 5GB (5*10^9 bytes, "
                             "Hugging Face's unit) or 4GiB (default 5G = 5 GiB)")
    parser.add_argument("--llama-version", default="auto",
                        choices=("auto", *(d.flag for d in all_families()
                                           if d.evidence_rank is not None)),
                        help="LLaMA 1-3 family; auto detects it from params.json, tensor shapes "
                             "and tokenizer.model (see README). Llama 4 is always detected "
                             "from its params.json")
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--instruct", action="store_true", default=None,
                         help="a chat / instruct model: chat eos ids, generation defaults and "
                              "chat template (default: from the folder name, e.g. "
                              "llama-2-7b-chat, Meta-Llama-3-8B-Instruct)")
    variant.add_argument("--base", dest="instruct", action="store_false",
                         help="a base (pretrained) model, whatever the folder is called")
    parser.add_argument("--no-tokenizer", action="store_true",
                        help="convert the weights only, without tokenizer files")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamconv",
        description="Convert Meta's original LLaMA checkpoints to Hugging Face safetensors (or "
                    "one GGUF file for llama.cpp) in one streaming pass, never using more "
                    "memory than --max-ram. "
                    "'convert' is the default command: streamconv --max-ram 8G IN OUT.",
        epilog="examples:\n"
               "  streamconv --max-ram 8G llama-2-7b/ llama-2-7b-hf/\n"
               "  streamconv plan llama-3.1-70b/ --max-ram 4G\n"
               "  streamconv plan --json llama-2-7b/ > plan.json   # every job's byte ranges\n"
               "  streamconv llama-2-7b/ llama-2-7b-hf/ --resume     # after Ctrl-C or a crash\n"
               "  streamconv verify llama-2-7b/ llama-2-7b-hf/\n"
               "  streamconv llama-3.1-8b/ llama-3.1-8b-q8_0.gguf --outtype q8_0\n"
               "all options: streamconv convert --help\n"
               f"{SIZE_UNITS_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{convert,plan,verify}")
    conv = sub.add_parser("convert", help="convert INPUT_DIR into OUTPUT_DIR (default command)")
    _add_model_options(conv)
    conv.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR",
                      help="new or empty folder for the Hugging Face model, or a FILE.gguf "
                           "for llama.cpp")
    conv.add_argument("--force", action="store_true",
                      help="write into a non-empty OUTPUT_DIR, replacing the model files there "
                           "(and discarding an interrupted conversion)")
    conv.add_argument("--resume", action="store_true",
                      help="continue an interrupted conversion into OUTPUT_DIR; only missing "
                           "work is redone")
    conv.add_argument("--quiet", action="store_true", help="no progress display or summary")
    conv.add_argument("--report", type=Path, metavar="FILE.json",
                      help="write time, bytes, peak memory and files as JSON")
    plan = sub.add_parser("plan", help="print what would be converted and how; writes nothing")
    _add_model_options(plan)
    plan.add_argument("output_dir", type=Path, metavar="OUTPUT", nargs="?",
                      help="optional: the OUTPUT convert would get (a FILE.gguf plans GGUF "
                           "output); nothing is written there")
    plan.add_argument("--json", action="store_true",
                      help="print the whole plan as JSON instead of tables: output files, "
                           "every job with the input byte ranges (file, offset, length) its "
                           "copy blocks read, its destination, transform and cast, the "
                           "budget and the predicted peak")
    check = sub.add_parser("verify", help="recompute OUTPUT_DIR from INPUT_DIR and compare every "
                                          "byte, the index, headers, configs and tokenizer files")
    _add_model_options(check)
    check.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR",
                       help="a converted Hugging Face folder, or a converted FILE.gguf")
    return parser


def _to_gguf(args: argparse.Namespace) -> bool:
    """GGUF output: --format gguf, an OUTPUT ending in .gguf, or --outtype."""
    output = getattr(args, "output_dir", None)
    by_name = output is not None and output.suffix.lower() == ".gguf"
    if args.format == "safetensors" and (by_name or args.outtype is not None):
        raise UsageError("--format safetensors writes a Hugging Face folder: drop --outtype "
                         "and name a folder, not a .gguf file")
    gguf = args.format == "gguf" or by_name or args.outtype is not None
    if gguf and args.dtype != "auto":
        raise UsageError("--dtype is for Hugging Face output; a GGUF file's tensor type is "
                         "--outtype (f32, f16, bf16, q8_0)")
    return gguf


def _options(args: argparse.Namespace) -> ConvertOptions:
    from streamconv.model.tensor_table import OutputFormat
    from streamconv.pipeline.conversion import ConvertOptions

    gguf = _to_gguf(args)
    output = getattr(args, "output_dir", None)
    return ConvertOptions(max_ram_bytes=args.max_ram, dtype=args.dtype,
                          max_shard_bytes=args.max_shard_size, llama_version=args.llama_version,
                          force=getattr(args, "force", False),
                          resume=getattr(args, "resume", False), instruct=args.instruct,
                          tokenizer=not args.no_tokenizer,
                          output_format=OutputFormat.GGUF if gguf else OutputFormat.SAFETENSORS,
                          outtype=args.outtype or "auto",
                          gguf_name=output.name if gguf and output is not None else "model.gguf",
                          model_name=args.model_name)


def _run_convert(args: argparse.Namespace, console: Console) -> int:
    prefetch_unix = time.time()
    start_prefetch(args.input_dir)
    from streamconv.pipeline.conversion import convert

    progress = None if args.quiet else RichProgress(console)
    try:
        report = convert(args.input_dir, args.output_dir, _options(args), progress)
    finally:
        if progress is not None:
            progress.stop()
    if args.report:
        fields = {**report.as_dict(), "prefetch_start_unix": prefetch_unix}
        try:
            args.report.write_text(json.dumps(fields, indent=2) + "\n")
        except OSError as e:
            raise StreamconvError(f"the model in {args.output_dir} is complete, but --report "
                                  f"{args.report} could not be written ({e.strerror})") from e
    if not args.quiet:
        print_summary(console, report)
    if report.interrupted_after_complete:
        console.print(f"[yellow]Ctrl-C came after the model was complete:[/yellow] "
                      f"{escape(str(args.output_dir))} is finished and published; nothing to "
                      "resume", highlight=False, soft_wrap=True)
    return 0


def _run_plan(args: argparse.Namespace, console: Console) -> int:
    from streamconv.cli.plan_report import print_plan
    from streamconv.pipeline.conversion import prepare

    prepared = prepare(args.input_dir, _options(args))
    if args.json:
        from streamconv.cli.plan_json import print_plan_json

        print_plan_json(console, prepared)
    else:
        print_plan(console, prepared)
    return 0


def _run_verify(args: argparse.Namespace, console: Console) -> int:
    from streamconv.pipeline.verification import verify

    options = _options(args)
    if _to_gguf(args):
        from streamconv.pipeline.gguf_verification import verify_gguf

        result = verify_gguf(args.input_dir, args.output_dir, options)
    else:
        result = verify(args.input_dir, args.output_dir, options)
    if result.ok:
        what = "header, metadata and tokenizer" if _to_gguf(args) else (
            "configs and tokenizer files")
        console.print(f"[green]verified[/green] {result.tensors_checked} tensors "
                      f"({format_size(result.bytes_checked)}), {what}: "
                      f"{escape(str(args.output_dir))} matches {escape(str(args.input_dir))}")
        return 0
    for problem in result.problems[:50]:
        console.print(f"  {problem}", highlight=False, markup=False, soft_wrap=True)
    more = len(result.problems) - 50
    raise StreamconvError(f"{args.output_dir} does not match {args.input_dir}: "
                          f"{len(result.problems)} problem(s)" + (f", {more} not shown" if
                                                                  more > 0 else "") +
                          "; convert again (with --force)")


def _normalise_argv(argv: list[str]) -> list[str]:
    """`streamconv IN OUT` and `streamconv --max-ram 8G IN OUT` mean `streamconv convert ...`."""
    if not argv or argv[0] in COMMANDS or argv[0] in ("-h", "--help"):
        return argv
    return ["convert", *argv]


def _report_problem(path: Path) -> str | None:
    """Why --report cannot be written, found before any work (it used to fail after the
    model was published, with a traceback)."""
    try:
        if path.is_dir():
            return f"--report {path} is a folder; give a file name, e.g. {path / 'report.json'}"
        folder = path.parent
        if not folder.is_dir():
            return (f"--report {path}: the folder {folder} does not exist; create it or "
                    "choose another path")
        if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            return f"--report {path} cannot be written (permission denied); choose another path"
    except OSError as e:  # a name too long, a loop of links
        return f"--report {path} cannot be used ({e.strerror}); choose another path"
    return None


def _unexpected(e: BaseException) -> str:
    """One sentence for an exception nothing else explained (a bug, or a failure of the
    environment that no check foresaw); the text is cut short and kept on one line."""
    detail = " ".join(str(e).split())
    detail = detail if len(detail) <= 160 else detail[:157] + "..."
    detail = detail.replace(". ", "; ")
    return (f"streamconv stopped on an unexpected {type(e).__name__}"
            + (f" ({detail})" if detail else "")
            + "; nothing unfinished was published: run the command again with --debug to see "
              "where, and report it")


def main(argv: Sequence[str] | None = None, *, console: Console | None = None,
         err_console: Console | None = None) -> int:
    console = console or Console()
    err_console = err_console or Console(stderr=True)
    try:
        return _main(argv, console, err_console)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None, console: Console, err_console: Console) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(_normalise_argv(list(sys.argv[1:] if argv is None else argv)))
    except SystemExit as e:
        return int(e.code or 0) if e.code in (0, None) else EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    problem = _report_problem(args.report) if getattr(args, "report", None) else None
    if problem:
        err_console.print(f"[red]error:[/red] {escape(problem)}", highlight=False,
                          soft_wrap=True)
        return EXIT_USAGE
    try:
        run = {"convert": _run_convert, "plan": _run_plan, "verify": _run_verify}[args.command]
        return run(args, console)
    except UsageError as e:
        err_console.print(f"[red]usage error:[/red] {escape(str(e))}", highlight=False,
                          soft_wrap=True)
        return EXIT_USAGE
    except Interrupted as e:
        err_console.print(f"[yellow]{escape(str(e))}[/yellow]", highlight=False, soft_wrap=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        return EXIT_INTERRUPTED
    except Exception as e:
        if args.debug:
            err_console.print(traceback.format_exc(), highlight=False, markup=False)
        message = str(e) if isinstance(e, StreamconvError) else _unexpected(e)
        err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False,
                          soft_wrap=True)
        return EXIT_ERROR

