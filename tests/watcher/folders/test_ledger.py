"""The results ledger (`watcher.folders.ledger`) and `dropflow status` counting from it:
results made here as the service makes them (a result file, then `Ledger.append`), each file's
time set by hand, and `status.gather` called in-process."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from watcher.cli.status import gather
from watcher.config.settings import load_config
from watcher.folders import ledger
from watcher.folders.ledger import LEDGER_FOLDER, Ledger
from watcher.folders.pruned import write_cutoff

HOUR = 3600.0
STATUSES = ("completed", "canceled", "error")
DAY = 24 * HOUR


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "config.yaml").write_text("inbox: in\nresults: out\nprocessing: proc\n")
    for name in ("in", "out", "proc"):
        (tmp_path / name).mkdir()
    return tmp_path


def _began(root: Path, at: float) -> Ledger:
    """A ledger that began at `at` (a file time)."""
    book = Ledger(root / "proc", "default")
    book.begin()
    os.utime(root / "proc" / LEDGER_FOLDER / "began", (at, at))
    return book


def _result(
    root: Path, name: str, status: str, mtime: float, claim: str, book: Ledger | None = None
) -> Path:
    """A published result with file time `mtime`, recorded in `book` if given."""
    data = {"job": f"{name}.yaml", "status": status, "route": "default", "claim_id": claim}
    data["message"] = f"{name} {status}"
    path = root / "out" / f"{name}.result.yaml"
    path.write_text(yaml.safe_dump(data))
    os.utime(path, (mtime, mtime))
    if book is not None:
        book.append(path, path.name, claim, data)
    return path


def _status(root: Path) -> dict[str, Any]:
    return gather(load_config(root / "config.yaml"))["results"]


def _counts(completed: int = 0, canceled: int = 0, error: int = 0) -> dict[str, int]:
    return {"completed": completed, "canceled": canceled, "error": error}


def test_a_line_goes_to_the_utc_hour_of_the_result_files_time(root: Path) -> None:
    book = _began(root, time.time() - 2 * DAY)
    top = ledger.hour_start(ledger.hour_file(time.time() - 3 * HOUR))
    _result(root, "before", "completed", top - 0.001, "c1", book)
    _result(root, "at", "error", top, "c2", book)
    folder = root / "proc" / LEDGER_FOLDER
    names = sorted(p.name for p in folder.glob("*.log"))
    assert names == [ledger.hour_file(top - HOUR), ledger.hour_file(top)]
    assert ledger.hour_start(names[1]) == top
    assert [line.split(" ")[3] for line in ledger.lines_since(root / "proc", top)] == ["c2"]
    [line] = (folder / names[0]).read_text().splitlines()
    mtime, status, route, claim, shown = line.split(" ", 4)
    assert (float(mtime), status, route, claim) == (top - 0.001, "completed", "default", "c1")
    assert '"file": "before.result.yaml"' in shown


def test_status_counts_from_the_ledger_not_the_files(root: Path) -> None:
    """Once the ledger covers the day, a result file is not read: a file changed by hand
    after its line still counts as its line says."""
    now = time.time()
    book = _began(root, now - 2 * DAY)
    _result(root, "a", "completed", now - 60, "c1", book)
    _result(root, "b", "canceled", now - 2 * HOUR, "c2", book)
    c = _result(root, "c", "error", now - 20 * HOUR, "c3", book)
    _result(root, "d", "completed", now - 26 * HOUR, "c4", book)  # older than a day
    c.write_text("not: a result\n")
    os.utime(c, (now - 20 * HOUR, now - 20 * HOUR))
    status = _status(root)
    assert status["last_hour"] == _counts(completed=1)
    assert status["last_day"] == _counts(completed=1, canceled=1, error=1)
    # Fewer than ten in the ledger: the newest are the files' (older ones may predate it).
    newest = [(r["file"], r["status"]) for r in status["newest"]]
    assert newest == [
        ("a.result.yaml", "completed"),
        ("b.result.yaml", "canceled"),
        ("c.result.yaml", None),
        ("d.result.yaml", "completed"),
    ]


def test_a_result_recorded_again_by_a_recovery_counts_once(root: Path) -> None:
    now = time.time()
    book = _began(root, now - 2 * DAY)
    path = _result(root, "a", "completed", now - 60, "c1", book)
    data = yaml.safe_load(path.read_text())
    Ledger(root / "proc", "default").append(path, path.name, "c1", data)  # after a restart
    lines = list(ledger.lines_since(root / "proc", now - HOUR))
    assert len(lines) == 2
    status = _status(root)
    assert status["last_day"] == _counts(completed=1)
    assert [r["file"] for r in status["newest"]] == ["a.result.yaml"]


def test_only_results_at_or_after_the_retention_cutoff_count(root: Path) -> None:
    now = time.time()
    book = _began(root, now - 2 * DAY)
    for i, age in enumerate((10 * HOUR, 5 * HOUR, 30 * 60, 60)):
        _result(root, f"r{i}", "completed", now - age, f"c{i}", book)
    (root / "out" / "r0.result.yaml").unlink()
    (root / "out" / "r1.result.yaml").unlink()
    write_cutoff(root / "proc", now - 5 * HOUR)  # r1 is exactly at it (retention kept it)
    status = _status(root)
    assert status["last_day"] == _counts(completed=3)
    assert status["last_hour"] == _counts(completed=2)
    # r1's file is gone all the same (by hand): counted, as its line says, but not shown.
    assert [r["file"] for r in status["newest"]] == ["r3.result.yaml", "r2.result.yaml"]


def test_without_a_ledger_every_result_file_is_read(root: Path) -> None:
    now = time.time()
    _result(root, "a", "completed", now - 60, "c1")
    _result(root, "b", "error", now - 5 * HOUR, "c2")
    _result(root, "old", "canceled", now - 3 * DAY, "c3")
    status = _status(root)
    assert status["last_hour"] == _counts(completed=1)
    assert status["last_day"] == _counts(completed=1, error=1)
    assert [r["file"] for r in status["newest"]] == [
        "a.result.yaml",
        "b.result.yaml",
        "old.result.yaml",
    ]


def test_a_ledger_younger_than_a_day_adds_the_files_from_before_it(root: Path) -> None:
    """The files older than the ledger's start are read; newer ones only through their line,
    and a result staged before the start but recorded after it (a recovery) counts once."""
    now = time.time()
    _result(root, "before1", "error", now - 8 * HOUR, "c1")
    _result(root, "before2", "completed", now - 7 * HOUR, "c2")
    _result(root, "too-old", "completed", now - 2 * DAY, "c0")
    book = _began(root, now - 6 * HOUR)
    recovered = _result(root, "recovered", "canceled", now - 6.5 * HOUR, "c3", book)
    assert recovered.stat().st_mtime < ledger.state(root / "proc").covers_from  # type: ignore[operator]
    _result(root, "after", "completed", now - 60, "c4", book)
    unrecorded = _result(root, "unrecorded", "error", now - 30, "c5")  # no line: not counted
    status = _status(root)
    assert status["last_day"] == _counts(completed=2, canceled=1, error=1)
    assert status["last_hour"] == _counts(completed=1)
    assert unrecorded.exists()


def test_old_hour_files_are_removed_but_those_holding_the_newest_ten(root: Path) -> None:
    now = time.time()
    book = _began(root, now - 10 * DAY)
    this_hour = ledger.hour_start(ledger.hour_file(now))
    # 6 results an hour, 2 to 4 days ago; 3 results in the last hour.
    for hours in range(48, 96, 2):
        at = this_hour - hours * HOUR + 600
        for i in range(6):
            _result(root, f"h{hours}-{i}", "completed", at - i, f"h{hours}-{i}", book)
    recent = [_result(root, f"new{i}", "error", now - 60 - i, f"new{i}", book) for i in range(3)]
    folder = root / "proc" / LEDGER_FOLDER
    assert len(list(folder.glob("*.log"))) >= 25
    book.prune(now)
    after = sorted(p.name for p in folder.glob("*.log"))
    # The last hour's, and the two newest older ones (12 results, at least the ten).
    kept = {ledger.hour_file(this_hour - hours * HOUR) for hours in (48, 50)}
    assert set(after) == kept | {ledger.hour_file(p.stat().st_mtime) for p in recent}
    assert ledger.state(root / "proc").pruned == this_hour - 50 * HOUR
    status = _status(root)
    assert status["last_day"] == _counts(error=3)
    newest = [r["file"] for r in status["newest"]]
    assert newest == [f"new{i}.result.yaml" for i in range(3)] + [
        f"h48-{i}.result.yaml" for i in range(6)
    ] + ["h50-0.result.yaml"]
    # Pruning again changes nothing.
    book.prune(now)
    assert sorted(p.name for p in folder.glob("*.log")) == after


def test_a_line_cut_by_a_crash_counts_for_nothing_nor_swallows_the_next(root: Path) -> None:
    now = time.time()
    book = _began(root, now - 2 * DAY)
    _result(root, "a", "completed", now - 60, "c1", book)
    hour = root / "proc" / LEDGER_FOLDER / ledger.hour_file(now - 60)
    with open(hour, "ab") as handle:
        handle.write(f'{ledger.stamp(now - 55)} completed default c9 {{"job": '.encode())
    restarted = Ledger(root / "proc", "default")
    _result(root, "b", "error", now - 50, "c2", restarted)
    assert _status(root)["last_hour"] == _counts(completed=1, error=1)


def test_a_ledger_removed_by_hand_begins_again_from_now(root: Path) -> None:
    now = time.time()
    book = _began(root, now - 2 * DAY)
    _result(root, "a", "completed", now - 60, "c1", book)
    for path in (root / "proc" / LEDGER_FOLDER).iterdir():
        path.unlink()
    (root / "proc" / LEDGER_FOLDER).rmdir()
    _result(root, "b", "error", now - 30, "c2", book)
    began = ledger.state(root / "proc").began
    assert began is not None and began >= now - 5
    assert _status(root)["last_hour"] == _counts(completed=1, error=1)


def test_past_hours_are_counted_from_their_summaries_while_up_to_date(root: Path) -> None:
    now = time.time()
    this_hour = ledger.hour_start(ledger.hour_file(now))
    book = _began(root, now - 2 * DAY)
    for hours in (2, 3, 5):
        for i in range(4):
            at = this_hour - hours * HOUR + 60 * i
            _result(root, f"h{hours}-{i}", STATUSES[i % 3], at, f"h{hours}-{i}", book)
    _result(root, "new", "completed", now - 30, "new", book)
    book.summarise(now)
    folder = root / "proc" / LEDGER_FOLDER
    sums = sorted(p.name for p in folder.glob("*.sum"))
    assert sums == sorted(ledger.hour_file(this_hour - h * HOUR)[:-4] + ".sum" for h in (2, 3, 5))
    status = _status(root)
    assert status["last_day"] == _counts(completed=7, canceled=3, error=3)
    assert status["last_hour"] == _counts(completed=1)
    newest = [r["file"] for r in status["newest"]]
    assert newest[:5] == ["new.result.yaml"] + [f"h2-{i}.result.yaml" for i in (3, 2, 1, 0)]
    assert len(newest) == 10
    # The summaries are what is counted: one made to say otherwise is believed ...
    name = ledger.hour_file(this_hour - 3 * HOUR)[:-4] + ".sum"
    summary = json.loads((folder / name).read_text())
    summary["counts"] = [["default", "canceled", 40]]
    (folder / name).write_text(json.dumps(summary))
    assert _status(root)["last_day"] == _counts(completed=5, canceled=42, error=2)
    # ... until a line appended to its hour (a result of that hour published late) outdates it.
    _result(root, "late", "error", this_hour - 3 * HOUR + 600, "late", book)
    assert _status(root)["last_day"] == _counts(completed=7, canceled=3, error=4)


def test_an_hour_holding_the_retention_cutoff_is_read_not_summed(root: Path) -> None:
    now = time.time()
    this_hour = ledger.hour_start(ledger.hour_file(now))
    book = _began(root, now - 2 * DAY)
    for i in range(4):
        _result(root, f"r{i}", "completed", this_hour - 3 * HOUR + 60 * i, f"r{i}", book)
    book.summarise(now)
    write_cutoff(root / "proc", this_hour - 3 * HOUR + 120)  # r0 and r1 removed
    assert _status(root)["last_day"] == _counts(completed=2)
