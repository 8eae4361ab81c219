"""`python -m bench.status` (part of `make bench`): `dropflow status` on a big folder (issue 21).

One route on the real disk (a temp folder; its file system is named in the report):

1. 100,000 results from the last hour (its last 50 minutes; a third each completed, canceled,
   error), each written as the service writes it: the YAML of `watcher.folders.results.dump`,
   then its line through `watcher.folders.ledger.Ledger.append`; the ledger began 10 days ago.
2. `dropflow status` and `dropflow status --json` as subprocesses (process start to exit),
   the median of 3 each, wall and CPU; the JSON's counts are checked against what was written.
3. 900,000 more result files, older than a day (spread evenly over the 9 days before it),
   with no ledger lines (the service has removed those hour files by then): 1,000,000 files in
   the folder. The same two timings.
4. A folder of its own with 1,000,000 results of the last day: the 100,000 of step 1 and
   900,000 over the 23 hours before the last, each with its ledger line, the past hours summed
   as the service sums them. The same two timings.
5. The old way, for comparison: `status --json` with the ledger moved aside, which reads and
   parses every result file of the day (what `status` did before the ledger), at 10,000
   results from the last hour (at 100,000 it took 70 s).
6. What a line costs the job path: `Ledger.append` alone, the median over 10,000 appends.

Bound: the whole command in <= 1 s. Writes the "status" section of `bench/RESULTS.md`
(`--quick`: a tenth of every size, to `bench/out/RESULTS-partial.md`). The folder is removed
at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report import machine
from bench.sections import command_line, publish, results_path
from watcher.folders.ledger import LEDGER_FOLDER, Ledger
from watcher.folders.results import Result, dump

__all__ = ["main"]

RECENT = 100_000
OLD = 900_000
OLD_WAY = 10_000
APPENDS = 10_000
RUNS = 3
BOUND = 1.0
JOB_CPU = 0.107
"""CPU seconds per `sleep: 0` job on the shipped stack, events and metrics off (the vitals
section of bench/RESULTS.md)."""
STATUSES = ("completed", "canceled", "error")
DAY = 24 * 3600.0


def _result(i: int, status: str) -> Result:
    return {
        "job": f"job{i:07d}.yaml",
        "status": status,  # type: ignore[typeddict-item]
        "message": f"{status} after 0.01 s",
        "route": "default",
        "claim_id": f"20261207T020000.{i:06d}-{i % 0xFFFFFF:06x}",
        "attempt": 1,
        "flow": "wait",
        "sleep": 0.0,
        "timeout": 60.0,
        "started_at": "2026-12-07T02:00:00.000+00:00",
        "finished_at": "2026-12-07T02:00:00.010+00:00",
        "duration_s": 0.01,
        "flow_run_id": "0b5f4a52-4d7e-4c36-9a8f-7e3b2c1d0e9f",
        "flow_run_name": f"job{i:07d}",
    }


def _write(results: Path, i: int, status: str, mtime: float, book: Ledger | None) -> None:
    result = _result(i, status)
    path = results / f"job{i:07d}.result.yaml"
    path.write_bytes(dump(result))
    os.utime(path, (mtime, mtime))
    if book is not None:
        book.append(path, path.name, result["claim_id"], result)


def build_recent(root: Path, count: int, now: float, first: int = 0) -> dict[str, int]:
    """`count` results of the last hour, each with its ledger line; their counts by status."""
    book = Ledger(root / "processing", "default")
    counts = dict.fromkeys(STATUSES, 0)
    for i in range(first, first + count):
        status = STATUSES[i % 3]
        _write(root / "results", i, status, now - 3000 * (i - first) / count, book)
        counts[status] += 1
    return counts


def build_old(root: Path, count: int, now: float, first: int) -> None:
    """`count` results older than a day, spread over the 9 days before it (no ledger lines):
    the YAML dumped once per status, its number replaced (dumping 900,000 takes minutes)."""
    span = 9 * DAY
    templates = {status: dump(_result(0, status)) for status in STATUSES}
    for i in range(first, first + count):
        number = f"{i:07d}".encode()
        path = root / "results" / f"job{i:07d}.result.yaml"
        path.write_bytes(templates[STATUSES[i % 3]].replace(b"0000000", number))
        mtime = now - DAY - 60 - span * (i - first) / count
        os.utime(path, (mtime, mtime))


def build_day(root: Path, count: int, now: float, first: int) -> dict[str, int]:
    """`count` results spread over the 23 hours before the last, each with its ledger line
    (the YAML dumped once per status, as in `build_old`), then the past hours summed as the
    service sums them; their counts by status."""
    book = Ledger(root / "processing", "default")
    templates = {status: dump(_result(0, status)) for status in STATUSES}
    counts = dict.fromkeys(STATUSES, 0)
    for i in range(first, first + count):
        status = STATUSES[i % 3]
        number = f"{i:07d}".encode()
        data = templates[status].replace(b"0000000", number)
        data = data.replace(b"000000-000000", f"{i:06d}-{i % 0xFFFFFF:06x}".encode()[-13:])
        path = root / "results" / f"job{i:07d}.result.yaml"
        path.write_bytes(data)
        mtime = now - 3600 - 60 - 22.5 * 3600 * (i - first) / count
        os.utime(path, (mtime, mtime))
        result = _result(i, status)
        book.append(path, path.name, result["claim_id"], result)
        counts[status] += 1
    book.summarise(time.time())
    return counts


def _folders(root: Path) -> None:
    for name in ("inbox", "results", "processing", "archive"):
        (root / name).mkdir(parents=True)
    (root / "config.yaml").write_text(
        "inbox: inbox\nresults: results\nprocessing: processing\narchive: archive\n"
    )
    Ledger(root / "processing", "default").begin()
    began = root / "processing" / LEDGER_FOLDER / "began"
    os.utime(began, (time.time() - 10 * DAY, time.time() - 10 * DAY))


def timed(root: Path, *args: str) -> tuple[float, float, str]:
    """One `dropflow status ARGS`: wall seconds, CPU seconds (user + system), its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "watcher", "status", "--config", "config.yaml", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def measure(root: Path, runs: int) -> dict[str, Any]:
    """Median wall and CPU of `status` and `status --json`, and the last JSON."""
    figures: dict[str, Any] = {}
    for name, args in (("text", ()), ("json", ("--json",))):
        walls, cpus, out = [], [], ""
        for _ in range(runs):
            wall, cpu, out = timed(root, *args)
            walls.append(wall)
            cpus.append(cpu)
        figures[name] = (statistics.median(walls), statistics.median(cpus), walls)
        if name == "json":
            figures["status"] = json.loads(out)["results"]
    return figures


