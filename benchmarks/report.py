"""benchmarks/results/raw/ -> the committed results: one JSON per configuration, RESULTS.md and
the PNG plots (python -m benchmarks.report).

Every session keeps everything it measured in the git-ignored results/raw/<session>/ (the
median of its rounds as <run>.json, each round's files under round<N>/); profiles go to
raw/profile-<session>/. The committed results/<run>.json are, for each model, the runs of the
newest session that measured it, copied byte for byte from raw/; older results stay in raw/.
Without raw/ (a fresh clone) the report is rebuilt from the committed JSONs alone, which carry a
downsampled RSS timeline, so it can be rebuilt anywhere. Ratios divide runs of the same model
and the same session only: a floor measured another day, under another load, would make a ratio
meaningless.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

GIB = 1 << 30
RESULTS_DIR = Path(__file__).resolve().parent / "results"
RAW = "raw"  # results/raw/: git-ignored
RUNNER_ORDER = {"floor-cp": 0, "floor-rw": 1, "floor-direct": 2, "floor-copy": 3,
                "streamconv": 4, "peer": 5, "streamconv-shm": 6, "floor-cp-warm": 7,
                "streamconv-warm": 8}

Result = dict[str, Any]


def load_results(results_dir: Path) -> list[Result]:
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    return [r for r in results if "run_id" in r]


def newest_sessions(raw_dir: Path) -> dict[str, Path]:
    """<run>.json -> its file in raw/<session>/, for every run of each model's newest session
    (a model's runs are compared with each other, so they come from one session)."""
    found = [(p, json.loads(p.read_text())) for p in sorted(raw_dir.glob("*/*.json"))]
    runs = [(p, r) for p, r in found if "run_id" in r and "model" in r]
    newest: dict[str, str] = {}
    for _, r in runs:
        newest[r["model"]] = max(newest.get(r["model"], ""), r["session"])
    return {f"{r['run_id']}.json": p for p, r in runs if r["session"] == newest[r["model"]]}


def sync_committed(results_dir: Path) -> list[Path]:
    """Make results/*.json exactly the newest sessions' runs from raw/ (nothing when raw/ holds
    no run: a clone without it keeps the committed files)."""
    chosen = newest_sessions(results_dir / RAW)
    if not chosen:
        return []
    for stale in results_dir.glob("*.json"):
        if stale.name not in chosen:
            stale.unlink()
    for name, source in sorted(chosen.items()):
        shutil.copyfile(source, results_dir / name)
    return [results_dir / name for name in sorted(chosen)]


def _sort_key(r: Result) -> tuple[bool, int, str, int, int]:
    budget = -(r["budget_bytes"] or 0)
    return (r["slice_of"] is not None, r["checkpoint_bytes"], r["session"],
            RUNNER_ORDER.get(r["runner"], 9), budget)


def _session(r: Result) -> str:
    """Session (its time of day) and the streamconv code it ran, both short."""
    return f"{r['session'][-6:-4]}:{r['session'][-4:-2]} · {r['code']['streamconv_sha'][:7]}"


def _floor(results: Iterable[Result], r: Result, runner: str = "floor-cp") -> Result | None:
    """The floor run of r's model and session; a warm run is divided by warm floors only."""
    if r["runner"].endswith("-warm"):
        runner = runner + "-warm"
    for other in results:
        if (other["runner"] == runner and other["model"] == r["model"]
                and other["session"] == r["session"] and other["ok"]):
            return other
    return None


def _g(n_bytes: float | None) -> str:
    return "—" if n_bytes is None else f"{n_bytes / GIB:.2f}"


def _peak(r: Result) -> int:
    """Peak RSS: the largest over repeats (a budget holds only if every run held it)."""
    return int(r.get("peak_rss_bytes_max", r["peak_rss_bytes"]))


def _wall(r: Result) -> str:
    """The median run's wall time, with the range over repeats when there were several."""
    walls = [x["wall_s"] for x in r.get("repeats", []) if x["ok"]]
    if len(walls) < 2:
        return f"{r['wall_s']:.1f}"
    return f"{r['wall_s']:.1f} ({min(walls):.1f}-{max(walls):.1f}, n={len(walls)})"


def _ratio(a: float, b: float | None) -> str:
    return "—" if not b else f"{a / b:.2f}x"


def _label(r: Result) -> str:
    return {"floor-cp": "floor: cp + fsync", "floor-rw": "floor: read pass + write pass",
            "floor-direct": "floor: O_DIRECT read pass + write pass",
            "floor-copy": "floor: O_DIRECT copy, 3 threads",
            "peer": "transformers 4.47.1 script", "streamconv": "streamconv",
            "floor-cp-warm": "floor: cp + fsync, input in the page cache",
            "streamconv-warm": "streamconv, input in the page cache",
            "streamconv-shm": "streamconv, output on a tmpfs"}[r["runner"]]


def _notes(r: Result) -> str:
    if not r["ok"]:
        return "FAILED: " + " | ".join(t.strip().splitlines()[-1] for t in r["errors"].values()
                                       if t.strip())
    if r["runner"].startswith("floor-cp"):
        return f"cp alone {r['cp_s']:.1f} s, then fsync {r['fsync_s']:.1f} s"
    if r["runner"] in ("floor-rw", "floor-direct") and r.get("phases"):
        p = r["phases"]
        return (f"read {p['read_s']:.1f} s ({p['bytes'] / p['read_s'] / 2**20:.0f} MiB/s), "
                f"write {p['write_s']:.1f} s incl. fsync {p['write_fsync_s']:.1f} s")
    if r["runner"] == "floor-copy" and r.get("phases"):
        p = r["phases"]
        return (f"{p['threads']} threads x {p['piece_bytes'] >> 20} MiB pieces, "
                f"fsync {p['write_fsync_s']:.1f} s")
    if r["runner"] == "peer":
        return f"TMPDIR copy left behind: {_g(r.get('tmp_leftover_bytes'))} GiB"
    report = r.get("streamconv_report") or {}
    fixed = r.get("fixed_costs")
    times = "" if not fixed else (
        f"; exec to first read {fixed['exec_to_first_read_s']:.2f} s (prefetch hint "
        f"{fixed['exec_to_prefetch_s']:.2f} s), end to exit {fixed['convert_end_to_exit_s']:.2f} s")
    if report:
        return (f"predicted peak {_g(report['predicted_peak_bytes'])} GiB, own VmHWM "
                f"{_g(report['peak_rss_bytes'])} GiB{times}")
    return ""


def _full_table(results: list[Result], rows: list[Result]) -> list[str]:
    lines = [
        "| model | session · code | run | --max-ram | wall s | x floor (cp+fsync) "
        "| x O_DIRECT floor | x O_DIRECT copy floor | peak RSS GiB "
        "| within --max-ram | read from disk GiB | written to disk GiB | MiB/s "
        "| CPU s (user+sys) | waiting for a CPU s | notes |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        floor = _floor(results, r)
        direct = _floor(results, r, "floor-direct")
        copy = _floor(results, r, "floor-copy")
        within = "—"
        if r["budget_bytes"]:
            within = "yes" if _peak(r) <= r["budget_bytes"] else "**no**"
        lines.append(
            f"| {r['model_label']} | {_session(r)} | {_label(r)} | {r['budget'] or '—'} | "
            f"{_wall(r)} | "
            f"{_ratio(r['wall_s'], floor['wall_s'] if floor else None)} | "
            f"{_ratio(r['wall_s'], direct['wall_s'] if direct else None)} | "
            f"{_ratio(r['wall_s'], copy['wall_s'] if copy else None)} | "
            f"{_g(_peak(r))} | {within} | {_g(r['read_bytes'])} | "
            f"{_g(r['write_bytes'])} | {r['throughput_mib_s']:.0f} | {_cpu(r)} | "
            f"{_cpu_wait(r)} | {_notes(r)} |")
    return lines


def _cpu(r: Result) -> str:
    return f"{sum(s['user_s'] + s['sys_s'] for s in r['steps'].values()):.1f}"


def _cpu_wait(r: Result) -> str:
    """Run-queue delay summed over the command's threads (schedstat), with the machine's CPU
    pressure (PSI some) over the run; — for results measured before these were recorded."""
    steps = list(r["steps"].values())
    if not all("cpu_wait_s" in s for s in steps):
        return "—"
    psi = max(s["psi_cpu_some"] for s in steps)
    return f"{sum(s['cpu_wait_s'] for s in steps):.1f} (PSI {psi:.0%})"


def _slice_table(rows: list[Result]) -> list[str]:
    lines = [
        "| shape | session · code | layers | checkpoint GiB | --max-ram | wall s | MiB/s "
        "| peak RSS GiB "
        "| vs fewest layers | within --max-ram | notes |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for family, session in sorted({(r["slice_of"], r["session"]) for r in rows}):
        fam = sorted((r for r in rows if r["slice_of"] == family and r["session"] == session),
                     key=lambda r: r["n_layers"])
        base = _peak(fam[0])  # fewest layers of the same session (same code)
        for r in fam:
            within = "yes" if _peak(r) <= (r["budget_bytes"] or 0) else "**no**"
            lines.append(
                f"| {family.upper()}-style, {r.get('n_ranks', r.get('n_shards'))} shards | "
                f"{_session(r)} | "
                f"{r['n_layers']} | "
                f"{_g(r['checkpoint_bytes'])} | {r['budget']} | {_wall(r)} | "
                f"{r['throughput_mib_s']:.0f} | {_g(_peak(r))} | "
                f"{(_peak(r) / base - 1) * 100:+.1f}% | {within} | {_notes(r)} |")
    return lines


def _header(results: list[Result]) -> list[str]:
    sessions = sorted({r["session"] for r in results})
    codes = sorted({(r["code"]["streamconv_sha"], r["code"]["git_head"][:10]) for r in results})
    machine = results[0].get("machine", {})
    return [
        "# Benchmark results (issue 4)",
        "",
        "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json` (for each "
        "model, the runs of the newest session that measured it; every session's files stay in "
        "the git-ignored `results/raw/`); produced by `bash benchmarks/run.sh` (see "
        "`benchmarks/README.md` for what each column means). What the figures say, how they are "
        "measured and the alternatives measured on the way: "
        "[docs/benchmarks.md](../../docs/benchmarks.md).",
        "",
        f"- sessions: {', '.join(sessions)} (ratios only divide runs of the same session)",
        f"- streamconv code measured (content hash of streamconv/*.py, git HEAD): "
        f"{', '.join(f'{s} @ {h}' for s, h in codes)}",
        f"- machine: {machine.get('cpus', '?')} CPUs, {_g(machine.get('mem_total_bytes'))} GiB "
        f"RAM, {machine.get('kernel', '?')}; one disk for inputs, outputs and TMPDIR",
        "- every run starts cold: its input files fsynced and dropped from the page cache "
        "(posix_fadvise DONTNEED); the output folder is new and deleted after the run",
        "- wall = the command's own wall time (interpreter start to exit, fsync included); "
        "**x floor** divides by `cp` + `sync FILE...` (fsync of the copies) of the same model in "
        "the same session (cp alone, without the fsync, is in its notes); `x O_DIRECT floor` "
        "divides by a read pass and then a write pass of the same bytes, both bypassing the "
        "page cache (the disk's single-stream speed, without the kernel's copies); "
        "`x O_DIRECT copy floor` divides by a copy of the same files with streamconv's own I/O "
        "and nothing else: 3 threads, each reading a 32 MiB piece and writing it back, past the "
        "page cache, into pre-allocated files (the speed this disk allows a converter with "
        "streamconv's I/O pattern)",
        "- peak RSS = the largest of: ru_maxrss from wait4 (via a ~10 MB launcher), the largest "
        "VmHWM sampled from /proc every 50 ms, the largest sampled RSS sum of the process tree",
        "- read from / written to disk = /proc/<pid>/io read_bytes / write_bytes of the command "
        "(page-cache misses / pages dirtied); MiB/s = checkpoint bytes / wall",
        "",
    ]


def write_markdown(results: list[Result], path: Path, plots: list[Path]) -> None:
    full = sorted((r for r in results if r["slice_of"] is None), key=_sort_key)
    slices = [r for r in results if r["slice_of"] is not None and r["runner"] == "streamconv"]
    lines = _header(results)
    if full:
        lines += ["## Full-size models", "", *_full_table(results, full), ""]
        lines += _peer_lines(results)
    if slices:
        lines += ["## Layer slices: memory per layer", "",
                  "Real dim, heads, kv heads, FFN, vocabulary and 8 shards; only the layer count "
                  "changes.", "", *_slice_table(slices), ""]
    lines += _profile_lines(path.parent / RAW)
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    path.write_text("\n".join(lines))


def _profile_lines(raw_dir: Path) -> list[str]:
    """The raw/profile-<session>/profile_*.json written by benchmarks.profile_streamconv, if any."""
    lines: list[str] = []
    profiles = [json.loads(p.read_text()) for p in raw_dir.glob("*/profile_*.json")]
    for prof in sorted(profiles, key=lambda p: p["session"], reverse=True):  # newest first
        lines += [f"## Where streamconv's time goes ({prof['model']}, --max-ram "
                  f"{prof['budget']}, session {prof['session']}, code "
                  f"{prof['code']['streamconv_sha']})", ""]
        spy = prof.get("pyspy")
        if spy:
            lines += [f"py-spy, 100 Hz, --threads --idle, one cold run ({spy['wall_s']:.1f} s "
                      "under the profiler); thread-seconds by what the innermost streamconv "
                      "frame was doing:", "",
                      "| thread | category | thread-seconds | share |", "|---|---|---:|---:|"]
            for kind, cats in spy["thread_seconds"].items():
                total = sum(cats.values()) or 1
                for cat, sec in cats.items():
                    if sec / total >= 0.01:
                        lines.append(f"| {kind} | {cat} | {sec:.1f} | {sec / total:.0%} |")
            lines.append("")
        perf = prof.get("perf", {})
        if perf and "error" not in perf:
            lines += ["perf record -e cpu-clock -F 499 -g (kernel and user), one cold run each; "
                      "the largest symbols by self time, % of the command's CPU samples:", ""]
            for name, run in perf.items():
                lines += [f"- **{name}**: wall {run['wall_s']:.1f} s, user {run['user_s']:.1f} s, "
                          f"sys {run['sys_s']:.1f} s, waiting for a CPU {run['cpu_wait_s']:.1f} s: "
                          + "; ".join(f"{sym.split()[-1][:60]} {pct:.1f}%"
                                      for sym, pct in run["top_symbols_pct"][:8])]
            lines.append("")
        variants = prof.get("variants", [])
        if variants:
            lines += ["Counterfactuals: the same cold conversion with one mechanism switched off "
                      "by a monkeypatch in the child (streamconv/ unchanged), in interleaved "
                      "rounds:", "",
                      "| variant | wall s (each round) | median | user s | sys s "
                      "| waiting for a CPU s |",
                      "|---|---|---:|---:|---:|---:|"]
            for name in dict.fromkeys(v["variant"] for v in variants):
                rows = [v for v in variants if v["variant"] == name and v["ok"]]
                if not rows:
                    continue
                walls = sorted(v["wall_s"] for v in rows)
                med = walls[(len(walls) - 1) // 2]
                each = ", ".join(f"{v['wall_s']:.1f}" for v in rows)
                lines.append(f"| {name} | {each} | "
                             f"{med:.1f} | {sum(v['user_s'] for v in rows) / len(rows):.1f} | "
                             f"{sum(v['sys_s'] for v in rows) / len(rows):.1f} | "
                             f"{_mean_wait(rows)} |")
            lines.append("")
    return lines


def _mean_wait(rows: list[dict[str, Any]]) -> str:
    waits = [v["cpu_wait_s"] for v in rows if "cpu_wait_s" in v]
    return f"{sum(waits) / len(waits):.1f}" if waits else "—"


def _peer_lines(results: list[Result]) -> list[str]:
    lines = []
    for peer in (r for r in results if r["runner"] == "peer" and r["ok"]):
        for r in sorted((r for r in results if r["runner"] == "streamconv" and r["ok"]
                         and r["model"] == peer["model"] and r["session"] == peer["session"]),
                        key=_sort_key):
            lines.append(f"- {peer['model_label']}, session {_session(peer)}: the transformers "
                         "script takes "
                         f"{peer['wall_s'] / r['wall_s']:.2f}x the wall time and "
                         f"{_peak(peer) / _peak(r):.1f}x the peak RSS of "
                         f"streamconv --max-ram {r['budget']}")
    return [*lines, ""] if lines else []


def _cumulative(values: list[float]) -> list[float]:
    """I/O counters of a run made of several processes (cp, then sync) restart at each one;
    carry the total over so the curve stays cumulative."""
    out, base, last = [], 0.0, 0.0
    for v in values:
        if v + base < last:
            base = last
        last = v + base
        out.append(last)
    return out


def plot_rss_timeline(results: list[Result], model: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One session: the latest one in which the peer ran (else the latest), so the curves
    # compare runs made under the same conditions and the plot stays readable.
    mine = [r for r in results if r["model"] == model and r["ok"]]
    with_peer = [r["session"] for r in mine if r["runner"] == "peer"]
    if not mine:
        return False
    session = max(with_peer or [r["session"] for r in mine])
    mine = [r for r in mine if r["session"] == session]
    runs = sorted((r for r in mine if r["runner"] in ("streamconv", "peer")), key=_sort_key)
    if not runs:
        return False
    fig, (ax_all, ax_sc, ax_io) = plt.subplots(3, 1, figsize=(10, 11))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(runs):
        t = [p[0] for p in r["timeline"]]
        rss = [p[1] / GIB for p in r["timeline"]]
        io = [(p[2] + p[3]) / GIB for p in r["timeline"]]
        name = "transformers 4.47.1 script" if r["runner"] == "peer" else (
            f"streamconv --max-ram {r['budget']}")
        label = f"{name} ({r['wall_s']:.0f} s, peak {_peak(r) / GIB:.2f} GiB)"
        color = colors[i % len(colors)]
        ax_all.plot(t, rss, label=label, color=color)
        ax_io.plot(t, io, label=name, color=color)
        if r["runner"] == "streamconv":
            ax_sc.plot(t, rss, label=label, color=color)
            ax_sc.axhline(r["budget_bytes"] / GIB, color=color, linestyle="--", linewidth=0.8)
    floors = [r for r in mine if r["runner"].startswith("floor-")]
    styles = ("--", ":", "-.", (0, (1, 4)))
    for r, style in zip(sorted(floors, key=_sort_key), styles, strict=False):
        io = _cumulative([(p[2] + p[3]) / GIB for p in r["timeline"]])
        ax_io.plot([p[0] for p in r["timeline"]], io, color="gray", linestyle=style,
                   label=f"{_label(r)} ({r['wall_s']:.0f} s)")
    label = runs[0]["model_label"]
    ax_all.set_title(f"{label}: RSS of the converter's process tree (sampled every 50 ms); "
                     f"session {_session(runs[0])}", fontsize=10)
    ax_sc.set_title("streamconv only; dashed: its --max-ram")
    ax_io.set_title("bytes read from + written to disk so far (/proc/<pid>/io)")
    for ax in (ax_all, ax_sc, ax_io):
        ax.set_xlabel("seconds since start")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    ax_all.set_ylabel("RSS, GiB")
    ax_sc.set_ylabel("RSS, GiB")
    ax_io.set_ylabel("GiB")
    ax_sc.set_ylim(bottom=0)
    ax_all.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_slices(results: list[Result], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r["slice_of"] and r["runner"] == "streamconv" and r["ok"]]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    latest = {f: max(r["session"] for r in rows if r["slice_of"] == f)
              for f in {r["slice_of"] for r in rows}}
    for family, session in sorted({(r["slice_of"], r["session"]) for r in rows}):
        fam = sorted((r for r in rows if r["slice_of"] == family and r["session"] == session),
                     key=lambda r: r["n_layers"])
        xs = [r["n_layers"] for r in fam]
        ys = [_peak(r) / GIB for r in fam]
        old = session != latest[family]  # earlier sessions: dashed, faint, not annotated
        ax.plot(xs, ys, marker="o", linestyle="--" if old else "-", alpha=0.5 if old else 1.0,
                label=f"{family.upper()}-style slices, 8 shards ({_session(fam[0])})")
        if old:
            continue
        for x, y, r in zip(xs, ys, fam, strict=True):
            ax.annotate(f"{y:.2f} GiB\n({r['checkpoint_bytes'] / GIB:.0f} GiB ckpt)", (x, y),
                        textcoords="offset points", ha="center", fontsize=8,
                        # the two families sit close together: one above, one below
                        xytext=(0, 8) if family == "405b" else (0, -26))
    budgets = {r["budget_bytes"] for r in rows}
    for budget in budgets:
        ax.axhline(budget / GIB, color="gray", linestyle="--", linewidth=0.8,
                   label=f"--max-ram {budget / GIB:.0f} GiB")
    ax.set_xlabel("layers in the slice")
    ax.set_ylabel("peak RSS, GiB")
    ax.set_ylim(0, max(max(budgets) / GIB, max(_peak(r) for r in rows) / GIB) * 1.3)
    ax.set_xticks(sorted({r["n_layers"] for r in rows}))
    ax.set_title("streamconv peak RSS vs number of layers (real tensor shapes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(results_dir: Path = RESULTS_DIR, *, reference: str = "7b") -> list[Path]:
    sync_committed(results_dir)
    results = load_results(results_dir)
    if not results:
        return []
    plots = []
    rss_path = results_dir / f"rss_over_time_{reference}.png"
    if plot_rss_timeline(results, reference, rss_path):
        plots.append(rss_path)
    slices_path = results_dir / "slices_peak_rss.png"
    if plot_slices(results, slices_path):
        plots.append(slices_path)
    md = results_dir / "RESULTS.md"
    write_markdown(results, md, plots)
    return [md, *plots]


if __name__ == "__main__":
    ref = sys.argv[1] if len(sys.argv) > 1 else "7b"
    for written in write_report(RESULTS_DIR, reference=ref):
        print(f"wrote {written}")
