"""Retention's selection: which results and archived files go, and what is never touched."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from watcher import defaults
from watcher.config.settings import Settings, load_config
from watcher.folders.claims import ClaimStore
from watcher.folders.pruned import read_cutoff
from watcher.folders.retention import (
    WAITER_PREFIX,
    Waiter,
    interval,
    is_result_name,
    prune,
    waiting_stems,
)

DAY = 86400.0
NOW = 2_000_000_000.0  # 2033-05-18: every date folder below is older than yesterday


def _config(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    settings = load_config(path)
    for route in settings.served.values():
        route.processing.mkdir(parents=True, exist_ok=True)
    return settings


def _file(path: Path, age_days: float, now: float = NOW) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    os.utime(path, (now - age_days * DAY, now - age_days * DAY))
    return path


def _left(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("job.result.yaml", True),
        ("job.result.2.yaml", True),
        ("a.b.result.13.yaml", True),
        ("job.yaml", False),
        ("job.result.yml", False),
        ("job.result.x.yaml", False),
        (".dropflow-tmp-1.result.yaml", False),
        ("notes.txt", False),
    ],
)
def test_only_result_file_names_are_results(name: str, expected: bool) -> None:
    assert is_result_name(name) is expected


def test_old_results_go_young_ones_and_other_files_stay(tmp_path: Path) -> None:
    s = _config(tmp_path, "results_days: 7\n")
    results = tmp_path / "results"
    _file(results / "old.result.yaml", 8)
    _file(results / "old.result.2.yaml", 30)
    _file(results / "young.result.yaml", 6)
    _file(results / "notes.txt", 100)  # not a result: never ours to remove
    _file(results / ".dropflow-tmp-abc", 100)  # a temp file being written
    _file(results / "sub" / "deep.result.yaml", 100)  # a non-recursive route has no subfolders

    report = prune(s, now=NOW)

    assert _left(results) == [
        ".dropflow-tmp-abc",
        "notes.txt",
        "sub",
        "sub/deep.result.yaml",
        "young.result.yaml",
    ]
    assert report.results == {"default": 2}
    assert report.cutoffs == {"default": NOW - 7 * DAY}
    assert read_cutoff(tmp_path / "processing") == NOW - 7 * DAY


def test_a_recursive_routes_results_go_in_its_subfolders_too(tmp_path: Path) -> None:
    s = _config(tmp_path, "results_days: 1\nroutes:\n  deep:\n    inbox: in\n    recursive: true\n")
    results = tmp_path / "results" / "deep"
    _file(results / "a" / "b" / "old.result.yaml", 2)
    _file(results / "a" / "young.result.yaml", 0.5)
    _file(results / ".hidden" / "old.result.yaml", 2)  # hidden folders are not looked in

    prune(s, now=NOW)

    assert _left(results) == [
        ".hidden",
        ".hidden/old.result.yaml",
        "a",
        "a/b",
        "a/young.result.yaml",
    ]


def test_archived_files_go_by_age_and_empty_old_date_folders_with_them(tmp_path: Path) -> None:
    s = _config(tmp_path, "archive_days: 30\n")
    archive = tmp_path / "archive"
    _file(archive / "flat-old.yaml", 31)
    _file(archive / "flat-young.yaml", 29)
    _file(archive / "2020" / "01" / "01" / "a.yaml", 31)
    _file(archive / "2020" / "01" / "01" / "sub" / "b.yaml", 31)
    _file(archive / "2020" / "01" / "02" / "c.yaml", 29)  # still young: its folder stays
    _file(archive / "2019" / "12" / "31" / ".dropflow-tmp-x", 100)  # being written: stays
    (archive / "2018" / "06" / "30").mkdir(parents=True)  # already empty
    (archive / "keep-me").mkdir()  # not a date folder
    yesterday = time.localtime(NOW - DAY)
    recent = archive / f"{yesterday.tm_year:04d}" / f"{yesterday.tm_mon:02d}"
    (recent / f"{yesterday.tm_mday:02d}").mkdir(parents=True)  # may take a job any moment

    report = prune(s, now=NOW)

    assert _left(archive) == sorted(
        [
            "2019",
            "2019/12",
            "2019/12/31",
            "2019/12/31/.dropflow-tmp-x",
            "2020",
            "2020/01",
            "2020/01/02",
            "2020/01/02/c.yaml",
            "flat-young.yaml",
            "keep-me",
            str(recent.relative_to(archive).parts[0]),
            str(recent.relative_to(archive)),
            str((recent / f"{yesterday.tm_mday:02d}").relative_to(archive)),
        ]
    )
    assert report.archived == {"default": 3}
    assert report.folders == {"default": 5}  # 2020/01/01/sub, 2020/01/01, 2018/06/30, 2018/06, 2018
    assert report.results == {"default": 0} and report.cutoffs == {}  # results kept for ever
    assert read_cutoff(tmp_path / "processing") is None


def test_a_dry_run_lists_every_path_a_real_run_removes_and_removes_nothing(
    tmp_path: Path,
) -> None:
    s = _config(tmp_path, "results_days: 1\narchive_days: 1\n")
    old_result = _file(tmp_path / "results" / "old.result.yaml", 2)
    old_job = _file(tmp_path / "archive" / "old.yaml", 2)
    _file(tmp_path / "archive" / "young.yaml", 0.1)
    dated = _file(tmp_path / "archive" / "2020" / "01" / "01" / "dated.yaml", 2)
    before = _left(tmp_path)
    heard: list[tuple[str, Path]] = []

    report = prune(s, now=NOW, dry_run=True, on_path=lambda kind, path: heard.append((kind, path)))

    day = dated.parent
    assert heard == [
        ("result", old_result),
        ("archived", dated),  # in name order, subfolders where they sort
        ("archived", old_job),
        ("folder", day),
        ("folder", day.parent),
        ("folder", day.parent.parent),
    ]
    assert _left(tmp_path) == before  # nothing removed, no cut-off recorded
    assert (report.results, report.archived, report.folders) == (
        {"default": 1},
        {"default": 2},
        {"default": 3},
    )
    removed: list[tuple[str, Path]] = []
    prune(s, now=NOW, on_path=lambda kind, path: removed.append((kind, path)))
    assert removed == heard
    assert not any(path.exists() for _, path in heard)


def test_a_folder_shared_by_two_routes_is_looked_through_once(tmp_path: Path) -> None:
    s = _config(
        tmp_path,
        "results_days: 1\narchive_days: 1\nroutes:\n"
        "  a: {inbox: in-a, results: shared, archive: shared-archive}\n"
        "  b: {inbox: in-b, results: shared, archive: shared-archive}\n",
    )
    _file(tmp_path / "shared" / "x.result.yaml", 2)
    _file(tmp_path / "shared-archive" / "x.yaml", 2)
    removed: list[Path] = []

    report = prune(s, now=NOW, on_path=lambda kind, path: removed.append(path))

    assert len(removed) == 2
    assert report.results == {"a": 1, "b": 0} and report.archived == {"a": 1, "b": 0}
    # Both routes' status counts only what is left.
    assert read_cutoff(tmp_path / "processing" / "a") == NOW - DAY
    assert read_cutoff(tmp_path / "processing" / "b") == NOW - DAY


def test_a_fresh_waiters_stems_are_kept_a_stale_waiters_are_not(tmp_path: Path) -> None:
    s = _config(tmp_path, "results_days: 1\n")
    processing = tmp_path / "processing"
    results = tmp_path / "results"
    _file(results / "awaited.result.yaml", 2)
    _file(results / "awaited.result.2.yaml", 2)
    _file(results / "forgotten.result.yaml", 2)
    _file(results / "other.result.yaml", 2)
    waiter = Waiter(processing, ["awaited"])
    waiter.refresh()
    os.utime(waiter.path, (NOW - 10, NOW - 10))
    stale = processing / f"{WAITER_PREFIX}dead.json"
    stale.write_text(json.dumps({"stems": ["forgotten"]}))
    os.utime(stale, (NOW - defaults.WAITER_STALE - 1, NOW - defaults.WAITER_STALE - 1))

    assert waiting_stems([processing], NOW) == {"awaited"}
    report = prune(s, now=NOW)

    assert _left(results) == ["awaited.result.2.yaml", "awaited.result.yaml"]
    assert report.kept_for_waiters == {"default": 2}
    waiter.remove()
    assert not waiter.path.exists()


def test_a_stopping_service_cuts_a_run_short_and_records_no_cutoff(tmp_path: Path) -> None:
    import threading

    s = _config(tmp_path, "results_days: 1\n")
    _file(tmp_path / "results" / "old.result.yaml", 2)
    stopping = threading.Event()
    stopping.set()

    prune(s, now=NOW, stopping=stopping)

    assert (tmp_path / "results" / "old.result.yaml").exists()
    assert read_cutoff(tmp_path / "processing") is None


def test_runs_are_hourly_or_every_shorter_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert interval(_config(tmp_path, "")) is None  # nothing is ever deleted: no runs
    assert interval(_config(tmp_path, "results_days: 7\n")) == defaults.RETENTION_INTERVAL
    monkeypatch.setenv(defaults.RETENTION_FLOOR_ENV, "60")
    assert interval(_config(tmp_path, "results_days: 7\narchive_days: 0.001\n")) == 86.4


def test_archiving_stamps_the_time_of_archiving_not_the_jobs_mtime(tmp_path: Path) -> None:
    # A job copied with `cp -p` keeps a years-old mtime; archived, it must not look old.
    store = ClaimStore(tmp_path / "processing", tmp_path / "archive", tmp_path / "inbox")
    for folder in ("archive", "inbox"):
        (tmp_path / folder).mkdir()
    s = _config(tmp_path, "archive_days: 1\n")
    job = _file(tmp_path / "inbox" / "old.yaml", 3650, now=time.time())
    claim = store.claim(job)
    assert claim is not None
    before = time.time() - 1

    archived = store.finish(claim)

    assert archived is not None and archived.stat().st_mtime >= before
    prune(s)
    assert archived.exists()


def test_each_route_keeps_for_its_own_days_and_a_shared_folder_for_the_longest(
    tmp_path: Path,
) -> None:
    s = _config(
        tmp_path,
        "results_days: 10\narchive_days: 1\nroutes:\n"
        "  quick: {inbox: in-q, results_days: 1, archive_days: 0}\n"
        "  slow: {inbox: in-s}\n"
        "  twin-a: {inbox: in-a, results: shared, results_days: 1}\n"
        "  twin-b: {inbox: in-b, results: shared, results_days: 5}\n",
    )
    quick = _file(tmp_path / "results" / "quick" / "q.result.yaml", 2)
    slow = _file(tmp_path / "results" / "slow" / "s.result.yaml", 2)
    kept_archive = _file(tmp_path / "archive" / "quick" / "q.yaml", 2)  # archive_days: 0
    gone_archive = _file(tmp_path / "archive" / "slow" / "s.yaml", 2)  # the top-level 1
    shared_young = _file(tmp_path / "shared" / "a.result.yaml", 3)  # twin-b keeps it 5 days
    shared_old = _file(tmp_path / "shared" / "b.result.yaml", 6)

    report = prune(s, now=NOW)

    assert not quick.exists() and slow.exists()
    assert kept_archive.exists() and not gone_archive.exists()
    assert shared_young.exists() and not shared_old.exists()
    assert report.days == {
        "quick": (1, 0),
        "slow": (10, 1),
        "twin-a": (5, 1),
        "twin-b": (5, 1),
    }
    assert read_cutoff(tmp_path / "processing" / "twin-a") == NOW - 5 * DAY


def test_a_route_that_keeps_for_ever_keeps_a_shared_folder_for_ever(tmp_path: Path) -> None:
    s = _config(
        tmp_path,
        "results_days: 1\nroutes:\n"
        "  a: {inbox: in-a, results: shared}\n"
        "  b: {inbox: in-b, results: shared, results_days: 0}\n",
    )
    old = _file(tmp_path / "shared" / "x.result.yaml", 100)
    prune(s, now=NOW)
    assert old.exists()


def test_a_routes_retention_is_checked_as_the_top_levels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watcher.config.settings import ConfigError

    text = "routes:\n  a: {inbox: in-a, archive_days: 0.001}\n"
    with pytest.raises(ConfigError, match=r"routes: a: archive_days: must be 0 .* 1/24"):
        _config(tmp_path, text)
    monkeypatch.setenv(defaults.RETENTION_FLOOR_ENV, "60")
    assert interval(_config(tmp_path, text)) == 86.4