def _check(results: dict[str, Any], counts: dict[str, int], window: str) -> None:
    if results[window] != counts:
        raise SystemExit(f"status counted {results[window]} in {window}, expected {counts}")


def append_cost(root: Path, count: int) -> float:
    """The median seconds of one `Ledger.append` (the stat of the result and one append)."""
    book = Ledger(root / "processing", "default")
    path = root / "results" / "job0000000.result.yaml"
    result = _result(0, "completed")
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        book.append(path, path.name, result["claim_id"], result)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _fs(path: Path) -> str:
    out = subprocess.run(
        ["df", "-T", str(path)], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return " ".join(out[-1].split()[:2]) if len(out) > 1 else "?"


def render(
    rows: list[tuple[str, dict[str, Any]]],
    old_way: tuple[int, tuple[float, float, list[float]]],
    append: float,
    info: dict[str, str],
    command: str,
    fs: str,
    sizes: tuple[int, int],
) -> str:
    recent, old = sizes
    lines = [
        "## status: `dropflow status` on a big folder (issue 21)",
        "",
        f"`{command}`, {info['date']}, {info['cores']} cores ({info['cpu']}), prefect "
        f"{info['prefect']}, load at start {info['load']}; the folder on {fs}. "
        f"{recent:,} results from the last hour, each written as the service writes it (its "
        f"YAML, then its ledger line); then {old:,} more files older than a day (spread over "
        "the 9 days before it, their hour files already removed, as the service does); and, in a "
        f"folder of its own, {recent + old:,} results of the last day, each with its line "
        "(the past hours summed, as the service does). Each "
        f"command a subprocess, process start to exit, median of {RUNS}; CPU is user + system.",
        "",
        "| folder | command | wall s (median) | each run | CPU s | bound 1 s |",
        "|---|---|---|---|---|---|",
    ]
    for label, figures in rows:
        for name, command_name in (("text", "`status`"), ("json", "`status --json`")):
            wall, cpu, walls = figures[name]
            verdict = "met" if wall <= BOUND else "NOT met"
            each = ", ".join(f"{w:.2f}" for w in walls)
            lines.append(
                f"| {label} | {command_name} | {wall:.2f} | {each} | {cpu:.2f} | {verdict} |"
            )
    added = [
        (label, [figures[k][1] - rows[0][1][k][1] for k in ("text", "json")])
        for label, figures in rows[1:]
    ]
    n, (wall, cpu, walls) = old_way
    each = ", ".join(f"{w:.2f}" for w in walls)
    lines += [
        f"| {n:,} from the last hour, ledger moved aside (the old way: every file of the day "
        f"parsed) | `status --json` | {wall:.2f} | {each} | {cpu:.2f} | - |",
        "",
        f"- The counts of every run matched the results written ({recent:,} in the last hour "
        "and day, a third of each status). The machine is shared: wall times swing with its "
        "load, CPU times much less.",
        "- CPU added to the empty folder's (the command's start: Python, pydantic, PyYAML), "
        "`status` and `status --json`: "
        + "; ".join(f"{label}: {a:.2f} and {b:.2f} s" for label, (a, b) in added)
        + f". The rest of a wall time is the machine's load ({info['load']} at the start, on "
        f"{info['cores']} cores).",
        f"- A ledger line costs the job path {append * 1e6:.0f} µs (`Ledger.append`: a stat of "
        f"the result and one append, median of {APPENDS:,}): {append / JOB_CPU * 100:.2f} % of "
        f"the {JOB_CPU * 1000:.0f} ms of CPU a `sleep: 0` job costs on the shipped stack (the "
        "vitals section).",
    ]
    return "\n".join(lines) + "\n"


def _case(
    label: str, folder: Path, hour: dict[str, int], day: dict[str, int]
) -> tuple[str, dict[str, Any]]:
    """Time `status` on `folder` (`measure`), check its counts against what was written, and
    print the medians: one row of the table. The bench's own writes (up to a million files) are
    flushed to disk first, so the kernel writing them back is not timed as `status`."""
    if hasattr(os, "sync"):  # not on Windows, whose writes are not deferred this way
        os.sync()
    figures = measure(folder, RUNS)
    _check(figures["status"], hour, "last_hour")
    _check(figures["status"], day, "last_day")
    print(f"   status {figures['text'][0]:.2f} s, --json {figures['json'][0]:.2f} s", flush=True)
    return label, figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.status", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of every size")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    recent, old, old_way = RECENT // scale, OLD // scale, OLD_WAY // scale
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="dropflow-bench-status-", dir=os.environ.get("TMPDIR")))
    fs = _fs(work)
    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        empty = work / "empty"
        _folders(empty)
        print("== an empty folder", flush=True)
        rows.append(("empty (the command's own start)", measure(empty, RUNS)))
        small = work / "old-way"
        _folders(small)
        now = time.time()
        build_recent(small, old_way, now)
        shutil.move(small / "processing" / LEDGER_FOLDER, small / "ledger-aside")
        print(f"== the old way at {old_way:,}", flush=True)
        legacy = measure(small, RUNS)["json"]
        print(f"   {legacy[0]:.2f} s", flush=True)
        append = append_cost(small, APPENDS // scale)
        shutil.rmtree(small)

        big = work / "big"
        _folders(big)
        now = time.time()
        t0 = time.monotonic()
        counts = build_recent(big, recent, now)
        print(f"== {recent:,} recent results written in {time.monotonic() - t0:.0f} s", flush=True)
        rows.append(_case(f"{recent:,} results, all from the last hour", big, counts, counts))
        t0 = time.monotonic()
        build_old(big, old, now, recent)
        print(f"== {old:,} old results written in {time.monotonic() - t0:.0f} s", flush=True)
        rows.append(
            _case(
                f"{recent + old:,} result files, {recent:,} from the last hour", big, counts, counts
            )
        )
        shutil.rmtree(big)

        day = work / "day"
        _folders(day)
        now = time.time()
        t0 = time.monotonic()
        counts = build_recent(day, recent, now)
        spread = build_day(day, old, now, recent)
        print(f"== {recent + old:,} results of the day written in {time.monotonic() - t0:.0f} s")
        rows.append(
            _case(
                f"{recent + old:,} results of the last day, {recent:,} from the last hour",
                day,
                counts,
                {k: counts[k] + spread[k] for k in STATUSES},
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = render(
        rows,
        (old_way, legacy),
        append,
        info,
        command_line("python -m bench.status", argv),
        fs,
        (recent, old),
    )
    publish(results_path(args.quick), "status", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
