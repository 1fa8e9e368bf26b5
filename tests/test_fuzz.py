"""A seeded fuzz test of the converter's promises on bad input (issue 19).

Each case copies one of three tiny checkpoints, applies one seeded mutation (a params.json
value, a pickle argument or opcode, a zip header byte, a change to the set of rank files or
their tensors) and converts it through the CLI's main() in this process. The contract:
- the exit code is 0, 1 or 2, and no traceback reaches the user;
- on failure nothing that looks published is in OUT (no index, config or shard);
- memory stays bounded: a watchdog samples RSS (and wall time) and interrupts a runaway; every
  CHILD_EVERY-th case runs as a child process instead, whose own peak RSS (wait4) is bounded;
- on exit 0, `streamconv verify` passes and every output tensor equals a reference built the
  slow, obvious way (tests/test_convert.py) from the mutated files as torch.load reads them.

STREAMCONV_FUZZ_CASES sets the number of cases (default 500: about 20 s on 2 cores) and
STREAMCONV_FUZZ_SEED the seed; every failure is listed with its case number and mutation, and
STREAMCONV_FUZZ_ONLY=12,345 replays just those cases. The summary (counts by exit code, mutation
kind and problem) is printed with -s, and written as JSON to STREAMCONV_FUZZ_REPORT if set.
"""

from __future__ import annotations

import _thread
import io
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

import psutil
import torch
from conftest import measured_peak, start_measured
from pickle_craft import glob, num, read_data_pkl, replace_data_pkl, text
from rich.console import Console
from test_convert import expected_tensors, load_output

from fixtures.synthetic import SyntheticSpec, tiny
from streamconv.cli.main import main
from streamconv.model.family import Family

N_CASES = int(os.environ.get("STREAMCONV_FUZZ_CASES", "500"))
SEED = int(os.environ.get("STREAMCONV_FUZZ_SEED", "19"))
# Replay: STREAMCONV_FUZZ_ONLY=1043,1317 runs just those cases of the seed.
ONLY = [int(i) for i in os.environ.get("STREAMCONV_FUZZ_ONLY", "").split(",") if i.strip()]
CHILD_EVERY = 40
RSS_GROWTH_LIMIT = 1 << 30  # in-process: RSS above the case's starting RSS
CHILD_PEAK_LIMIT = 768 << 20  # a child's whole peak, interpreter and imports included
CASE_SECONDS = 60.0
ARGS = ("--quiet", "--no-tokenizer", "--max-ram", "2G")
COMPLETE_LOOKING = ("model.safetensors.index.json", "config.json", "*.safetensors")

BASES = {
    "mha-2-ranks": tiny(Family.LLAMA2, n_ranks=2, with_tokenizer=False),
    "gqa-2-ranks": tiny(Family.LLAMA2, n_ranks=2, with_tokenizer=False, n_kv_heads=2),
    "mha-1-rank": tiny(Family.LLAMA2, n_ranks=1, with_tokenizer=False),
}


@dataclass
class Outcome:
    case_idx: int
    mutation: str
    code: int | None
    err: str
    problems: list[str] = field(default_factory=list)


# --- mutations -------------------------------------------------------------------------------

_PARAM_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
               "ffn_dim_multiplier", "norm_eps", "rope_theta", "use_scaled_rope", "max_seq_len")
_LITERALS = ("0", "-1", "-2", "1", "2", "3", "0.5", "1e18", "1e999", "NaN", "Infinity",
             "-Infinity", "9" * 400, "1000000", "1000000000", "true", "null", '"x"', "[]", "{}",
             "4096.0", "1e-300")


