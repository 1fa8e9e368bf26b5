"""Issue 19: every finding of the fuzzer that was run against main, as a named regression test.

Each test reproduces one reported case (a traceback, a crash, a runaway, or an exit 0 whose
output was wrong) and requires what the README promises: one sentence, exit 1 (2 for usage),
nothing that looks published, bounded memory and time, and on success the right weights.
Numbers in the names refer to the issue's list.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import digests, measured_peak, restore_sigint, start_measured
from pickle_craft import (
    call,
    glob,
    num,
    offset_operand,
    pid,
    read_data_pkl,
    replace_data_pkl,
    state,
    storage,
    tensor_v2,
    text,
    tup,
)
from test_bad_inputs import (
    BASE,
    RUN_ARGS,
    SHARD0,
    SHARD1,
    MakeCkpt,
    _DiskUsage,
    assert_not_complete,
    assert_nothing_written,
    assert_one_error,
    edit_params,
    fresh_copy,
    load_shard,
    run_cli,
)

from fixtures.synthetic import tiny
from streamconv.model.families.registry import evidence_candidates, recognisers
from streamconv.model.family import Family
from streamconv.model.family_rules import Facts, _ordered, decide_family

GQA = tiny(Family.LLAMA2, n_ranks=2, with_tokenizer=False, n_kv_heads=2)
ONE_RANK = tiny(Family.LLAMA2, n_ranks=1, with_tokenizer=False)
ARGS = (*RUN_ARGS, "--no-tokenizer")
output_folder_module = importlib.import_module("streamconv.runtime.output_folder")
conversion_module = importlib.import_module("streamconv.pipeline.conversion")
output_checks_module = importlib.import_module("streamconv.pipeline.output_checks")


def write_params_text(src: Path, key: str, literal: str) -> None:
    """params.json with `key` set to a JSON literal as written (NaN, 1e999, 400 digits)."""
    params = json.loads((src / "params.json").read_text())
    params[key] = "@@"
    (src / "params.json").write_text(json.dumps(params).replace('"@@"', literal))


def convert(src: Path, out: Path, *extra: str) -> object:
    return run_cli(src, out, *ARGS, *extra)


# --- 1. tracebacks on numbers ------------------------------------------------------------------

@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "9" * 400, "1e999"])
@pytest.mark.parametrize("key", ["dim", "n_layers", "n_heads", "norm_eps", "multiple_of",
                                 "attn_scale"])
def test_1_non_finite_or_huge_number_in_params_is_one_error(key: str, literal: str,
                                                            make_checkpoint: MakeCkpt,
                                                            tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    write_params_text(src, key, literal)
    result = convert(src, tmp_path / "out")
    assert_one_error(result, "params.json")
    assert_nothing_written(tmp_path / "out")


def test_1_n_kv_heads_zero_is_one_error(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    edit_params(src, n_kv_heads=0)
    assert_one_error(convert(src, tmp_path / "out"), "params.json", "n_kv_heads")


def test_1_dim_1e18_is_one_error(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    edit_params(src, dim=1e18)
    assert_one_error(convert(src, tmp_path / "out"), "params.json", "dim")


def test_1_params_nested_100000_deep_is_one_error(make_checkpoint: MakeCkpt,
                                                 tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    params = json.loads((src / "params.json").read_text())
    body = json.dumps(params)[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (src / "params.json").write_text(body)
    assert_one_error(convert(src, tmp_path / "out"), "params.json")


# --- 2. the _PREFERENCE crash ------------------------------------------------------------------

def test_2_preference_lists_every_family() -> None:
    """Every family is found one way or the other, and every evidence candidate has a place
    in the preference order (a missing one crashed _ordered with a ValueError)."""
    candidates = {d.key for d in evidence_candidates()}
    assert candidates | {d.key for d in recognisers()} == set(Family)
    assert all(isinstance(d.evidence_rank, int) for d in evidence_candidates())
    assert sorted(_ordered(candidates)) == sorted(candidates)
    assert _ordered(candidates)[0] is Family.LLAMA2


def test_2_rope_theta_20000_on_llama2_without_tokenizer_converts(make_checkpoint: MakeCkpt,
                                                                 tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path, ONE_RANK)
    edit_params(src, rope_theta=20000)
    result = convert(src, tmp_path / "out")
    assert result.code == 0 and "Traceback" not in result.err, result.err


def test_2_undecided_evidence_never_crashes() -> None:
    """No tokenizer, an unknown vocabulary and rope_theta: every family stays a candidate."""
    verdict = decide_family(Facts(
        tokenizer_kind=None, vocab_size=512, embedding_split_by_vocab=None, rope_theta=20000.0,
        use_scaled_rope=False, norm_eps=1e-5, has_n_kv_heads=False, rope_freqs="none",
        output_tied=False))
    assert verdict.family is Family.LLAMA2


# --- 3. hostile pickle arguments ---------------------------------------------------------------

_V3 = glob("torch._utils", "_rebuild_tensor_v3")
_HOSTILE_PICKLES = {
    "storage-is-an-int": state(("w", tensor_v2(store=num(7)))),
    "shape-is-a-string": state(("w", tensor_v2(shape=text("4x4")))),
    "stride-shorter-than-shape": state(("w", tensor_v2(stride=tup(num(1))))),
    "huge-shape": state(("w", tensor_v2(shape=tup(num(1 << 62), num(1 << 62))))),
    "v3-dtype-is-a-string": state(("w", call(_V3, tup(
        storage(cls="UntypedStorage"), num(0), tup(num(4)), tup(num(1)), b"\x89", b"N",
        text("float32"))))),
    "v2-no-arguments": state(("w", call(glob("torch._utils", "_rebuild_tensor_v2"), b")"))),
    "ordered-dict-with-arguments": state(("w", call(glob("collections", "OrderedDict"),
                                                    tup(num(1), num(2))))),
    "bytesio-with-odd-arguments": state(("w", call(glob("_io", "BytesIO"),
                                                   tup(num(5), num(6), num(7))))),
    "dtype-called": state(("w", call(glob("torch", "float32"), tup(num(1))))),
    "storage-class-called": state(("w", call(glob("torch", "FloatStorage"), tup(num(1))))),
    "codecs-encode-other-codec": state(("w", call(glob("_codecs", "encode"),
                                                  tup(text("eJwDAAAAAAE="), text("base64"))))),
    "codecs-encode-bad-types": state(("w", call(glob("_codecs", "encode"),
                                                tup(num(1), num(2))))),
    "persistent-id-not-a-tuple": state(("w", num(3) + b"Q")),
    "negative-storage-size": state(("w", tensor_v2(store=pid(
        text("storage"), glob("torch", "FloatStorage"), text("0"), text("cpu"), num(-5))))),
    "nested-a-million-deep": b"\x80\x02}(" + b"N" + b"\x85" * 1_000_000 + b"K\x01u.",
    # found by tests/test_fuzz.py: torch.load refuses these, and so must streamconv
    "unknown-storage-location": state(("w", tensor_v2(store=pid(
        text("storage"), glob("torch", "FloatStorage"), text("0"), text("norm.weight"),
        num(16))))),
    "hooks-missing": state(("w", call(glob("torch._utils", "_rebuild_tensor_v2"), tup(
        storage(), num(0), tup(num(4), num(4)), tup(num(4), num(1)), b"\x89")))),
    "hooks-a-bytesio": state(("w", call(glob("torch._utils", "_rebuild_tensor_v2"), tup(
        storage(), num(0), tup(num(4), num(4)), tup(num(4), num(1)), b"\x89",
        call(glob("_io", "BytesIO"), b")"))))),
}


def _billion_laughs() -> bytes:
    """A persistent id whose repr doubles 60 times: a list holding the previous one twice."""
    body = b"]q\x00"
    for level in range(1, 61):
        body += b"(h" + bytes([level - 1]) + b"h" + bytes([level - 1]) + b"lq" + bytes([level])
    return b"\x80\x02}(" + text("w") + body + b"Qu."


_HOSTILE_PICKLES["billion-laughs-persistent-id"] = _billion_laughs()


@pytest.mark.parametrize("payload", list(_HOSTILE_PICKLES.values()), ids=list(_HOSTILE_PICKLES))
def test_3_hostile_pickle_arguments_are_one_error(payload: bytes, make_checkpoint: MakeCkpt,
                                                  tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    replace_data_pkl(src / SHARD1, payload)
    start = time.monotonic()
    result = convert(src, tmp_path / "out")
    assert time.monotonic() - start < 20
    assert_one_error(result, SHARD1)
    assert_nothing_written(tmp_path / "out")


# --- 4. wrong weights with exit 0 --------------------------------------------------------------

def test_4_negative_storage_offset_is_refused(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    data = read_data_pkl(src / SHARD1)
    pos, length = offset_operand(data, "norm.weight")
    replace_data_pkl(src / SHARD1, data[:pos] + num(-16) + data[pos + length:])
    assert_one_error(convert(src, tmp_path / "out"), SHARD1)
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("field_offset,delta", [(26, 1), (28, 1), (28, -1), (28, 256)],
                         ids=["name-length+1", "extra-length+1", "extra-length-1",
                              "extra-length+256"])
def test_4_flipped_local_header_length_is_refused(field_offset: int, delta: int,
                                                  make_checkpoint: MakeCkpt,
                                                  tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    with zipfile.ZipFile(src / SHARD1) as archive:
        member = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    with open(src / SHARD1, "r+b") as f:
        f.seek(member.header_offset + field_offset)
        (value,) = struct.unpack("<H", f.read(2))
        f.seek(member.header_offset + field_offset)
        f.write(struct.pack("<H", (value + delta) % 65536))
    assert_one_error(convert(src, tmp_path / "out"), SHARD1, "corrupt")
    assert_nothing_written(tmp_path / "out")


def test_4_negative_n_kv_heads_is_refused(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path, GQA)
    edit_params(src, n_kv_heads=-2)
    assert_one_error(convert(src, tmp_path / "out"), "n_kv_heads")
    assert_nothing_written(tmp_path / "out")


def test_4_too_few_kv_heads_for_the_ranks_is_refused(make_checkpoint: MakeCkpt,
                                                     tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path, GQA)
    edit_params(src, n_kv_heads=1)
    assert_one_error(convert(src, tmp_path / "out"), "n_kv_heads=1", "wk")
    assert_nothing_written(tmp_path / "out")


def _drop_output(path: Path) -> None:
    tensors = load_shard(path)
    del tensors["output.weight"]
    torch.save(tensors, path)


def test_4_output_missing_from_every_rank_of_an_untied_model_is_refused(
        make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    for shard in (SHARD0, SHARD1):
        _drop_output(src / shard)
    assert_one_error(convert(src, tmp_path / "out"), "output.weight", "LLaMA 2")
    assert_nothing_written(tmp_path / "out")


# --- 5. invalid config with exit 0 -------------------------------------------------------------

@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "0", "-1", "1e18"])
@pytest.mark.parametrize("key", ["norm_eps", "rope_theta"])
def test_5_norm_eps_and_rope_theta_out_of_range_are_refused(key: str, literal: str,
                                                            make_checkpoint: MakeCkpt,
                                                            tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    write_params_text(src, key, literal)
    assert_one_error(convert(src, tmp_path / "out"), "params.json")
    assert_nothing_written(tmp_path / "out")


# --- 6. runaway on size ------------------------------------------------------------------------

@pytest.mark.parametrize("n_layers", [1_000_000_000, 1_000_000, 4000])
def test_6_huge_n_layers_fails_fast_in_little_memory(n_layers: int, make_checkpoint: MakeCkpt,
                                                     tmp_path: Path) -> None:
    """In a child process, whose peak RSS (ru_maxrss through conftest's launcher) is its own."""
    src = fresh_copy(make_checkpoint, tmp_path)
    edit_params(src, n_layers=n_layers)
    start = time.monotonic()
    proc = start_measured([sys.executable, "-m", "streamconv", str(src), str(tmp_path / "out"),
                           *ARGS], stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate(timeout=120)
    assert time.monotonic() - start < 30
    assert proc.returncode == 1 and "Traceback" not in stderr and "n_layers" in stderr, stderr
    peak = measured_peak(stdout)
    assert peak < 512 << 20, f"peak RSS {peak >> 20} MiB"
    assert_nothing_written(tmp_path / "out")


# --- 7. crash mid-conversion -------------------------------------------------------------------

def test_7_output_missing_from_one_rank_names_the_rank(make_checkpoint: MakeCkpt,
                                                       tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    _drop_output(src / SHARD1)
    assert_one_error(convert(src, tmp_path / "out"), SHARD1, "rank 1", "output.weight")
    assert_nothing_written(tmp_path / "out")


# --- 8. output-side tracebacks -----------------------------------------------------------------

def _read_only_parent(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes through permission bits; sysfs refuses even root
        return Path("/sys/streamconv-out")  # (its free space, 0, is patched in the test)
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    return parent / "out"


def _dangling_symlink(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "gone")
    return out


def _parent_is_a_file(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "out"


def _name_too_long(tmp_path: Path) -> Path:
    return tmp_path / ("o" * 300)


@pytest.mark.parametrize("make_out,word", [
    (_read_only_parent, ("cannot be written", "not permitted", "denied")),
    (_dangling_symlink, "symbolic link"),
    (_parent_is_a_file, "file"),
    (_name_too_long, "too long"),
], ids=["read-only-parent", "dangling-symlink", "parent-is-a-file", "name-too-long"])
def test_8_output_folder_that_cannot_be_created_is_one_error(make_out: object, word: object,
                                                             make_checkpoint: MakeCkpt,
                                                             tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    monkeypatch.setattr(output_checks_module.shutil, "disk_usage",
                        lambda path: _DiskUsage(1 << 40, 0, 1 << 40))
    assert callable(make_out)
    out = make_out(tmp_path)
    result = convert(src, out)
    assert_one_error(result, "output folder", word)  # type: ignore[arg-type]


@pytest.mark.parametrize("report", ["folder", "missing/report.json"])
def test_8_bad_report_path_is_refused_before_any_work(report: str, make_checkpoint: MakeCkpt,
                                                      tmp_path: Path) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)
    (tmp_path / "folder").mkdir()
    result = convert(src, tmp_path / "out", "--report", str(tmp_path / report))
    assert result.code == 2 and "Traceback" not in result.err, result.err
    assert "--report" in result.err
    assert not (tmp_path / "out").exists()


def test_8_unexpected_exception_is_one_sentence_and_debug_shows_it(
        make_checkpoint: MakeCkpt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = fresh_copy(make_checkpoint, tmp_path)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug. Second sentence\nthird line")

    monkeypatch.setattr(conversion_module, "prepare", broken)
    result = convert(src, tmp_path / "out")
    assert_one_error(result, "RuntimeError", "--debug")
    debug = convert(src, tmp_path / "out", "--debug")
    assert debug.code == 1 and "Traceback" in debug.err


# --- 9. Ctrl-C ---------------------------------------------------------------------------------

# The `streamconv` command (its console script) from its first line: the child says "ready" once
# the interpreter is up. A SIGINT earlier, while Python imports its `site` module, ends in
# CPython's own "Fatal Python error: init_import_site" before a line of streamconv runs, which
# no code of ours can change; the package's __init__ (the error classes) is imported before the
# signal too, being the one import that must precede the handler.
_COMMAND_FROM_FIRST_LINE = (
    "import sys, streamconv; sys.stdout.write('ready'); sys.stdout.flush(); "
    "sys.argv[0] = 'streamconv'; from streamconv.cli.process_exit import run_command; "
    "run_command()")


def test_9_ctrl_c_while_starting_never_prints_a_traceback(make_checkpoint: MakeCkpt,
                                                          tmp_path: Path) -> None:
    """SIGINT at several instants of start-up (imports of rich, torch; reading the input)."""
    src = make_checkpoint(BASE)
    for i, delay in enumerate([0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 0.3, 0.5]):
        out = tmp_path / f"out{i}"
        proc = subprocess.Popen([sys.executable, "-c", _COMMAND_FROM_FIRST_LINE, str(src), str(out),
                                 *ARGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=restore_sigint)
        assert proc.stdout is not None and proc.stdout.read(5) == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=60)
        assert "Traceback" not in stderr, (delay, stderr)
        assert proc.returncode in (0, 130), (delay, proc.returncode, stderr)
        if proc.returncode != 0:
            assert_not_complete(out)


def test_9_ctrl_c_while_publishing_finishes_and_exits_0(make_checkpoint: MakeCkpt,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_checkpoint(BASE)
    reference = tmp_path / "reference"
    assert run_cli(src, reference, *ARGS).code == 0
    publish = output_folder_module.OutputFolder.publish

    def interrupted_publish(self: object) -> list[Path]:
        os.kill(os.getpid(), signal.SIGINT)  # delivered here, in the main thread
        return publish(self)  # type: ignore[arg-type]

    monkeypatch.setattr(output_folder_module.OutputFolder, "publish", interrupted_publish)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = run_cli(src, tmp_path / "out", *ARGS)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.code == 0, result.err
    assert "after the model was complete" in " ".join(result.out.split()), result.out
    assert digests(tmp_path / "out") == digests(reference)
    assert run_cli("verify", src, tmp_path / "out", "--no-tokenizer").code == 0


# --- 10. --max-ram below 1 MiB -----------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "0.5", "1000K"])
def test_10_max_ram_below_1_mib_is_a_usage_error(value: str, make_checkpoint: MakeCkpt,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(make_checkpoint(BASE), tmp_path / "out", "--no-tokenizer", "--quiet",
                     "--max-ram", value)
    err = result.err + capsys.readouterr().err  # argparse writes to sys.stderr itself
    assert result.code == 2 and "Traceback" not in err and "1 MiB" in err, err
    assert not (tmp_path / "out").exists()



# --- found by tests/test_fuzz.py (exit 0 with wrong weights, before the fix) ------------------

@pytest.mark.parametrize("new_class", ["HalfStorage", "float16"])
def test_fuzz_found_storage_class_swapped_is_refused(new_class: str, make_checkpoint: MakeCkpt,
                                                     tmp_path: Path) -> None:
    """FloatStorage -> HalfStorage makes every storage half the size its zip member holds (torch
    refuses: "record size does not match"); -> torch.float16 names a dtype where a storage
    class belongs (torch fails on it). Both used to convert the first half of every tensor."""
    src = fresh_copy(make_checkpoint, tmp_path, ONE_RANK)
    data = read_data_pkl(src / SHARD0)
    old = glob("torch", "FloatStorage")
    assert old in data
    replace_data_pkl(src / SHARD0, data.replace(old, glob("torch", new_class), 1))
    assert_one_error(convert(src, tmp_path / "out"), SHARD0)
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("old,new", [
    (text("cpu"), text("gpu0")),
    (glob("collections", "OrderedDict"), glob("_io", "BytesIO")),
], ids=["unknown-storage-location", "hooks-a-bytesio"])
def test_fuzz_found_arguments_torch_refuses_are_refused(old: bytes, new: bytes,
                                                        make_checkpoint: MakeCkpt,
                                                        tmp_path: Path) -> None:
    """A storage location torch does not know, or backward hooks that are not a dict: torch.load
    refuses both; they used to convert with exit 0 (the bytes right, the file not torch's)."""
    src = fresh_copy(make_checkpoint, tmp_path, ONE_RANK)
    data = read_data_pkl(src / SHARD0)
    assert old in data
    replace_data_pkl(src / SHARD0, data.replace(old, new, 1))
    assert_one_error(convert(src, tmp_path / "out"), SHARD0)
    assert_nothing_written(tmp_path / "out")