def mutate_params(src: Path, rng: random.Random, spec: SyntheticSpec) -> str:
    params = json.loads((src / "params.json").read_text())
    key = rng.choice(_PARAM_KEYS)
    roll = rng.random()
    if roll < 0.1 and key in params:
        del params[key]
        (src / "params.json").write_text(json.dumps(params))
        return f"params: delete {key}"
    if roll < 0.3 and isinstance(params.get(key), (int, float)) and not isinstance(
            params.get(key), bool):
        value = params[key]
        literal = json.dumps(rng.choice([value + 1, value * 2, value // 2 or 1, value]))
    else:
        literal = rng.choice(_LITERALS)
    params[key] = "@@"
    (src / "params.json").write_text(json.dumps(params).replace('"@@"', literal))
    return f"params: {key}={literal[:20]}"


_INT_OPS = ("BININT1", "BININT2", "BININT", "LONG1")
_STR_OPS = ("BINUNICODE", "SHORT_BINUNICODE")
_NEW_INTS = (-1, -16, 0, 1, 2, 3, 255, 256, 65536, (1 << 31) - 1, 1 << 40, 1 << 70)
_NEW_STRS = ("", "0", "1", "999", "storage", "cpu", "x" * 300, "norm.weight",
             "layers.0.attention.wq.weight", "output.weight")
_NEW_GLOBALS = (("torch", "HalfStorage"), ("torch", "FloatStorage"), ("torch", "float16"),
                ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_tensor_v3"),
                ("collections", "OrderedDict"), ("_io", "BytesIO"), ("_codecs", "encode"),
                ("builtins", "eval"), ("os", "system"), ("torch", "UntypedStorage"))
_NEW_OPCODES = (b"N", b")", b"(", b"t", b"R", b"Q", b"0", b"2", b"\x85", b"u", b"s", b"b")


def mutate_pickle(src: Path, rng: random.Random, spec: SyntheticSpec) -> str:
    import pickletools

    rank = rng.randrange(spec.n_ranks)
    path = src / f"consolidated.{rank:02d}.pth"
    data = read_data_pkl(path)
    ops = [(op.name, arg, pos) for op, arg, pos in pickletools.genops(data)]
    ends = [pos for _name, _arg, pos in ops[1:]] + [len(data)]
    kind = rng.choice(["int", "int", "str", "global", "flip", "truncate", "insert"])
    if kind in ("int", "str", "global"):
        wanted = {"int": _INT_OPS, "str": _STR_OPS, "global": ("GLOBAL",)}[kind]
        choices = [i for i, (name, _a, _p) in enumerate(ops) if name in wanted]
        i = rng.choice(choices)
        if kind == "int":
            new = num(rng.choice(_NEW_INTS))
        elif kind == "str":
            new = text(rng.choice(_NEW_STRS))
        else:
            new = glob(*rng.choice(_NEW_GLOBALS))
        start, end = ops[i][2], ends[i]
        assert start is not None
        data = data[:start] + new + data[end:]
        what = f"{ops[i][0]} {str(ops[i][1])[:30]!r} -> {new[:30]!r}"
    elif kind == "flip":
        pos = rng.randrange(len(data))
        data = data[:pos] + bytes([data[pos] ^ (1 << rng.randrange(8))]) + data[pos + 1:]
        what = f"bit flip at {pos}"
    elif kind == "truncate":
        pos = rng.randrange(len(data))
        data, what = data[:pos], f"truncated at {pos}"
    else:
        pos, new = rng.randrange(len(data)), rng.choice(_NEW_OPCODES)
        data, what = data[:pos] + new + data[pos:], f"inserted {new!r} at {pos}"
    replace_data_pkl(path, data)
    return f"pickle rank {rank}: {what}"


def mutate_zip(src: Path, rng: random.Random, spec: SyntheticSpec) -> str:
    rank = rng.randrange(spec.n_ranks)
    path = src / f"consolidated.{rank:02d}.pth"
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        start_dir = archive.start_dir
    size = path.stat().st_size
    region = rng.choice(["local", "local", "central", "end"])
    if region == "local":
        info = rng.choice(infos)
        pos = info.header_offset + rng.randrange(30 + len(info.filename))
    elif region == "central":
        pos = rng.randrange(start_dir, size - 22)
    else:
        pos = rng.randrange(size - 22, size)
    with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([rng.choice([byte ^ (1 << rng.randrange(8)), (byte + 1) % 256,
                                   (byte - 1) % 256, 0, 255])]))
    return f"zip rank {rank}: {region} byte {pos}"


def _resave(path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors: dict[str, torch.Tensor] = torch.load(path, weights_only=True)
    change(tensors)
    torch.save(tensors, path)


def mutate_ranks(src: Path, rng: random.Random, spec: SyntheticSpec) -> str:
    n = spec.n_ranks
    last = src / f"consolidated.{n - 1:02d}.pth"
    kind = rng.choice(["delete", "extra", "gap", "drop-one", "drop-all", "truncate",
                       "duplicate", "add-tensor"])
    if kind == "delete" and n > 1:
        (src / "consolidated.00.pth").unlink()
    elif kind == "extra":
        shutil.copyfile(src / "consolidated.00.pth", src / f"consolidated.{n:02d}.pth")
    elif kind == "gap":
        last.rename(src / f"consolidated.{n + 1:02d}.pth")
    elif kind in ("drop-one", "drop-all"):
        names = sorted(torch.load(last, weights_only=True))
        name = rng.choice(names)
        for rank in ([n - 1] if kind == "drop-one" else range(n)):
            _resave(src / f"consolidated.{rank:02d}.pth", lambda t: t.pop(name))
        kind += f" {name}"
    elif kind == "truncate":
        with open(last, "r+b") as f:
            f.truncate(rng.randrange(last.stat().st_size))
    elif kind == "duplicate" and n > 1 and spec.kv_heads != n:
        # (with as many kv heads as ranks, identical copies read as one head: a different,
        # equivalent model, which the reference below does not build)
        shutil.copyfile(src / "consolidated.00.pth", last)
    elif kind == "add-tensor":
        _resave(last, lambda t: t.update({"layers.9.attention.wq.weight": torch.zeros(2, 2)}))
    else:
        return f"ranks: {kind} (nothing to do for {n} rank(s))"
    return f"ranks: {kind}"


MUTATORS = {"params": mutate_params, "pickle": mutate_pickle, "zip": mutate_zip,
            "ranks": mutate_ranks}


# --- running a case --------------------------------------------------------------------------

class Watchdog:
    """Interrupts the main thread (KeyboardInterrupt -> exit 130, a contract failure) when RSS
    grows by more than RSS_GROWTH_LIMIT or the case runs longer than CASE_SECONDS."""

    def __init__(self) -> None:
        self.tripped: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Watchdog:
        self._start_rss = psutil.Process().memory_info().rss
        self._start = time.monotonic()
        self._thread.start()
        return self

    def _watch(self) -> None:
        process = psutil.Process()
        while not self._done.wait(0.01):
            growth = process.memory_info().rss - self._start_rss
            if growth > RSS_GROWTH_LIMIT:
                self.tripped = f"RSS grew by {growth >> 20} MiB"
            elif time.monotonic() - self._start > CASE_SECONDS:
                self.tripped = f"ran over {CASE_SECONDS:.0f} s"
            if self.tripped:
                _thread.interrupt_main()
                return

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def run_in_process(*argv: str | Path) -> tuple[int | None, str, str | None]:
    err = io.StringIO()
    with Watchdog() as watchdog:
        try:
            code: int | None = main([str(a) for a in argv],
                                    console=Console(file=io.StringIO(), width=200),
                                    err_console=Console(file=err, width=200))
        except BaseException:  # noqa: B036 - whatever escapes main() is the finding
            code = None
            err.write(traceback.format_exc())
    return code, err.getvalue(), watchdog.tripped


def run_in_child(src: Path, out: Path) -> tuple[int | None, str, str | None]:
    proc = start_measured([sys.executable, "-m", "streamconv", str(src), str(out), *ARGS],
                          stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, err = proc.communicate(timeout=CASE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the command under it
        proc.communicate()
        return None, "", f"child still running after {CASE_SECONDS} s"
    peak = measured_peak(stdout)
    tripped = f"child peak RSS {peak >> 20} MiB" if peak > CHILD_PEAK_LIMIT else None
    return proc.returncode, err, tripped


def complete_looking(out: Path) -> list[str]:
    if not out.is_dir():
        return []
    return sorted({p.name for pattern in COMPLETE_LOOKING for p in out.glob(pattern)})


def reference_tensors(src: Path, spec: SyntheticSpec) -> dict[str, torch.Tensor]:
    """The slow, obvious conversion of `src` as torch.load reads it, in the checkpoint's own
    dtype, with the head counts params.json now gives."""
    params = json.loads((src / "params.json").read_text(), parse_constant=float)
    spec = replace(spec, n_heads=params.get("n_heads", spec.n_heads),
                   n_kv_heads=params.get("n_kv_heads"))
    first = min(src.glob("consolidated.*.pth"))
    try:
        dtype = torch.load(first, weights_only=True)["norm.weight"].dtype
        return expected_tensors(src, spec, dtype)
    except pickle.UnpicklingError:
        # torch's weights-only unpickler knows fewer opcodes (POP, DUP) and globals (BytesIO)
        # than pickle; the full one reads what pickle means. Safe here: it runs only on files
        # streamconv accepted, whose every global is on its short allowlist.
        with mock.patch.object(torch, "load", _full_load):
            dtype = torch.load(first)["norm.weight"].dtype
            return expected_tensors(src, spec, dtype)


_TORCH_LOAD = torch.load


def _full_load(path: Path, **kwargs: Any) -> Any:
    return _TORCH_LOAD(path, weights_only=False)


def check_case(case_idx: int, bases: dict[str, Path], tmp: Path) -> Outcome:
    rng = random.Random(SEED * 1_000_003 + case_idx)
    base_name = rng.choice(sorted(BASES))
    spec = BASES[base_name]
    src, out = tmp / f"in{case_idx}", tmp / f"out{case_idx}"
    shutil.copytree(bases[base_name], src)
    kind = rng.choice(sorted(MUTATORS))
    mutation = f"{base_name} {MUTATORS[kind](src, rng, spec)}"
    child = case_idx % CHILD_EVERY == 0
    code, err, tripped = (run_in_child(src, out) if child else
                          run_in_process(src, out, *ARGS))
    outcome = Outcome(case_idx, mutation + (" (child)" if child else ""), code, err)
    if tripped:
        outcome.problems.append(f"runaway: {tripped}")
    if code not in (0, 1, 2):
        outcome.problems.append(f"exit {code}")
    if "Traceback" in err:
        outcome.problems.append("traceback: " + err.strip().splitlines()[-1][:200])
    if code != 0 and complete_looking(out):
        outcome.problems.append(f"leftover: {complete_looking(out)} after exit {code}")
    if code == 0 and not outcome.problems:
        # A zip header mutation that streamconv accepts leaves every tensor's bytes where they
        # were: the unmutated checkpoint is the reference (torch's own zip reader misreads some
        # of these files, e.g. with a flipped external_attr). Other mutations are what they
        # are, and torch.load reads them as the reference.
        reference_src = bases[base_name] if kind == "zip" else src
        outcome.problems += check_output(src, out, reference_src, spec)
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return outcome


def check_output(src: Path, out: Path, reference_src: Path, spec: SyntheticSpec) -> list[str]:
    problems = []
    verify_code, verify_err, _ = run_in_process("verify", src, out, "--no-tokenizer",
                                                "--max-ram", "2G")
    if verify_code != 0:
        problems.append(f"wrong output: verify exits {verify_code}: {verify_err.strip()[:200]}")
    got = load_output(out)
    try:
        want = reference_tensors(reference_src, spec)
    except Exception as e:
        return [*problems, f"wrong output: torch cannot read what was converted ({e!r:.100})"]
    if set(got) != set(want):
        problems.append(f"wrong output: tensors {sorted(set(got) ^ set(want))[:3]} differ")
    else:
        wrong = [n for n in sorted(got) if got[n].dtype != want[n].dtype
                 or not torch.equal(got[n], want[n])]
        if wrong:
            problems.append(f"wrong output: {wrong[:3]} differ from the reference")
    return problems


def summarise(outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    codes = Counter(str(o.code) for o in outcomes)
    kinds = Counter(o.mutation.split()[1].rstrip(":") for o in outcomes)
    problems = Counter(p.split(":")[0] for o in outcomes for p in o.problems)
    return {"cases": len(outcomes), "seed": SEED, "seconds": round(seconds, 1),
            "exit_codes": dict(codes), "mutations": dict(kinds),
            "tracebacks": problems["traceback"], "hangs_or_runaways": problems["runaway"],
            "wrong_outputs": problems["wrong output"], "leftovers": problems["leftover"],
            "other_exit_codes": sum(1 for o in outcomes if o.code not in (0, 1, 2))}


def test_fuzz_keeps_the_promises(make_checkpoint: Callable[[SyntheticSpec], Path],
                                 tmp_path: Path) -> None:
    bases = {name: make_checkpoint(spec) for name, spec in BASES.items()}
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # for the watchdog
    start = time.monotonic()
    outcomes = []
    try:
        for case_idx in ONLY or range(N_CASES):
            outcomes.append(check_case(case_idx, bases, tmp_path))
    finally:
        signal.signal(signal.SIGINT, previous)
    summary = summarise(outcomes, time.monotonic() - start)
    print("\nfuzz summary:", json.dumps(summary))
    if os.environ.get("STREAMCONV_FUZZ_REPORT"):
        Path(os.environ["STREAMCONV_FUZZ_REPORT"]).write_text(json.dumps(summary, indent=2))
    failures = [f"case {o.case_idx} ({o.mutation}): {'; '.join(o.problems)}"
                for o in outcomes if o.problems]
    assert not failures, "\n".join(failures[:40])
    # The mutations must reach every outcome, or the test proves little.
    assert ONLY or {"0", "1"} <= set(summary["exit_codes"]), summary


def test_fuzz_case_replays_identically(tmp_path: Path,
                                       make_checkpoint: Callable[[SyntheticSpec], Path]) -> None:
    """A reported case number reproduces: the same seed gives the same mutation."""
    bases = {name: make_checkpoint(spec) for name, spec in BASES.items()}
    first = check_case(1, bases, tmp_path / "a")
    second = check_case(1, bases, tmp_path / "b")
    assert first.mutation == second.mutation and first.code == second.code
